"""An admin's day in the console (h88's review): the Failed payments card says how much
is owed, and a filtered users list can be cleared in one step."""

from __future__ import annotations

from billing_app.states import views
from billing_app.states.admin import ALL, AdminState
from tests.ui.test_states import state_for


def test_the_failed_payments_card_says_how_much_is_owed() -> None:
    cards = views.stat_views(
        {"total_users": 9, "active_subscribers": 4, "mrr": 21700, "currency": "eur",
         "subscribers_by_plan": {"basic": 2, "pro": 2}, "failed_payments": 2,
         "failed_amount_due": 14850, "past_due_subscriptions": 1}
    )  # fmt: skip
    by_label = {c.label: c for c in cards}
    failed = by_label["Failed payments"]
    assert failed.value == "2"
    assert failed.hint.startswith("€148.50 still owed")
    assert failed.action == "failed" and by_label["Past due"].action == "past_due"
    assert {c.action for c in cards} == {"failed", "past_due", ""}
    # The amount is the card's, not a card of its own.
    assert len(cards) == 7 and not any("amount" in c.label.lower() for c in cards)


def test_clear_filters_lists_everyone_again_and_empties_the_search_box() -> None:
    st = state_for(AdminState, path="/admin/billing")
    assert st.users_filtered is False
    st.set_search("@acme.com")
    st.set_plan_filter("pro")
    st.set_status_filter("past_due")
    st.set_usage_filter("over")
    st.set_sort("-quota")
    st.page = 3
    assert st.users_filtered is True

    events = st.clear_filters()
    assert (st.search, st.plan_filter, st.status_filter, st.usage_filter) == (
        "", "all", "all", "all"
    )  # fmt: skip
    assert st.page == 1 and st.sort == "-quota"  # the order asked for stays
    assert st.users_filtered is False
    text = repr(events)
    assert "ref_user_search" in text and "reload_users" in text  # the box emptied

    st.set_usage_filter("near")  # any one filter alone shows the button
    assert st.users_filtered is True


def test_a_quota_change_in_the_drawer_names_the_admin_who_made_it() -> None:
    entry = {"metric": "tokens", "old_limit": 1_000_000, "new_limit": 2_000_000,
             "reason": "launch week", "actor_user_id": 1, "actor_email": "ops@example.com",
             "created_at": "2026-12-07T10:00:00+00:00"}  # fmt: skip
    view = views.audit_view(entry)
    assert view.who == "ops@example.com"
    assert view.change == "1,000,000 → 2,000,000" and view.reason == "launch week"
    assert views.audit_view({**entry, "actor_email": None}).who == ""


def test_the_cards_list_them_buttons_show_exactly_what_they_count() -> None:
    """Past due: the users list with that status filter alone (a search or another
    filter left over would hide some); Failed payments: every customer's failed invoices."""
    st = state_for(AdminState, path="/admin/billing")
    st.set_search("@acme.com")
    st.set_plan_filter("pro")
    st.set_usage_filter("over")
    st.show_past_due()
    assert (st.search, st.plan_filter, st.usage_filter) == ("", ALL, ALL)
    assert (st.status_filter, st.page) == ("past_due", 1)

    st.invoice_user_id, st.invoice_user_email, st.invoice_page = 7, "x@acme.com", 3
    st.show_failed_payments()
    assert (st.invoice_status, st.invoice_user_id, st.invoice_page) == ("failed", 0, 1)
