"""The console's tab is the state's (kept in sessionStorage, so a reload keeps it): only
ever one of the three, switched by the tabs and by the buttons that open a list."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlmodel import Session

from billing_app.states.admin import TABS, AdminState
from tests.factories import make_user
from tests.ui.test_states import cookie_for, state_for


def test_the_tab_var_is_kept_in_session_storage() -> None:
    """Reflex sends a SessionStorage var back on hydrate: that is what a reload keeps."""
    assert AdminState._is_client_storage("tab")
    assert AdminState.get_fields()["tab"].default.name == "admin_tab"
    assert state_for(AdminState, path="/admin/billing").tab == "users" == TABS[0]


@pytest.mark.parametrize("bad", ["billing", "", "Invoices", ["invoices"], {"x": 1}, None, 2])
def test_set_tab_takes_only_a_tab(bad: Any) -> None:
    st = state_for(AdminState, path="/admin/billing")
    st.set_tab("keys")
    assert st.tab == "keys"
    st.set_tab(bad)  # a crafted event's value changes nothing
    assert st.tab == "keys"
    st.set_tab("invoices")
    assert st.tab == "invoices"


def test_the_list_them_buttons_and_all_invoices_switch_with_their_filter() -> None:
    st = state_for(AdminState, path="/admin/billing")
    st.show_failed_payments()
    assert (st.tab, st.invoice_status) == ("invoices", "failed")
    st.show_past_due()
    assert (st.tab, st.status_filter) == ("users", "past_due")
    st.show_user_invoices()  # no drawer open: nothing to narrow to, the tab stays
    assert st.tab == "users"
    st.detail_id, st.detail_email = 7, "x@acme.com"
    st.show_user_invoices()
    assert (st.tab, st.invoice_user_id) == ("invoices", 7)


def test_a_page_load_puts_a_stored_value_that_is_no_tab_back_to_users(session: Session) -> None:
    """The browser's value is applied on hydrate as it is; the page load checks it."""
    admin = make_user(session, email="tabs@example.com", admin=True)
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    st.tab = "keys"
    asyncio.run(st.on_load())
    assert st.tab == "keys"  # a tab stays
    st.tab = "billing"
    asyncio.run(st.on_load())
    assert st.tab == "users"
