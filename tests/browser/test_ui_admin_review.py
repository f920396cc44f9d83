"""An admin's day in the console (h88's review): how much failed payments still owe,
a filtered-empty users list cleared in one step, and who changed a quota."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveApp, choose, ensure_invoices, ensure_user, login

pytestmark = pytest.mark.browser

EMAIL = "h88.review@review-h88.test"


def _customer(live_app: LiveApp) -> int:
    return ensure_user(live_app, EMAIL, "Review Customer")


def _owed_invoice(live_app: LiveApp) -> None:
    """The customer's open invoice whose payment failed: $49.00 still owed."""
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_h88_owed", user_id=_customer(live_app), number="H88-0001",
             status="open", attempt_count=1, total=4900, amount_due=4900, amount_paid=0,
             currency="usd", created_at=datetime(2031, 2, 1, tzinfo=UTC)),
    )  # fmt: skip


def test_the_failed_payments_card_says_how_much_is_still_owed(
    page: Page, live_app: LiveApp
) -> None:
    _owed_invoice(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    card = page.locator("#stats").locator(".rt-Card", has_text="Failed payments")
    # Other tests share the app: at least this invoice's $49.00, as an amount.
    expect(card).to_contain_text(re.compile(r"\$[\d,]+\.\d\d still owed"))
    owed = re.search(r"\$([\d,]+\.\d\d) still owed", card.inner_text())
    assert owed is not None and float(owed.group(1).replace(",", "")) >= 49.0


def test_clear_filters_brings_every_user_back_from_an_empty_list(
    page: Page, live_app: LiveApp
) -> None:
    _customer(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    expect(page.locator("#clear-filters")).to_have_count(0)  # nothing to clear
    page.locator("#user-search").fill("nobody-h88-")
    status = page.get_by_role("combobox", name="Filter by status")
    choose(page, status, "Past due")
    expect(page.get_by_text("No users match")).to_be_visible()

    page.get_by_role("button", name="Clear filters").click()
    expect(page.get_by_text("No users match")).to_have_count(0)
    expect(page.locator("#user-search")).to_have_value("")
    expect(page.locator("#user-search")).to_be_focused()
    expect(status).to_contain_text("All statuses")
    # Every user again: a full first page (the admin's row may be past it, other files'
    # users are newer).
    expect(page.get_by_text(re.compile(r"^1–\d+ of \d+$"))).to_be_visible()
    expect(page.locator("#clear-filters")).to_have_count(0)
    # The list stays cleared when the page is opened again.
    page.reload()
    expect(page.locator("#user-search")).to_have_value("")
    expect(page.get_by_text(re.compile(r"^1–\d+ of \d+$"))).to_be_visible()


def test_the_drawer_names_the_admin_who_changed_a_quota(page: Page, live_app: LiveApp) -> None:
    _customer(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill(EMAIL)
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    page.get_by_role("button", name=f"Details for {EMAIL}").click()
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text("Review Customer")
    drawer.get_by_role("textbox", name="Reason").fill("h88 launch week")
    drawer.get_by_role("textbox", name="New limit").fill("25000")
    drawer.get_by_role("button", name="Save override").click()
    expect(drawer).to_contain_text("Tokens limit saved.")
    change = drawer.get_by_text(re.compile("h88 launch week")).first
    expect(change).to_contain_text(f"by {live_app.admin_email}")


def test_the_cards_list_them_opens_the_list_they_count(page: Page, live_app: LiveApp) -> None:
    """Failed payments: the Invoices tab's Payment failed filter, every customer (this
    file's failed invoice among them); Past due: the Users tab's Past due filter alone,
    a search typed before gone."""
    _owed_invoice(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("nobody-h88-")
    expect(page.get_by_text("No users match")).to_be_visible()

    page.get_by_role("button", name="List them: failed payments").click()
    expect(page.get_by_role("tab", name="Invoices")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#invoice-status-filter")).to_contain_text("Payment failed")
    expect(page.get_by_role("row").filter(has_text="H88-0001")).to_contain_text(EMAIL)

    page.get_by_role("button", name="List them: past due").click()
    expect(page.get_by_role("tab", name="Users")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("combobox", name="Filter by status")).to_contain_text("Past due")
    expect(page.locator("#user-search")).to_have_value("")
