"""A paying customer's /billing past the happy path: a plan set to cancel (how to resume
it, and no plan card that reads as a second subscription), a meter over a lowered limit
said in words and exact numbers, and the usage reset date beside the billing date."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from billing_app.clock import utcnow
from billing_app.services.periods import calendar_month
from billing_app.states import format as fmt
from tests.browser.conftest import LiveApp, ensure_user, login, signup
from tests.browser.test_accessibility import violations

pytestmark = pytest.mark.browser


def _subscriptions(sandbox: str, email: str) -> list[dict]:
    """The sandbox's subscriptions of the customer `email`, every status."""
    auth = {"Authorization": "Bearer sk_test_sandbox"}
    customers = httpx.get(
        f"{sandbox}/v1/customers", params={"email": email}, headers=auth, timeout=10
    )
    assert customers.status_code == 200, customers.text
    (customer,) = customers.json()["data"]
    r = httpx.get(
        f"{sandbox}/v1/subscriptions",
        params={"customer": customer["id"], "status": "all"},
        headers=auth,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _back_from_portal(page: Page, live_app: LiveApp) -> None:
    page.locator("#return-link").click()
    page.wait_for_url(re.compile(re.escape(live_app.url) + "/billing"))


def test_a_plan_set_to_cancel_says_how_to_resume_and_offers_no_second_subscription(
    page: Page, live_app: LiveApp
) -> None:
    email = signup(page, live_app, "h80cancel")
    page.locator("#choose-pro").click()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    sandbox = re.match(r"https?://[^/]+", page.url).group(0)  # type: ignore[union-attr]
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    expect(page.locator("#current-plan")).to_have_text("Pro")
    expect(page.locator("#resume-hint")).to_have_count(0)
    expect(page.locator("#choose-basic")).to_have_text("Switch to Basic")

    # Renewing on another day than the 1st: the usage card says which rule it follows.
    renews = page.get_by_text(re.compile(r"^Renews on "))
    expect(renews).to_be_visible()
    next_reset = fmt.date(calendar_month(utcnow()).end)
    monthly = f"Usage resets on the 1st of each month · next {next_reset}"
    plain = f"Resets on {next_reset}"
    expected = plain if renews.inner_text() == f"Renews on {next_reset}" else monthly
    expect(page.get_by_text(expected, exact=True)).to_be_visible()

    # Canceled at the period's end in the portal.
    page.locator("#manage-subscription").click()
    page.wait_for_url(re.compile(r".*/portal/.*"))
    page.locator("#cancel-at-period-end").click()
    expect(page.locator("#resume")).to_be_visible()
    _back_from_portal(page, live_app)
    expect(page.get_by_text(re.compile(r"^Cancels on "))).to_be_visible()
    expect(page.locator("#resume-hint")).to_have_text(
        "Changed your mind? Resume it in Manage subscription."
    )
    # No card offers a plain switch (or a Checkout) while the plan runs to its end.
    expect(page.locator("#choose-basic")).to_have_text("Resume to switch to Basic")
    expect(page.get_by_role("button", name=re.compile(r"^(Switch|Upgrade) to"))).to_have_count(0)
    expect(page.get_by_text("Your plan is set to end.")).to_be_visible()
    assert violations(page) == [], "/billing, set to cancel"

    # The card's button opens the portal, where the plan is resumed: one subscription.
    page.locator("#choose-basic").click()
    page.wait_for_url(re.compile(r".*/portal/.*"))
    page.locator("#resume").click()
    expect(page.locator("#cancel-at-period-end")).to_be_visible()
    _back_from_portal(page, live_app)
    expect(page.locator("#resume-hint")).to_have_count(0)
    expect(page.locator("#choose-basic")).to_have_text("Switch to Basic")
    assert len(_subscriptions(sandbox, email)) == 1


def test_a_meter_over_a_lowered_limit_says_which_and_until_when(
    page: Page, live_app: LiveApp
) -> None:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import quotas

    email = "h80-over-limit@example.com"
    uid = ensure_user(live_app, email, "Over", "over-limit-pass")
    live_app.post_usage(uid, "api_calls", 80)  # of Free's 100
    live_app.post_usage(uid, "tokens", 8_500)  # of Free's 10,000: near, not over
    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:  # an admin lowers the quota under the usage
            quotas.set_override(session, uid, "api_calls", 50, reason="h80 lowered")
            session.commit()
    finally:
        engine.dispose()

    login(page, live_app, email, "over-limit-pass")
    resets = fmt.date(calendar_month(utcnow()).end)
    expect(page.locator("#limit-reached")).to_have_text(
        f"API calls: limit reached (80 of 50). API calls are refused until {resets}. "
        "This limit was set for your account: contact support to change it."
    )
    api_calls = page.locator("#meter-api_calls")
    expect(api_calls).to_contain_text("Limit reached")
    expect(api_calls).to_contain_text("80 / 50 · 160%")
    expect(page.locator("#meter-tokens")).not_to_contain_text("Limit reached")
    # The meter near its limit keeps the 80 % warning.
    expect(page.get_by_text("You have used 80% or more of a limit this period.")).to_be_visible()
    # No billing date beside it: the plain date.
    expect(page.get_by_text(f"Resets on {resets}", exact=True)).to_be_visible()
    assert violations(page) == [], "/billing, a limit reached"
