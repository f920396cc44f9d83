"""/billing read as one page: a plan card's price and period are one phrase for a screen
reader, its limits are written as the meters write them, no "Free" badge repeats the
"Free" heading, "Live" says what it means, an empty chart says so in words, a proper dash,
and a past-due banner that names what is owed, links its invoice and says what its date is."""

from __future__ import annotations

import re
from datetime import UTC, timedelta

import pytest
from playwright.sync_api import Page, expect

from billing_app.clock import utcnow
from tests.browser.conftest import LiveApp, ensure_invoices, signup
from tests.browser.test_accessibility import violations
from tests.browser.test_ui_journey_edges import _past_due_pro

pytestmark = pytest.mark.browser


def test_a_free_customers_page_reads_as_one(page: Page, live_app: LiveApp) -> None:
    email = signup(page, live_app, "h85polish")

    basic = page.locator("#plan-basic")
    expect(basic).to_contain_text("$19.00")  # cents, as on the invoices
    expect(basic).to_contain_text("100,000 tokens")  # as the meters write it
    expect(basic).to_contain_text("1,000 API calls")
    said = basic.aria_snapshot()
    assert "$19.00 per month" in said and "/ month" not in said, said

    # The heading says Free; no badge beside it says it again.
    expect(page.get_by_text("Free", exact=True)).to_have_count(1)
    usage = page.locator("#meter-tokens").locator("xpath=ancestor::div[contains(@class,'rt-Card')]")
    said = usage.aria_snapshot()
    assert "Updates live" in said and not re.search(r"text: Live\b", said), said

    # No usage: words, not a chart with a meaningless axis.
    expect(page.locator("#chart-empty")).to_contain_text("No usage yet this period")
    expect(page.locator(".recharts-wrapper")).to_have_count(0)
    assert violations(page) == [], "/billing, no usage"

    live_app.post_usage(live_app.user_id(email), "tokens", 3)
    expect(page.locator(".recharts-bar-rectangle path").first).to_be_visible()
    expect(page.locator("#chart-empty")).to_have_count(0)
    ticks = page.locator(".recharts-yAxis-tick-labels text")
    expect(ticks.last).to_have_text(re.compile(r"^[1-9]"))
    # Whole units: 3 tokens drew ticks of 0.75 tokens.
    shown = ticks.all_text_contents()
    assert all(re.fullmatch(r"\d+", t) for t in shown), shown

    page.goto(f"{live_app.url}/billing?checkout=success")
    expect(page.locator("#checkout-success")).to_contain_text("Thanks — your plan will show")


def test_past_due_banner_names_the_amount_and_invoice_and_its_dates(
    page: Page, live_app: LiveApp
) -> None:
    email = signup(page, live_app, "h85pastdue")
    uid = live_app.user_id(email)
    now = utcnow()
    number = f"H85-{uid:04d}"
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id=f"in_h85_due_{uid}", user_id=uid, number=number, status="open",
             stripe_subscription_id=f"sub_past_due_{uid}", attempt_count=1, total=9900,
             amount_due=9900, amount_paid=0, amount_remaining=9900, currency="usd",
             hosted_invoice_url="https://invoice.example/h85-due",
             created_at=now - timedelta(days=5)),
    )  # fmt: skip
    _past_due_pro(live_app, uid, started=5, ends=25, since=1)
    page.reload()

    banner = page.locator("#past-due-banner")
    expect(banner).to_contain_text(f"$99.00 is due on invoice {number}.")
    expect(
        banner.get_by_role("link", name=f"View invoice {number} (opens in a new tab)")
    ).to_have_attribute("href", "https://invoice.example/h85-due")
    grace = _grace_end(live_app, uid)
    expect(banner).to_contain_text(f"stays active until {grace}, the end of its grace period")
    end = (now + timedelta(days=25)).strftime("%b %-d, %Y")
    expect(page.get_by_text(f"Payment failed · billing period ends {end}")).to_be_visible()
    assert violations(page) == [], "/billing, past due"


def _grace_end(live_app: LiveApp, uid: int) -> str:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import subscriptions

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:
            sub = subscriptions.get_subscription_dto(session, uid)
            assert sub is not None and sub.grace_ends_at is not None
            return sub.grace_ends_at.astimezone(UTC).strftime("%b %-d, %Y")
    finally:
        engine.dispose()


def test_a_subscription_never_charged_says_it_waits_for_its_first_payment(
    page: Page, live_app: LiveApp
) -> None:
    """Incomplete with no payment method: its first invoice was never attempted, so the
    banner claims no failed payment, and links that invoice to pay it."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import Subscription

    email = signup(page, live_app, "h107waiting")
    uid = live_app.user_id(email)
    number = f"H107-{uid:04d}"
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        session.add(
            Subscription(
                user_id=uid,
                stripe_subscription_id=f"sub_waiting_{uid}",
                stripe_customer_id=f"cus_waiting_{uid}",
                stripe_price_id="price_sandbox_pro",
                plan="pro",
                status="incomplete",
            )
        )
        session.commit()
    engine.dispose()
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id=f"in_h107_{uid}", user_id=uid, number=number, status="open",
             stripe_subscription_id=f"sub_waiting_{uid}", attempt_count=0, total=9900,
             amount_due=9900, amount_paid=0, amount_remaining=9900, currency="usd",
             hosted_invoice_url="https://invoice.example/h107-first",
             created_at=utcnow()),
    )  # fmt: skip
    page.reload()

    banner = page.locator("#past-due-banner")
    expect(banner).to_contain_text("Your Pro subscription is waiting for its first payment.")
    expect(banner).to_contain_text("Pay its invoice to start it")
    expect(banner).not_to_contain_text("failed")
    expect(
        banner.get_by_role("link", name=f"View invoice {number} (opens in a new tab)")
    ).to_have_attribute("href", "https://invoice.example/h107-first")
    expect(banner.locator("#fix-payment")).to_have_text("Add payment method")
    assert violations(page) == [], "/billing, waiting for a first payment"
