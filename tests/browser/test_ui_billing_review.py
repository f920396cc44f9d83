"""/billing after the last review, where only a browser shows it: on a 375 px phone the
header's avatar letter says who is signed in, and an invoice row says what it bills for,
with a minus sign on a credit and a dash for a period it does not have."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveApp, ensure_invoices, signup
from tests.browser.test_accessibility import violations

pytestmark = pytest.mark.browser


def test_a_phone_shows_who_is_signed_in_and_what_each_invoice_is(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    email = signup(page, live_app, "h92phone")
    uid = live_app.user_id(email)
    common = dict(user_id=uid, status="paid", currency="usd", amount_paid=0)
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id=f"in_h92_basic_{uid}", number=f"H92B-{uid}", total=1900,
             amount_due=1900, description="Basic plan",
             period_start=datetime(2026, 11, 1, tzinfo=UTC),
             period_end=datetime(2026, 12, 1, tzinfo=UTC),
             created_at=datetime(2026, 11, 1, tzinfo=UTC), **{**common, "amount_paid": 1900}),
        dict(stripe_invoice_id=f"in_h92_credit_{uid}", number=f"H92C-{uid}", total=-4000,
             amount_due=0, description="Basic plan (prorated)",
             created_at=datetime(2026, 11, 15, tzinfo=UTC), **common),
    )  # fmt: skip
    page.reload()
    credit = page.locator("#invoices-table").get_by_role("row").filter(has_text=f"H92C-{uid}")
    expect(credit).to_contain_text("Basic plan (prorated)")
    expect(credit).to_contain_text("—")  # no period known: a dash, not a blank cell
    expect(credit).to_contain_text("\u2212$40.00")

    phone = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True)
    try:
        phone.context.add_cookies(page.context.cookies())
        phone.goto(f"{live_app.url}/billing")
        item = phone.locator("#invoices-list").get_by_role("listitem")
        expect(item.filter(has_text=f"H92B-{uid}")).to_contain_text("Basic plan")
        expect(item.filter(has_text=f"H92C-{uid}")).to_contain_text("\u2212$40.00")
        # The name and email are hidden at this width: the avatar button gives them.
        account = phone.get_by_role("button", name="H92Phone, signed in")
        expect(account).to_be_visible()
        expect(phone.get_by_role("button", name="Sign out")).to_be_visible()
        account.click()
        details = phone.locator("#account-details")
        expect(details).to_contain_text("Signed in as")
        expect(details).to_contain_text(email)
        box = details.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375
        assert violations(phone) == [], "/billing on a phone, the account popover open"
        phone.keyboard.press("Escape")
        expect(details).to_have_count(0)
    finally:
        phone.close()
