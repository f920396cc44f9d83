"""The Invoices tab narrowed to one customer from their drawer's "All invoices": its
pages, its status filter and its CSV link keep to that customer until the chip clears it."""

from __future__ import annotations

import asyncio
import csv
import io
import warnings
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import reflex as rx
from sqlmodel import Session

from billing_app.models import Invoice
from billing_app.services import auth
from billing_app.states import admin as admin_state
from billing_app.states.admin import AdminState
from tests.factories import make_user
from tests.ui.test_admin_drawer import LOAD_DETAIL, _Locked
from tests.ui.test_states import cookie_for, state_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

RELOAD_INVOICES = AdminState.event_handlers["reload_invoices"].fn
DAY0 = datetime(2026, 1, 1, tzinfo=UTC)


def _invoices(session: Session, uid: int, prefix: str, n: int, open_every: int = 0) -> None:
    for k in range(n):
        status = "open" if open_every and k % open_every == 0 else "paid"
        session.add(
            Invoice(stripe_invoice_id=f"in_{prefix}{k}", user_id=uid, number=f"{prefix}-{k:04d}",
                    status=status, total=1900, amount_due=1900,
                    amount_paid=0 if status == "open" else 1900,
                    created_at=DAY0 + timedelta(days=k))
        )  # fmt: skip
    session.commit()


def test_all_invoices_narrows_the_tab_its_pages_filter_and_export_to_one_customer(
    session: Session,
) -> None:
    admin = make_user(session, email="boss@example.com", admin=True)
    a = make_user(session, email="caller@example.com").id
    b = make_user(session, email="other@example.com").id
    # More than the drawer's 10 and the tab's page: the oldest is on page 2 only.
    _invoices(session, a, "A", admin_state.INVOICES_PER_PAGE + 3, open_every=5)
    _invoices(session, b, "B", 4)
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
    asyncio.run(st.open_user(a))
    asyncio.run(LOAD_DETAIL(_Locked(st)))
    assert len(st.detail_invoices) == 10

    assert st.show_user_invoices() == AdminState.reload_invoices
    assert not st.drawer_open
    # Closing the drawer gives focus to the chip that says the list is narrowed.
    assert st.drawer_opener == admin_state.CUSTOMER_FILTER and not st.opener_listed
    assert (st.invoice_user_id, st.invoice_user_email) == (a, "caller@example.com")
    asyncio.run(RELOAD_INVOICES(_Locked(st)))
    assert st.invoice_total == 18 and st.invoice_pages == 2
    assert {i.user_email for i in st.invoices} == {"caller@example.com"}
    assert st.invoice_page_text == "1–15 of 18"

    assert st.next_invoices() == AdminState.reload_invoices
    asyncio.run(RELOAD_INVOICES(_Locked(st)))
    assert [i.number for i in st.invoices] == ["A-0002", "A-0001", "A-0000"]

    st.set_invoice_status("open")
    asyncio.run(RELOAD_INVOICES(_Locked(st)))
    assert [i.number for i in st.invoices] == ["A-0015", "A-0010", "A-0005", "A-0000"]
    href = urlsplit(st.invoices_csv_href)
    assert href.path == "/api/billing/admin/invoices.csv"
    assert parse_qs(href.query) == {"status": ["open"], "user_id": [str(a)]}

    from billing_app.api.app import create_api

    with TestClient(create_api(), base_url="http://testserver") as client:
        client.cookies.set(auth.SESSION_COOKIE, auth.new_session(session, admin.id))
        r = client.get(st.invoices_csv_href)
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
        assert [row["number"] for row in rows] == [i.number for i in st.invoices]

    # The chip's remove button: everyone's invoices again, the keyboard on the filter.
    out = st.clear_invoice_user()
    assert out[0] == AdminState.reload_invoices and len(out) == 2
    assert str(out[1].args) == str(rx.set_focus(admin_state.INVOICE_FILTER_ID).args)
    assert (st.invoice_user_id, st.invoice_user_email, st.invoice_page) == (0, "", 1)
    assert parse_qs(urlsplit(st.invoices_csv_href).query) == {"status": ["open"]}
    st.set_invoice_status("all")
    asyncio.run(RELOAD_INVOICES(_Locked(st)))
    assert st.invoice_total == 22
    assert {i.user_email for i in st.invoices} == {"caller@example.com", "other@example.com"}
    assert st.clear_invoice_user() is None  # nothing to clear: nothing sent


def test_the_export_takes_a_customer_and_refuses_a_bad_one(session: Session) -> None:
    """GET invoices.csv?user_id= as GET invoices?user_id=: that customer's rows only; an id
    that is no number is a 422 with a message, not everyone's invoices."""
    admin = make_user(session, email="boss@example.com", admin=True)
    a = make_user(session, email="caller@example.com").id
    b = make_user(session, email="other@example.com").id
    _invoices(session, a, "A", 2)
    _invoices(session, b, "B", 3)

    from billing_app.api.app import create_api

    with TestClient(create_api(), base_url="http://testserver") as client:
        client.cookies.set(auth.SESSION_COOKIE, auth.new_session(session, admin.id))
        r = client.get(f"/api/billing/admin/invoices.csv?user_id={b}")
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
        assert [row["number"] for row in rows] == ["B-0002", "B-0001", "B-0000"]
        assert {row["customer_email"] for row in rows} == {"other@example.com"}
        r = client.get("/api/billing/admin/invoices.csv?user_id=abc")
        assert r.status_code == 422 and "user_id" in r.text
