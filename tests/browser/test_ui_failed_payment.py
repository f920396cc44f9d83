"""A failed payment reads as one in the browser: "Payment failed", not "Open", on the
customer's /billing and in the admin's Invoices tab and its "Payment failed" filter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveApp, choose, ensure_invoices, ensure_user, login

pytestmark = pytest.mark.browser

EMAIL = "late.payer@failed.test"
PASSWORD = "late-payer-pass-1"


def _late_payer(live_app: LiveApp) -> int:
    """A customer of their own (created once): the tests share one app."""
    return ensure_user(live_app, EMAIL, "Late Payer", PASSWORD)


def test_a_failed_payment_is_badged_payment_failed_for_the_customer_and_the_admin(
    page: Page, live_app: LiveApp
) -> None:
    uid = _late_payer(live_app)
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_failed_badge", user_id=uid, number="FAILED-0001",
             status="open", attempt_count=1, total=9900, amount_due=9900, amount_paid=0,
             currency="usd", created_at=datetime(2031, 1, 1, tzinfo=UTC)),
    )  # fmt: skip
    login(page, live_app, EMAIL, PASSWORD, "/billing")
    row = page.get_by_role("row").filter(has_text="FAILED-0001")
    expect(row).to_contain_text("Payment failed")
    expect(row).not_to_contain_text("Open")

    page.context.clear_cookies()
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="Invoices").click()
    table = page.locator("#admin-invoices-table")
    choose(page, "Filter invoices by status", "Payment failed")
    row = table.get_by_role("row").filter(has_text="FAILED-0001")
    expect(row).to_contain_text("Payment failed")
    expect(row).not_to_contain_text("Open")
