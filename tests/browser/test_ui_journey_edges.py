"""Edges of the customer's and the admin's journeys in the browser: a late webhook after
paying, a lapsed grace period, an immediate cancel's date, keyboard focus after actions
that remove the focused control, and the revoke dialog's contrast."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import (
    LiveApp,
    assert_focus_kept,
    login,
    open_user_drawer,
    signup,
    tab_to,
    ws_delay,
)

pytestmark = pytest.mark.browser

_FOCUSED = "() => document.activeElement ? document.activeElement.tagName : ''"


def _sandbox_url(checkout_url: str) -> str:
    parts = urlsplit(checkout_url)
    return f"{parts.scheme}://{parts.netloc}"


def _pay(page: Page, plan: str) -> str:
    """Start Checkout for `plan` and pay it; returns the sandbox's base URL."""
    page.locator(f"#choose-{plan}").click()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    sandbox = _sandbox_url(page.url)
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    return sandbox


def test_no_second_checkout_while_the_first_payment_awaits_its_webhook(
    page: Page, live_app: LiveApp
) -> None:
    """Stripe's webhook is late (it often is, by seconds or more): the customer is back on
    /billing, told the plan "will show here as soon as Stripe confirms", and every plan
    card still offers "Upgrade to ...". Clicking one must not open a second Checkout:
    paying it is a second subscription, charged on top of the first."""
    signup(page, live_app, "late")
    # Find the sandbox (the first Checkout page), then hold its webhooks back.
    page.locator("#choose-pro").click()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    sandbox = _sandbox_url(page.url)
    hook = f"http://127.0.0.1:{urlsplit(live_app.url).port}/api/billing/webhook"
    httpx.post(f"{sandbox}/_sandbox/webhooks/endpoint", data={"url": ""}, timeout=10)
    try:
        page.locator("#card-number").fill("4242 4242 4242 4242")
        page.locator("#pay").click()
        expect(page.locator("#checkout-success")).to_contain_text("as soon as Stripe confirms")
        page.locator("#choose-basic").click()
        # Wait for the click's answer: a Checkout page, or a message on /billing.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "/checkout/" not in page.url:
            if page.get_by_role("alert").count():
                break
            time.sleep(0.25)
        assert "/checkout/" not in page.url, "a second Checkout opened for a paying customer"
        expect(page.get_by_role("alert")).to_contain_text("already")
        # The keyboard is still where it was: a button disabled while busy dropped it to
        # <body>, so after the refusal a keyboard user started again from the top.
        assert page.evaluate("document.activeElement.id") == "choose-basic"
    finally:
        httpx.post(f"{sandbox}/_sandbox/webhooks/endpoint", data={"url": hook}, timeout=10)
        events = httpx.get(f"{sandbox}/_sandbox/events", timeout=10).json()
        for event in events.get("data", events) if isinstance(events, dict) else events:
            if not event.get("delivery"):
                httpx.post(f"{sandbox}/_sandbox/webhooks/resend/{event['id']}", timeout=10)
        httpx.post(f"{sandbox}/_sandbox/webhooks/flush", timeout=40)
    expect(page.locator("#current-plan")).to_have_text("Pro")


def test_admin_drawer_dates_an_immediate_cancel_on_the_day_it_ended(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    """A customer cancels now in the portal; the admin's drawer says when it ended: today,
    not the end of the period the customer will never have."""
    buyer = browser.new_page()
    email = signup(buyer, live_app, "quitter")
    _pay(buyer, "pro")
    expect(buyer.locator("#current-plan")).to_have_text("Pro")
    buyer.locator("#manage-subscription").click()
    buyer.wait_for_url(re.compile(r".*/portal/.*"))
    period_end = buyer.locator("#period-end").inner_text()
    buyer.locator("#cancel-now").click()
    buyer.locator("#return-link").click()
    expect(buyer.locator("#current-plan")).to_have_text("Free")
    buyer.close()

    summary = open_user_drawer(page, live_app, email, email).locator("#drawer-subscription")
    expect(summary).to_contain_text("Pro subscription canceled")
    today = time.strftime("%b %-d, %Y", time.gmtime())
    assert period_end, "the portal shows the period's end"
    expect(summary).to_contain_text(f"Ended {today}")


def _admin_keys_tab(page: Page, live_app: LiveApp) -> None:
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()


def test_revoking_a_key_by_keyboard_keeps_focus_in_the_keys_panel(
    page: Page, live_app: LiveApp
) -> None:
    """Keyboard only: Revoke, confirm with Enter. Focus must not fall back to the top of
    the document (the next Tab would start over from the header)."""
    _admin_keys_tab(page, live_app)
    name = f"kbd-{int(time.time() * 1000) % 10**8}"
    page.get_by_role("textbox", name="Key name").fill(name)
    page.keyboard.press("Enter")
    expect(page.locator("#new-secret")).to_be_visible()
    page.get_by_role("button", name=f"Revoke key {name}").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Revoke key").focus()
    page.keyboard.press("Enter")
    row = page.locator("#keys-table tr", has_text=name)
    expect(row).to_contain_text("Revoked")
    page.wait_for_timeout(500)
    assert page.evaluate(_FOCUSED) != "BODY", "focus was dropped to <body> after revoking"

    # The same for "Done" under a new key's secret: the callout goes, focus must not.
    page.get_by_role("textbox", name="Key name").fill(name + "-2")
    page.keyboard.press("Enter")
    expect(page.locator("#new-secret")).to_be_visible()
    page.get_by_role("button", name="Done").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#new-secret")).to_have_count(0)
    page.wait_for_timeout(500)
    assert page.evaluate(_FOCUSED) != "BODY", "focus was dropped to <body> after Done"


def test_paging_invoices_by_keyboard_to_the_last_page_keeps_focus(
    page: Page, live_app: LiveApp
) -> None:
    """Enter on "Next invoice page" reaching the last page: the button must keep focus
    (disabled, it dropped focus to <body>; the next Tab starts over from the top)."""
    from datetime import UTC, datetime, timedelta

    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import Invoice

    email = signup(page, live_app, "pager")
    uid = live_app.user_id(email)
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        for i in range(12):
            session.add(
                Invoice(
                    stripe_invoice_id=f"in_pager_{uid}_{i}",
                    user_id=uid,
                    number=f"PAGER-{i:04d}",
                    status="paid",
                    amount_due=1900,
                    amount_paid=1900,
                    created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=i),
                )
            )
        session.commit()
    engine.dispose()
    table = page.locator("#invoices-table")
    expect(table).to_contain_text("PAGER-0011")
    page.get_by_role("button", name="Next invoice page").focus()
    page.keyboard.press("Enter")
    expect(table).to_contain_text("PAGER-0000")
    page.wait_for_timeout(500)
    assert page.evaluate(_FOCUSED) != "BODY", "focus was dropped to <body> on the last page"


def test_revoke_confirmation_has_no_axe_violations(page: Page, live_app: LiveApp) -> None:
    from tests.browser.test_accessibility import violations

    _admin_keys_tab(page, live_app)
    page.get_by_role("button", name=re.compile(r"^Revoke key ")).first.click()
    expect(page.get_by_role("alertdialog")).to_be_visible()
    assert violations(page) == [], "the Revoke key confirmation"
    page.keyboard.press("Escape")


def _past_due_pro(live_app: LiveApp, uid: int, *, started: int, ends: int, since: int) -> None:
    """A Pro subscription `started` days ago, its period ending in `ends` days, past due
    for `since` days, as the webhooks store it, and the quotas it gives."""
    from datetime import timedelta

    from billing_app.clock import utcnow
    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import Subscription
    from billing_app.services import stripe_sync

    now = utcnow()
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        session.add(
            Subscription(
                user_id=uid,
                stripe_subscription_id=f"sub_past_due_{uid}",
                stripe_customer_id=f"cus_past_due_{uid}",
                stripe_price_id="price_sandbox_pro",
                plan="pro",
                status="past_due",
                current_period_start=now - timedelta(days=started),
                current_period_end=now + timedelta(days=ends),
                past_due_since=now - timedelta(days=since),
            )
        )
        session.commit()
        stripe_sync.refresh_quotas(session, uid)
        session.commit()
    engine.dispose()


def test_past_due_banner_does_not_promise_a_plan_whose_grace_is_over(
    page: Page, live_app: LiveApp
) -> None:
    """Past due for 10 days with 7 days of grace: the meters are back on Free's limits. The
    banner must not still say the plan "stays active until" a date gone by."""
    from datetime import timedelta

    from billing_app.clock import utcnow

    email = signup(page, live_app, "lapsed")
    _past_due_pro(live_app, live_app.user_id(email), started=12, ends=18, since=10)

    banner = page.locator("#past-due-banner")
    expect(banner).to_be_visible()
    expect(page.locator("#meter-tokens")).to_contain_text("/ 10,000")  # Free's limits
    ended = (utcnow() - timedelta(days=3)).strftime("%b %-d, %Y")
    expect(banner).to_contain_text(ended)
    expect(banner).not_to_contain_text("stays active")


def test_past_due_plan_card_promises_no_renewal(page: Page, live_app: LiveApp) -> None:
    """Past due: the invoice is unpaid and Stripe renews nothing until it is paid (its portal
    says "Payment failed ... period ends"). The plan card said "Renews on <date>"."""
    from datetime import timedelta

    from billing_app.clock import utcnow

    email = signup(page, live_app, "unpaid")
    _past_due_pro(live_app, live_app.user_id(email), started=5, ends=25, since=1)
    end = utcnow() + timedelta(days=25)

    expect(page.locator("#past-due-banner")).to_be_visible()
    expect(page.locator("#current-plan")).to_have_text("Pro")
    expect(
        page.get_by_text(f"Payment failed · billing period ends {end:%b %-d, %Y}")
    ).to_be_visible()
    expect(page.get_by_text(re.compile("Renews on"))).to_have_count(0)


def test_a_customer_who_canceled_is_told_their_plan_ended(page: Page, live_app: LiveApp) -> None:
    """Cancel now in the portal, back on /billing: the card said only "Free", with no word
    of the Pro plan just paid for and when it ended."""
    signup(page, live_app, "leaver")
    _pay(page, "pro")
    expect(page.locator("#current-plan")).to_have_text("Pro")
    page.locator("#manage-subscription").click()
    page.wait_for_url(re.compile(r".*/portal/.*"))
    page.locator("#cancel-now").click()
    page.locator("#return-link").click()
    expect(page.locator("#current-plan")).to_have_text("Free")
    today = time.strftime("%b %-d, %Y", time.gmtime())
    expect(page.locator("#plan-ended")).to_have_text(f"Your Pro subscription ended on {today}.")


def test_a_downgrade_credit_shows_as_the_balance_stripe_holds(
    page: Page, live_app: LiveApp
) -> None:
    """Pro down to Basic in the portal: Stripe credits the unused Pro time to the customer's
    balance. The page showed it only as a "-$80.00 credited to balance" row, never as money
    the customer has."""
    email = signup(page, live_app, "downer")
    _pay(page, "pro")
    expect(page.locator("#current-plan")).to_have_text("Pro")
    expect(page.locator("#credit-balance")).to_have_count(0)
    page.locator("#manage-subscription").click()
    page.wait_for_url(re.compile(r".*/portal/.*"))
    page.locator("#switch-price_sandbox_basic").click()
    page.locator("#return-link").click()
    expect(page.locator("#current-plan")).to_have_text("Basic")
    expect(page.locator("#credit-balance")).to_be_visible()
    (customer,) = [c for c in live_app.sandbox.state.customers.values() if c["email"] == email]
    assert customer["balance"] < 0
    expect(page.locator("#credit-balance")).to_have_text(
        f"Credit balance: ${-customer['balance'] / 100:,.2f}, used first for your next invoices."
    )


def test_see_plans_takes_the_keyboard_to_the_plans(page: Page, live_app: LiveApp) -> None:
    """The "See plans" link scrolled to the plan cards but left focus on itself: a keyboard
    user's next Tab went on from the link, not from the plans."""
    signup(page, live_app, "seer")
    tab_to(page, 'a[href$="#plans"]')
    page.keyboard.press("Enter")
    page.wait_for_function("() => !!document.activeElement.closest('#plans')", timeout=5000)
    assert_focus_kept(page, "See plans")
    heading = page.locator("#plans").get_by_role("heading", name="Plans")
    expect(heading).to_be_focused()
    expect(heading).to_be_in_viewport()
    page.keyboard.press("Tab")
    expect(page.locator("#choose-basic")).to_be_focused()


def test_the_customer_journey_walked_with_the_keyboard_only(page: Page, live_app: LiveApp) -> None:
    """Sign in, choose a plan, pay, manage it in the portal: every control of ours by Tab
    and Enter, a ring on each stop, focus never on <body> after an action. (Stripe's own
    pages, the sandbox's here, are not ours to walk.)"""
    email = signup(page, live_app, "walker")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/login"))
    page.goto(f"{live_app.url}/login?next=/billing")
    expect(page.locator("#email")).to_be_visible()  # the form mounts once hydrated
    tab_to(page, "#email")
    page.keyboard.type(email)
    tab_to(page, "#password")
    page.keyboard.type("correct-horse-battery")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/billing$"))
    expect(page.get_by_text("Usage this period")).to_be_visible()

    # The chart's metric: one stop, the arrows move to another, Space chooses it.
    tab_to(page, '[role="radio"][aria-checked="true"]')
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("radio", name="API calls")).to_be_focused()
    page.keyboard.press("Space")
    expect(page.get_by_role("radio", name="API calls")).to_have_attribute("aria-checked", "true")
    assert_focus_kept(page, "choosing the chart's metric")

    tab_to(page, "#choose-pro")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    expect(page.locator("#current-plan")).to_have_text("Pro")

    tab_to(page, "#manage-subscription")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/portal/.*"))


def _customer_id(live_app: LiveApp, email: str) -> str:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:
            user = users.get_user_by_email(session, email)
            assert user is not None and user.stripe_customer_id
            return user.stripe_customer_id
    finally:
        engine.dispose()


def _checkouts(sandbox: str, customer_id: str) -> list[dict]:
    r = httpx.get(
        f"{sandbox}/v1/checkout/sessions",
        params={"customer": customer_id, "limit": 100},
        headers={"Authorization": "Bearer sk_test_sandbox"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_double_clicks_open_one_checkout_and_one_portal_and_back_shows_no_second_banner(
    page: Page, live_app: LiveApp
) -> None:
    """A double click on "Upgrade to Pro" starts one Checkout Session, one on "Manage
    subscription" one portal session; Back and Forward past the success page bring no
    second "Thanks" banner, and a stale ?session_id= is no error."""
    email = signup(page, live_app, "dbl")
    page.locator("#choose-pro").dblclick()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    sandbox = _sandbox_url(page.url)
    customer = _customer_id(live_app, email)
    page.wait_for_timeout(1000)  # a second click's Checkout, had it started one
    assert len(_checkouts(sandbox, customer)) == 1
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    expect(page.locator("#checkout-success")).to_contain_text("Pro plan is active")
    expect(page.locator("#current-plan")).to_have_text("Pro")

    def no_second_banner() -> None:
        expect(page.locator("#current-plan")).to_have_text("Pro")
        expect(page.locator("#checkout-success")).to_have_count(0)

    stale = f"{live_app.url}/billing?checkout=success&session_id=cs_test_gone"
    page.go_back()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    page.go_forward()
    no_second_banner()
    page.goto(stale)
    expect(page.locator("#current-plan")).to_have_text("Pro")
    expect(page.get_by_role("alert")).to_have_count(0)
    page.reload()
    no_second_banner()
    # The return URL loaded again, as a reload does before the redirect that drops its
    # query has taken effect (it showed the banner a second time, now and then in CI).
    page.goto(stale)
    no_second_banner()

    portals = live_app.sandbox.state.portal_sessions
    before = sum(1 for p in portals.values() if p["customer"] == customer)
    page.locator("#manage-subscription").dblclick()
    page.wait_for_url(re.compile(r".*/portal/.*"))
    page.wait_for_timeout(1000)
    assert sum(1 for p in portals.values() if p["customer"] == customer) == before + 1


def test_see_plans_on_a_phone_leaves_the_plans_heading_in_sight(
    browser: Browser, live_app: LiveApp
) -> None:
    """On a phone the jump to #plans put the "Plans" heading, which takes the focus, under
    the sticky top bar: the keyboard's focus and the section's name out of sight."""
    phone = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True)
    try:
        signup(phone, live_app, "phoneseer")
        phone.get_by_role("link", name="See plans").click()
        heading = phone.locator("#plans").get_by_role("heading", name="Plans")
        expect(heading).to_be_focused()
        bar = phone.locator("header").bounding_box()
        box = heading.bounding_box()
        assert bar is not None and box is not None
        assert box["y"] >= bar["y"] + bar["height"], (box, bar)
    finally:
        phone.close()


def test_dismissing_a_notice_by_keyboard_keeps_the_focus_on_the_page(
    page: Page, live_app: LiveApp
) -> None:
    """The notice's Dismiss button went away with the notice, and the focus with it, to
    <body>: now it goes to the page's heading, and Tab goes on from there."""
    signup(page, live_app, "dismisser")
    page.goto(f"{live_app.url}/billing?checkout=canceled")
    expect(page.locator("#checkout-canceled")).to_be_visible()
    tab_to(page, '#checkout-canceled button[aria-label="Dismiss"]')
    page.keyboard.press("Enter")
    expect(page.locator("#checkout-canceled")).to_have_count(0)
    assert_focus_kept(page, "dismissing the notice")
    expect(page.get_by_role("heading", name="Billing", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="See plans")).to_be_focused()


def test_a_refused_sign_in_or_sign_up_puts_the_focus_on_the_field_to_fix(
    page: Page, live_app: LiveApp
) -> None:
    """A refused post comes back as a new page with the focus on <body>: the keyboard had to
    find the field again. The field the message is about now has it."""
    page.goto(f"{live_app.url}/login?next=/billing")
    expect(page.locator("#email")).to_be_visible()
    page.locator("#email").fill(live_app.user_email)
    page.locator("#password").fill("not-the-password")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("Email or password is incorrect.")
    expect(page.locator("#password")).to_be_focused()
    expect(page.locator("#email")).to_have_value(live_app.user_email)

    page.goto(f"{live_app.url}/signup")
    expect(page.locator("#email")).to_be_visible()
    page.locator("#email").fill(live_app.user_email)  # taken
    page.locator("#password").fill("correct-horse-battery")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    expect(page.locator("#email")).to_be_focused()

    # A visit with no refusal to tell of leaves the focus alone.
    page.goto(f"{live_app.url}/login")
    expect(page.locator("#email")).to_be_visible()
    expect(page.locator("#password")).not_to_be_focused()
    expect(page.locator("#email")).not_to_be_focused()


def test_the_signed_in_email_in_the_top_bar_is_not_cut_off(page: Page, live_app: LiveApp) -> None:
    """The top bar's email (a line cut short with an ellipsis) had its descenders cut off:
    its line box was trimmed to the letters' cap height, then clipped."""
    email = signup(page, live_app, "gypsy")
    chip_email = page.locator("header").get_by_text(email)
    expect(chip_email).to_be_visible()
    for line in (chip_email, page.locator("header").get_by_text("Gypsy", exact=True)):
        sizes = line.evaluate("e => [e.scrollHeight, e.clientHeight]")
        assert sizes[0] <= sizes[1], f"{line}: {sizes}"


def test_a_signed_in_page_still_loading_offers_no_sign_in(page: Page, live_app: LiveApp) -> None:
    """A new tab of a signed-in customer showed "Sign in" in its top bar until the state
    said who they are; the button waits for that answer. A visitor nobody signed in to
    still gets it."""
    signup(page, live_app, "newtab")
    tab = page.context.new_page()  # a tab of its own: a fresh state, not this one's
    try:
        ws_delay(tab, 2500)
        tab.goto(f"{live_app.url}/billing")
        expect(tab.get_by_text("Loading…")).to_be_visible()
        # Read now, not awaited: the state's answer (2.5 s late) would hide it by then.
        assert tab.locator("header").get_by_role("link", name="Sign in").count() == 0
        expect(tab.locator("#current-plan")).to_have_text("Free")
        expect(tab.locator("header").get_by_role("button", name="Sign out")).to_be_visible()
    finally:
        tab.close()
    page.context.clear_cookies()
    page.goto(f"{live_app.url}/no-such-page")
    expect(page.locator("header").get_by_role("link", name="Sign in")).to_be_visible()


def test_invoices_on_a_phone_show_amount_status_and_pdf_without_scrolling_sideways(
    browser: Browser, live_app: LiveApp
) -> None:
    """On a phone the six-column invoice table scrolled sideways inside its card: the
    amount, the status and the View/PDF links were out of sight behind a cut "Period",
    with nothing to say there was more."""
    phone = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True)
    try:
        signup(phone, live_app, "phonepayer")
        _pay(phone, "basic")
        expect(phone.locator("#current-plan")).to_have_text("Basic")
        item = phone.locator("#invoices-list").get_by_role("listitem").first
        expect(item).to_contain_text("$19.00")
        for part in (
            item.get_by_text("$19.00"),
            item.get_by_text("Paid"),
            item.get_by_role("link", name="View"),
            item.get_by_role("link", name="PDF"),
        ):
            part.scroll_into_view_if_needed()
            box = part.bounding_box()
            assert box is not None and box["x"] + box["width"] <= 375 - 16, (part, box)
        expect(phone.locator("#invoices-table")).to_be_hidden()
    finally:
        phone.close()
