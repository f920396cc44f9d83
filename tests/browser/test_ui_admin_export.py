"""The console's "Export CSV" links in a real browser: a download of what the tab shows.

After test_ui.py (by name), so its users and draft invoice are not in the admin
screenshot's numbers; a draft counts as no failed payment either way."""

from __future__ import annotations

import csv
import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveApp, choose, ensure_invoices, login

pytestmark = pytest.mark.browser


def test_export_csv_downloads_the_filtered_lists(page: Page, live_app: LiveApp) -> None:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users

    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        for i, name in enumerate(("Ann", "=1+1", "Cy")):
            if users.get_user_by_email(session, f"export{i}@csv.test") is None:
                users.create_user(session, f"export{i}@csv.test", name)
        payer = users.get_user_by_email(session, "export0@csv.test")
    engine.dispose()
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_csv", user_id=payer.id, number="CSV-0001", status="draft",
             amount_due=1500, currency="jpy"),
    )  # fmt: skip

    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("@csv.test")
    expect(page.get_by_text("1–3 of 3")).to_be_visible()
    choose(page, "Sort", "Email A–Z")
    export = page.get_by_role("link", name="Export CSV")
    expect(export).to_have_attribute("href", re.compile(r"q=%40csv\.test.*sort=email$"))
    with page.expect_download() as info:
        export.click()
    download = info.value
    assert re.fullmatch(r"users-\d{4}-\d{2}-\d{2}\.csv", download.suggested_filename)
    with open(download.path(), newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert [(r["email"], r["name"]) for r in rows] == [
        ("export0@csv.test", "Ann"), ("export1@csv.test", "'=1+1"), ("export2@csv.test", "Cy")
    ]  # fmt: skip
    # A download: the console is still there, with its filter.
    expect(page).to_have_url(re.compile(r"/admin/billing/?$"))
    expect(page.get_by_text("1–3 of 3")).to_be_visible()

    page.get_by_role("tab", name="Invoices").click()
    choose(page, "Filter invoices by status", "Draft")
    expect(page.locator("#admin-invoices-table")).to_contain_text("CSV-0001")
    # CSV-0001 shows before the filter lands too: wait for the link to carry it, as the
    # table settling does for a person (CI once clicked first and got every invoice).
    expect(export).to_have_attribute("href", re.compile(r"invoices\.csv\?status=draft$"))
    with page.expect_download() as info:
        export.click()
    assert re.fullmatch(r"invoices-\d{4}-\d{2}-\d{2}\.csv", info.value.suggested_filename)
    with open(info.value.path(), newline="", encoding="utf-8-sig") as f:
        invoices = list(csv.DictReader(f))
    assert [(i["number"], i["currency"], i["amount_due"]) for i in invoices] == [
        ("CSV-0001", "JPY", "1500")
    ]


def test_the_credit_filter_lists_what_the_credit_badge_marks(page: Page, live_app: LiveApp) -> None:
    """A credit invoice (negative total) is paid in Stripe's words and "Credit" on its
    badge: "Credit" lists it, "Paid" does not, and each export is what its filter shows."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users

    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        payer = users.get_user_by_email(session, "credit@csv.test") or users.create_user(
            session, "credit@csv.test", "Credit"
        )
    engine.dispose()
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_cr1", user_id=payer.id, number="CR-0001", status="paid",
             total=1900, amount_due=1900, amount_paid=1900),
        dict(stripe_invoice_id="in_cr2", user_id=payer.id, number="CR-0002", status="paid",
             total=-4000, amount_due=0, amount_paid=0),
    )  # fmt: skip

    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="Invoices").click()
    table = page.locator("#admin-invoices-table")
    rows = table.locator("tbody tr")
    export = page.get_by_role("link", name="Export CSV")
    status = page.get_by_role("combobox", name="Filter invoices by status")

    choose(page, status, "Credit", exact=True)
    expect(export).to_have_attribute("href", re.compile(r"invoices\.csv\?status=credit$"))
    expect(table).to_contain_text("CR-0002")
    expect(table).not_to_contain_text("CR-0001")
    shown = rows.all_inner_texts()
    assert shown and all("Credit" in r and "credited to balance" in r for r in shown), shown
    with page.expect_download() as info:
        export.click()
    with open(info.value.path(), newline="", encoding="utf-8-sig") as f:
        credits = list(csv.DictReader(f))
    assert len(credits) == len(shown) and all(c["total"].startswith("-") for c in credits)
    assert [c["number"] for c in credits] == [re.split(r"\s+", r.strip())[1] for r in shown]

    choose(page, status, "Paid", exact=True)
    expect(export).to_have_attribute("href", re.compile(r"invoices\.csv\?status=paid$"))
    expect(table).to_contain_text("CR-0001")
    expect(table).not_to_contain_text("CR-0002")
    expect(table).not_to_contain_text("Credit")
