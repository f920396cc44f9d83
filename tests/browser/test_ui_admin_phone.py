"""The admin console on a phone (375 x 812): the users, invoices and API keys tabs read
without scrolling the page sideways. The users table scrolled sideways inside its card:
the status, the meters and Details were out of sight behind the first two columns."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.conftest import LiveApp, ensure_invoices, ensure_user, login, screenshot
from tests.browser.test_accessibility import violations

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 375, 812
EMAIL = "phone.customer.h82@example.com"

_SETTLED = """() => document.getAnimations().every(
    a => a.playState !== 'running' || a.effect.getComputedTiming().endTime === Infinity
)"""

# The elements inside `d` whose right edge is past its own (seen or scrolled to).
_PAST_RIGHT_EDGE = """d => {
  const right = d.getBoundingClientRect().right;
  return [...d.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().width && e.getBoundingClientRect().right > right + 0.5)
    .map(e => `${e.tagName} ${e.textContent.slice(0, 40)}`);
}"""


def _customer(live_app: LiveApp) -> int:
    """A Pro customer with some usage and an invoice (created once: the app is shared)."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import subscriptions
    from tests.factories import make_subscription

    uid = ensure_user(live_app, EMAIL, "Phone Customer")
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        if subscriptions.current_subscription(session, uid) is None:
            make_subscription(session, uid, plan="pro", sub_id="sub_phone_h82")
    engine.dispose()
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_phone_h82", number="PHONE-H82-0001", status="paid",
             total=9900, amount_due=9900, amount_paid=9900, amount_remaining=0,
             user_id=uid, currency="usd", created_at=datetime(2029, 6, 1, tzinfo=UTC),
             hosted_invoice_url="https://invoice.stripe.com/i/phone",
             invoice_pdf="https://pay.stripe.com/invoice/phone/pdf"),
    )  # fmt: skip
    return uid


def _no_page_overflow(page: Page, where: str) -> None:
    wide = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    assert wide <= 0, f"{where}: the page scrolls {wide}px sideways"


def _on_screen(part: Locator, right: float = WIDTH) -> None:
    expect(part).to_be_visible()
    box = part.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= right, (part, box)


def test_the_admin_console_on_a_phone(browser: Browser, live_app: LiveApp) -> None:
    uid = _customer(live_app)
    live_app.post_usage(uid, "tokens", 1_234)
    phone = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}, is_mobile=True)
    try:
        login(phone, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
        users = phone.locator("#users-list")
        expect(users.get_by_role("listitem").first).to_be_visible()
        expect(phone.locator("#users-table")).to_be_hidden()
        _no_page_overflow(phone, "users")
        phone.wait_for_function(_SETTLED)
        screenshot(phone, "admin-phone")
        assert violations(phone) == [], "admin users on a phone"

        # One user: email, plan, status, the three meters and Details, all on the screen.
        phone.locator("#user-search").fill(EMAIL)
        expect(phone.get_by_text("1–1 of 1")).to_be_visible()
        item = users.get_by_role("listitem").filter(has_text=EMAIL)
        expect(item).to_have_count(1)
        for part in (
            item.get_by_role("button", name=EMAIL, exact=True),
            item.get_by_text("Pro", exact=True),
            item.get_by_text("Active", exact=True),
            item.get_by_text("Tokens"),
            item.get_by_text("API calls"),
            item.get_by_text("Scraping tasks"),
            item.get_by_text("1,234"),
            item.get_by_role("progressbar", name="Tokens"),
        ):
            _on_screen(part)
        assert item.evaluate("i => i.scrollWidth <= i.clientWidth"), "the card cuts its content"
        _no_page_overflow(phone, "one user")

        # Details opens the drawer across the screen, its content inside it.
        details = item.get_by_role("button", name=f"Details for {EMAIL}")
        _on_screen(details)
        details.click()
        drawer = phone.locator("#user-drawer")
        expect(drawer).to_contain_text("PHONE-H82-0001")
        phone.wait_for_function(_SETTLED)
        _on_screen(drawer)
        _on_screen(drawer.get_by_role("button", name="Close"))
        _on_screen(drawer.get_by_role("button", name="Save override"))
        # Nothing inside runs past its right edge (its scrollWidth counts vaul's ::after,
        # two drawers wide, which overflow-x: hidden keeps out of sight).
        past = drawer.evaluate(_PAST_RIGHT_EDGE)
        assert past == [], f"past the drawer's edge: {past}"
        assert violations(phone) == [], "admin user drawer on a phone"
        phone.keyboard.press("Escape")
        expect(drawer).to_have_count(0)
        # Focus goes back to the card's button that opened the drawer.
        expect(details).to_be_focused()

        # Invoices: the customer, number, amount, status and links on the screen.
        phone.get_by_role("tab", name="Invoices").click()
        invoices = phone.locator("#admin-invoices-list")
        invoice = invoices.get_by_role("listitem").filter(has_text="PHONE-H82-0001")
        expect(invoice).to_have_count(1)
        expect(phone.locator("#admin-invoices-table")).to_be_hidden()
        for part in (
            invoice.get_by_role("button", name=EMAIL, exact=True),
            invoice.get_by_text("PHONE-H82-0001"),
            invoice.get_by_text("$99.00"),
            invoice.get_by_text("Paid", exact=True),
            invoice.get_by_role("link", name="View"),
            invoice.get_by_role("link", name="PDF"),
        ):
            _on_screen(part)
        _no_page_overflow(phone, "invoices")
        assert violations(phone) == [], "admin invoices on a phone"

        # API keys: the form fits, and each key with its Revoke button.
        phone.get_by_role("tab", name="API keys").click()
        _on_screen(phone.get_by_role("textbox", name="Key name"))
        phone.get_by_role("textbox", name="Key name").fill("phone-h82-key")
        phone.get_by_role("button", name="Create key").click()
        expect(phone.locator("#new-secret")).to_contain_text("bk_")
        keys = phone.locator("#keys-list").get_by_role("listitem")
        key = keys.filter(has_text="phone-h82-key")
        expect(key).to_have_count(1)
        expect(phone.locator("#keys-table")).to_be_hidden()
        for part in (
            key.get_by_text("phone-h82-key", exact=True).first,
            key.get_by_text("Record and read usage"),
            key.get_by_text("Never"),
            key.get_by_role("button", name="Revoke key phone-h82-key"),
        ):
            _on_screen(part)
        _no_page_overflow(phone, "API keys")
        assert violations(phone) == [], "admin API keys on a phone"
    finally:
        phone.close()
