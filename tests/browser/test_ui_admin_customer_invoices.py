"""An older invoice a customer calls about: from their drawer (which lists the newest 10)
to the Invoices tab narrowed to them, by keyboard, with a chip that says so and clears it."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    LiveApp,
    assert_focus_kept,
    choose,
    ensure_invoices,
    ensure_user,
    open_user_drawer,
)

pytestmark = pytest.mark.browser

EMAIL = "calls-about-old-invoice@example.com"


def _caller(live_app: LiveApp) -> int:
    """The customer (created once) with 12 invoices, CALLER-0001 the oldest; 3 are open."""
    uid = ensure_user(live_app, EMAIL)
    ensure_invoices(
        live_app,
        *[
            dict(stripe_invoice_id=f"in_caller_{n}", user_id=uid, number=f"CALLER-{n:04d}",
                 status="open" if n % 4 == 0 else "paid", total=1900, amount_due=1900,
                 amount_paid=0 if n % 4 == 0 else 1900, currency="usd",
                 created_at=datetime(2029, n, 1, tzinfo=UTC))
            for n in range(1, 13)
        ],
    )  # fmt: skip
    return uid


def test_all_invoices_opens_the_tab_narrowed_to_the_customer_with_a_chip(
    page: Page, live_app: LiveApp
) -> None:
    uid = _caller(live_app)
    drawer = open_user_drawer(page, live_app, "calls-about-old", EMAIL)
    expect(drawer).to_contain_text("CALLER-0012")
    expect(drawer).not_to_contain_text("CALLER-0001")  # past the drawer's newest 10

    button = drawer.get_by_role("button", name=f"All invoices of {EMAIL} in the Invoices tab")
    button.focus()
    page.keyboard.press("Enter")
    expect(drawer).to_have_count(0)
    expect(page.get_by_role("tab", name="Invoices")).to_have_attribute("aria-selected", "true")
    chip = page.get_by_role("group", name=f"Invoices of customer {EMAIL}")
    expect(chip).to_contain_text(f"Customer: {EMAIL}")
    # The keyboard lands on the chip, which a screen reader reads out: the list is narrowed.
    expect(chip).to_be_focused()
    assert_focus_kept(page, '"All invoices"')

    table = page.locator("#admin-invoices-table")
    expect(page.get_by_text("1–12 of 12")).to_be_visible()
    expect(table.get_by_role("row").filter(has_text="CALLER-0001")).to_have_count(1)
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(12)
    for text in rows.all_inner_texts():
        assert EMAIL in text, text
    export = page.get_by_role("link", name="Export CSV").last
    expect(export).to_have_attribute("href", re.compile(rf"[?&]user_id={uid}(&|$)"))

    # The status filter keeps to the customer, and so does the export.
    choose(page, "Filter invoices by status", "Open")
    expect(page.get_by_text("1–3 of 3")).to_be_visible()
    expect(rows).to_have_count(3)
    expect(export).to_have_attribute(
        "href", re.compile(rf"status=open&user_id={uid}$|user_id={uid}&status=open$")
    )

    # Tab to the chip's remove button and press it: everyone's open invoices again, the
    # keyboard on the status filter beside where the chip was.
    chip.focus()
    page.keyboard.press("Tab")
    expect(
        page.get_by_role("button", name=re.compile("Remove the customer filter"))
    ).to_be_focused()
    page.keyboard.press("Enter")
    expect(chip).to_have_count(0)
    expect(page.get_by_role("combobox", name="Filter invoices by status")).to_be_focused()
    assert_focus_kept(page, "removing the customer filter")
    expect(export).not_to_have_attribute("href", re.compile("user_id="))
    expect(table.locator("tbody tr", has_text="CALLER-0012")).to_have_count(1)
