"""/billing for a customer with a screen reader, on a desktop and a phone: the bars say their
numbers (not a clamped "100%"), the 80 % warning names its meter, a live region reads out a
meter crossing 80 % or its limit as the bars move, and each View / PDF link names its
invoice and says it opens a new tab."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveApp, ensure_invoices, signup
from tests.browser.test_accessibility import violations

pytestmark = pytest.mark.browser


def test_usage_and_invoices_read_out_for_a_screen_reader(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    email = signup(page, live_app, "h84review")
    uid = live_app.user_id(email)
    number = f"H84-{uid:04d}"
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id=f"in_h84_review_{uid}", user_id=uid, number=number,
             status="paid", total=1900, amount_due=1900, amount_paid=1900, currency="usd",
             hosted_invoice_url="https://invoice.example/h84",
             invoice_pdf="https://invoice.example/h84.pdf",
             created_at=datetime(2026, 12, 1, tzinfo=UTC)),
    )  # fmt: skip
    status = page.locator("#usage-status")
    expect(status).to_have_attribute("role", "status")

    live_app.post_usage(uid, "tokens", 8_500)  # of Free's 10,000
    expect(page.locator("#near-limit")).to_contain_text("Tokens: 8,500 of 10,000 (85%).")
    expect(status).to_have_text("80% or more used: Tokens.")

    live_app.post_usage(uid, "api_calls", 100)  # all of Free's 100
    expect(status).to_have_text("Limit reached: API calls. 80% or more used: Tokens.")
    api_calls = page.get_by_role("progressbar", name="API calls")
    expect(api_calls).to_have_attribute("aria-valuetext", "100 of 100 used (100%), limit reached")

    live_app.post_usage(uid, "tokens", 30_000)  # 385 %: the bar is full, the words are not
    tokens = page.get_by_role("progressbar", name="Tokens")
    expect(tokens).to_have_attribute(
        "aria-valuetext", "38,500 of 10,000 used (385%), limit reached"
    )
    expect(tokens).to_have_attribute("aria-valuenow", "100")
    expect(status).to_have_text("Limit reached: Tokens, API calls.")
    expect(page.locator("#near-limit")).to_have_count(0)

    table = page.locator("#invoices-table")
    expect(
        table.get_by_role("link", name=f"View invoice {number} (opens in a new tab)", exact=True)
    ).to_have_attribute("href", "https://invoice.example/h84")
    expect(
        table.get_by_role("link", name=f"PDF of invoice {number} (opens in a new tab)", exact=True)
    ).to_have_attribute("href", "https://invoice.example/h84.pdf")
    assert violations(page) == [], "/billing, limits reached, an invoice"

    phone = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True)
    try:
        phone.context.add_cookies(page.context.cookies())
        phone.goto(f"{live_app.url}/billing")
        item = phone.locator("#invoices-list").get_by_role("listitem").filter(has_text=number)
        expect(
            item.get_by_role("link", name=f"PDF of invoice {number} (opens in a new tab)")
        ).to_be_visible()
        expect(phone.locator("#usage-status")).to_have_text("Limit reached: Tokens, API calls.")
        assert violations(phone) == [], "/billing on a phone, limits reached"
    finally:
        phone.close()
