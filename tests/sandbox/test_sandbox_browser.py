"""One real-browser pass over the pages, through the element ids other browser tests rely on."""

from __future__ import annotations

import pytest
import stripe
from playwright.sync_api import Page, expect

from stripe_sandbox import SandboxServer

from .helpers import new_checkout, new_customer

pytestmark = pytest.mark.browser


def test_checkout_and_portal_in_a_browser(
    client: stripe.StripeClient, sandbox: SandboxServer, page: Page
) -> None:
    customer = new_customer(client)
    session = new_checkout(client, customer.id, "price_sandbox_pro", app=sandbox.url)
    page.goto(session.url)
    page.fill("#card-number", "4000 0000 0000 0341")
    page.get_by_role("button", name="Pay").click()
    assert page.locator("#card-error").inner_text() == "Your card was declined. Try another card."
    page.fill("#card-number", "4242 4242 4242 4242")
    page.click("#pay")
    page.wait_for_url(f"**/success?session_id={session.id}")

    portal = client.v1.billing_portal.sessions.create(
        params={"customer": customer.id, "return_url": sandbox.url + "/"}
    )
    page.goto(portal.url)
    page.click("#switch-price_sandbox_basic")
    assert page.locator("#current-plan").inner_text() == "Basic"
    page.click("#cancel-at-period-end")
    assert page.locator("#resume").is_visible()
    page.click("#resume")
    page.fill("#card-number", "5555 5555 5555 4444")
    page.click("#update-card")
    assert "4444" in page.locator("#current-card").inner_text()
    page.click("#return-link")
    assert page.locator("#clock-now").is_visible()

    subs = client.v1.subscriptions.list(params={"customer": customer.id}).data
    assert [s["items"].data[0].price.id for s in subs] == ["price_sandbox_basic"]
    # New subscriptions are flexible: the cancel set cancel_at and the resume cleared it.
    assert (subs[0].billing_mode.type, subs[0].cancel_at_period_end) == ("flexible", False)
    assert subs[0].cancel_at is None


def pay_then_go_back(page: Page, session_id: str) -> None:
    """Pays the Checkout `page` shows, then goes Back to it: the server's page again,
    saying it is complete, not the browser's kept copy of the card form (Pay and all)."""
    page.fill("#card-number", "4242 4242 4242 4242")
    page.click("#pay")
    page.wait_for_url(f"**/success?session_id={session_id}")
    page.go_back()
    expect(page.locator("#message-title")).to_have_text("This checkout session is already complete")
    expect(page.locator("#card-number")).to_have_count(0)


def follow_link(page: Page, url: str) -> None:
    """Goes to `url` as the app's link does (a navigation from the page, not a typed URL)."""
    page.evaluate("url => { location.href = url }", url)
    page.wait_for_url(url)


def test_back_to_a_paid_checkout_says_it_is_complete(
    client: stripe.StripeClient, sandbox: SandboxServer, page: Page
) -> None:
    """Back from the success page to the Checkout: its page says it is complete, with the
    way on."""
    customer = new_customer(client)
    session = new_checkout(client, customer.id, "price_sandbox_basic", app=sandbox.url)
    page.goto(session.url)
    pay_then_go_back(page, session.id)
    page.click("#continue")
    page.wait_for_url(f"**/success?session_id={session.id}")


def test_back_to_a_checkout_opened_twice_and_paid_says_it_is_complete(
    client: stripe.StripeClient, sandbox: SandboxServer, page: Page
) -> None:
    """The app sends a customer back to the same open Checkout (its ← Back, then the plan's
    button again): once paid, Back showed the browser's kept copy of the card form, Pay and
    all, as if nothing had been paid. The pages are not kept (no-store)."""
    customer = new_customer(client)
    app = sandbox.url.replace("127.0.0.1", "localhost")  # the app: another site
    session = new_checkout(client, customer.id, "price_sandbox_pro", app=app)
    page.goto(app + "/")
    follow_link(page, session.url)
    page.click("#back")
    page.wait_for_url(app)
    follow_link(page, session.url)
    pay_then_go_back(page, session.id)


def test_a_refused_payment_puts_the_focus_on_the_field_to_fix(
    client: stripe.StripeClient, sandbox: SandboxServer, page: Page
) -> None:
    """The refused post's page started with the focus on <body>: a keyboard user had to find
    the card field again. Now the field the message is about has it."""
    customer = new_customer(client)
    session = new_checkout(client, customer.id, "price_sandbox_pro", app=sandbox.url)
    page.goto(session.url)
    page.fill("#card-number", "4000 0000 0000 0341")
    page.press("#card-number", "Enter")
    expect(page.locator("#card-error")).to_have_text("Your card was declined. Try another card.")
    expect(page.locator("#card-number")).to_be_focused()
    page.fill("#card-number", "4242 4242 4242 4242")
    page.fill("#card-expiry", "13 / 30")
    page.press("#card-expiry", "Enter")
    expect(page.locator("#card-error")).to_have_text("Your card's expiration date is incomplete.")
    expect(page.locator("#card-expiry")).to_be_focused()
