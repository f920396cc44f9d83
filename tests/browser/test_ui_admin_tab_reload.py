"""The console's tab survives a reload of the browser tab: it lived in the page alone, and
an admin who reloaded on Invoices (or whose page reconnected) landed on Users again. A
new browser tab, or a new browser, starts on Users."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveApp, choose, ensure_invoices, ensure_user, login

pytestmark = pytest.mark.browser

EMAIL = "tab-reload@reload-tab.test"
NUMBER = "TABR-0001"


def _paid_invoice(live_app: LiveApp) -> None:
    """A paid invoice newer than the other files', so it is on the Invoices tab's first page."""
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_tab_reload", user_id=ensure_user(live_app, EMAIL, "Tab"),
             number=NUMBER, status="paid", total=1900, amount_due=1900, amount_paid=1900,
             currency="usd", created_at=datetime(2033, 1, 1, tzinfo=UTC)),
    )  # fmt: skip


def _shows(page: Page, tab: str) -> None:
    """`tab` is the selected tab and the one panel on the page is its own."""
    expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel", name=tab, exact=True)).to_be_visible()
    expect(page.get_by_role("tabpanel")).to_have_count(1)


def test_the_invoices_tab_and_its_filter_come_back_after_a_reload(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    _paid_invoice(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    _shows(page, "Users")
    page.get_by_role("tab", name="Invoices").click()
    _shows(page, "Invoices")
    status = page.get_by_role("combobox", name="Filter invoices by status")
    choose(page, status, "Paid")
    row = page.locator("#admin-invoices-table").get_by_role("row").filter(has_text=NUMBER)
    expect(row).to_contain_text(EMAIL)

    page.reload()
    _shows(page, "Invoices")
    # The tab as it was left: its filter, the rows it lists, the export of those.
    expect(status).to_contain_text("Paid")
    expect(row).to_contain_text(EMAIL)
    expect(page.get_by_role("link", name="Export CSV").last).to_have_attribute(
        "href", "/api/billing/admin/invoices.csv?status=paid"
    )
    expect(page.locator("#user-search")).to_have_count(0)  # the Users tab is not mounted

    # Another browser tab of the same browser (same sign-in): its own page, on Users.
    other = page.context.new_page()
    other.goto(f"{live_app.url}/admin/billing")
    _shows(other, "Users")
    expect(other.locator("#user-search")).to_be_visible()
    other.close()

    # A fresh browser: signed in there, it starts on Users too.
    fresh = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        newcomer = fresh.new_page()
        login(newcomer, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
        _shows(newcomer, "Users")
        expect(newcomer.locator("#user-search")).to_be_visible()
    finally:
        fresh.close()

    # Back on Users by the tab itself: a reload keeps that too.
    page.get_by_role("tab", name="Users").click()
    _shows(page, "Users")
    page.reload()
    _shows(page, "Users")
    expect(page.locator("#user-search")).to_be_visible()


def test_the_api_keys_tab_comes_back_after_a_reload(page: Page, live_app: LiveApp) -> None:
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()
    _shows(page, "API keys")
    expect(page.locator("#keys-table")).to_contain_text("demo-service")

    page.reload()
    _shows(page, "API keys")
    expect(page.locator("#keys-table")).to_contain_text("demo-service")
    expect(page.get_by_role("textbox", name="Key name")).to_be_visible()


def test_a_tab_name_edited_into_the_browsers_storage_opens_users(
    page: Page, live_app: LiveApp
) -> None:
    """sessionStorage is the browser's to change: a value that is no tab shows Users,
    not a console with no panel."""
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()
    _shows(page, "API keys")
    page.evaluate("sessionStorage.setItem('admin_tab', 'billing')")
    page.reload()
    _shows(page, "Users")
    expect(page.locator("#user-search")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('admin_tab')") == "users"
