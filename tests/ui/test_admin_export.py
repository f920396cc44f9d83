"""The console's "Export CSV" links: plain links to the exports carrying the filters shown."""

from __future__ import annotations

import csv
import io
import warnings
from urllib.parse import parse_qs, urlsplit

from sqlmodel import Session

from billing_app.pages.admin import invoices_panel, users_panel
from billing_app.services import auth
from billing_app.states import admin as admin_state
from billing_app.states.admin import AdminState
from tests.factories import make_user
from tests.ui.test_states import state_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def split(href: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(href)
    return parts.path, parse_qs(parts.query, keep_blank_values=True)


def test_the_links_carry_the_filters(session: Session) -> None:
    st = state_for(AdminState, path="/admin/billing")
    # The console's defaults: no filter, newest first (the endpoint's own default is email).
    assert split(st.users_csv_href) == ("/api/billing/admin/users.csv", {"sort": ["-created"]})
    assert split(st.invoices_csv_href) == ("/api/billing/admin/invoices.csv", {})

    st.set_search(" @acme.com&plan=pro ")
    st.set_plan_filter("pro")
    st.set_status_filter("past_due")
    st.set_usage_filter("near")
    st.set_sort("-usage_tokens")
    st.set_invoice_status("open")
    assert split(st.users_csv_href) == (
        "/api/billing/admin/users.csv",
        {"q": ["@acme.com&plan=pro"], "plan": ["pro"], "status": ["past_due"],
         "usage": ["near"], "sort": ["-usage_tokens"]},
    )  # fmt: skip
    assert split(st.invoices_csv_href) == (
        "/api/billing/admin/invoices.csv",
        {"status": ["open"]},
    )

    st.set_search("")
    st.set_plan_filter("all")
    st.set_status_filter("all")
    st.set_usage_filter("'; drop table")  # not a filter: none
    st.set_invoice_status("all")
    assert split(st.users_csv_href)[1] == {"sort": ["-usage_tokens"]}
    assert st.invoices_csv_href == "/api/billing/admin/invoices.csv"


def test_the_tabs_link_to_the_exports_as_documents() -> None:
    """Each tab has an "Export CSV" link to its state's href, a document request: the
    client-side router would look for a page at /api/... instead of downloading."""
    for panel, var in ((users_panel, "users_csv_href"), (invoices_panel, "invoices_csv_href")):
        compiled = str(panel())
        link = compiled[compiled.index("jsx(ReactRouterLink") :]
        link = link[: link.index('"Export CSV"')]
        assert "reloadDocument:true" in link
        assert f"admin_state.{var}_rx_state_" in link


def test_the_users_link_exports_what_the_list_shows(session: Session) -> None:
    admin = make_user(session, email="boss@example.com", admin=True)
    for email in ("cy@acme.com", "ann@acme.com", "bea@other.com"):
        make_user(session, email=email)
    st = state_for(AdminState, path="/admin/billing")
    st.set_search("@ACME.com")
    st.set_sort("email")
    shown = admin_state.load_users(st.search, st.plan_filter, st.status_filter, st.sort, 1)
    token = auth.new_session(session, admin.id)

    from billing_app.api.app import create_api

    with TestClient(create_api(), base_url="http://testserver") as client:
        client.cookies.set(auth.SESSION_COOKIE, token)
        r = client.get(st.users_csv_href)
        assert r.status_code == 200, r.text
        exported = [row["email"] for row in csv.DictReader(io.StringIO(r.text, newline=""))]
        assert exported == [u.email for u in shown["rows"]] == ["ann@acme.com", "cy@acme.com"]
        r = client.get(st.invoices_csv_href)
        assert r.status_code == 200 and r.content.decode("utf-8-sig").startswith("number,")
