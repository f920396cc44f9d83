"""The console walked as the business's admin (h115's review): a period with one known
end, the usage filter's name for who is at a limit, and a revoke that names its key."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session

from billing_app.services import admin, api_keys, metering
from billing_app.services.admin import UserFilters
from billing_app.states import admin as admin_state
from billing_app.states import views
from tests.factories import make_subscription, make_user


def test_a_period_with_only_its_end_known_does_not_read_as_one_day(session: Session) -> None:
    """A subscription row without its period's start (a webhook's partial state) showed
    "Current period: Jan 2, 2027", a one-day period, under "Renews on Jan 2, 2027"."""
    end = datetime(2027, 1, 2, tzinfo=UTC)
    only_end = make_user(session, email="only-end-h115@example.com")
    make_subscription(session, only_end.id, sub_id="sub_h115_end", current_period_end=end)
    sub = admin_state.load_detail(only_end.id)["subscription"]
    assert sub.period_text == "Current period: until Jan 2, 2027"

    start = datetime(2026, 12, 2, tzinfo=UTC)
    only_start = make_user(session, email="only-start-h115@example.com")
    make_subscription(session, only_start.id, sub_id="sub_h115_start", current_period_start=start)
    sub = admin_state.load_detail(only_start.id)["subscription"]
    assert sub.period_text == "Current period: since Dec 2, 2026"


def test_the_over_filter_is_named_for_who_is_exactly_at_a_limit_too(session: Session) -> None:
    """Its rows showed "100 / 100 · 100%" under "Over a limit": at the limit is listed
    (a consume there is refused), so the option says so."""
    at = make_user(session, email="at-limit-h115@example.com")
    metering.record(session, at.id, "api_calls", 100)  # Free: 100 API calls
    listed = admin.list_users(session, UserFilters(q="at-limit-h115", usage="over"))
    assert [u.email for u in listed.items] == ["at-limit-h115@example.com"]
    assert admin_state.USAGE["over"] == "At or over a limit"


def test_the_revoke_question_names_the_key(session: Session) -> None:
    """Seven keys in the list and "Revoke this key?": which one was about to stop?"""
    owner = make_user(session, email="keys-h115@example.com")
    key, _secret = api_keys.create_key(session, name="scraper-prod", user_id=owner.id)
    (shown,) = [views.api_key_view(k) for k in api_keys.list_keys(session, owner.id)]
    assert shown.revoke_question == f"Revoke the key “scraper-prod” ({key.prefix}…)?"
