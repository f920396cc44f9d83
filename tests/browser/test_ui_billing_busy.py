"""A Stripe button on /billing under a slow server: it shows that it is working from the
press itself, not from the server's late answer (a button that looked dead for seconds),
keeps the keyboard's focus, and is itself again when an error comes back."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveApp, signup, ws_delay

pytestmark = pytest.mark.browser

# Each state delta this late. The busy look must show well inside it: before any answer.
SLOW_MS = 2000
BEFORE_ANY_ANSWER_MS = 1000
DOWN = "Stripe is down for maintenance."


def test_a_plan_button_is_busy_from_the_press_and_itself_again_after_an_error(
    page: Page, live_app: LiveApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stripe_sandbox import checkout
    from stripe_sandbox.errors import StripeError

    signup(page, live_app, "busy")
    ws_delay(page, SLOW_MS)
    page.reload()
    pro, basic = page.locator("#choose-pro"), page.locator("#choose-basic")
    expect(pro).to_have_text("Upgrade to Pro")

    def refused(*_args: Any) -> Any:
        raise StripeError(DOWN, status=400)

    # Stripe refuses (the sandbox is in this process): the app gets an error back.
    monkeypatch.setattr(checkout, "create_checkout_session", refused)
    pro.focus()
    page.keyboard.press("Enter")
    expect(pro).to_have_text("Opening Checkout…", timeout=BEFORE_ANY_ANSWER_MS)
    expect(pro).to_have_attribute("aria-busy", "true", timeout=BEFORE_ANY_ANSWER_MS)
    expect(basic).to_have_attribute("aria-disabled", "true", timeout=BEFORE_ANY_ANSWER_MS)
    expect(pro).to_be_focused()  # not dropped to <body>, as `disabled` would
    page.keyboard.press("Enter")  # a second press, and another plan's: taken for nothing
    basic.focus()
    page.keyboard.press("Enter")
    expect(basic).to_have_text("Upgrade to Basic")
    expect(pro).to_have_text("Opening Checkout…")

    # The error: its message, and the buttons back as they were, the focus where it was.
    expect(page.get_by_role("alert")).to_contain_text(DOWN)
    expect(pro).to_have_text("Upgrade to Pro")
    expect(pro).to_have_attribute("aria-busy", "false")
    expect(basic).to_have_attribute("aria-disabled", "false")
    expect(page.locator("[aria-busy=true]")).to_have_count(0)
    expect(basic).to_be_focused()

    # Stripe back: pressed again, it is busy at once, and stays so until Checkout opens.
    monkeypatch.undo()
    pro.focus()
    page.keyboard.press("Enter")
    expect(pro).to_have_text("Opening Checkout…", timeout=BEFORE_ANY_ANSWER_MS)
    page.wait_for_url(re.compile(r".*/checkout/.*"))


def test_manage_subscription_is_busy_from_the_press_and_itself_again_after_an_error(
    page: Page, live_app: LiveApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stripe_sandbox import checkout
    from stripe_sandbox.errors import StripeError

    signup(page, live_app, "busyportal")
    page.locator("#choose-pro").click()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    expect(page.locator("#current-plan")).to_have_text("Pro")
    ws_delay(page, SLOW_MS)
    page.reload()
    manage = page.locator("#manage-subscription")
    expect(manage).to_have_text("Manage subscription")

    def refused(*_args: Any) -> Any:
        raise StripeError(DOWN, status=400)

    monkeypatch.setattr(checkout, "create_portal_session", refused)
    manage.focus()
    page.keyboard.press("Enter")
    expect(manage).to_have_text("Opening the portal…", timeout=BEFORE_ANY_ANSWER_MS)
    expect(manage).to_have_attribute("aria-busy", "true", timeout=BEFORE_ANY_ANSWER_MS)
    expect(page.locator("#choose-basic")).to_have_attribute(
        "aria-disabled", "true", timeout=BEFORE_ANY_ANSWER_MS
    )
    expect(page.get_by_role("alert")).to_contain_text(DOWN)
    expect(manage).to_have_text("Manage subscription")
    expect(page.locator("[aria-busy=true]")).to_have_count(0)
    expect(manage).to_be_focused()

    monkeypatch.undo()
    page.keyboard.press("Enter")
    expect(manage).to_have_text("Opening the portal…", timeout=BEFORE_ANY_ANSWER_MS)
    page.wait_for_url(re.compile(r".*/portal/.*"))
