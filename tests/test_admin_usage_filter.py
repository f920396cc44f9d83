"""The admin users list's usage filter (services.admin.UserFilters.usage): who is over or
near a metered limit this period, or has a quota override. SQL, so it composes with the
search, plan, status, sort, paging and total; run on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import Session

from billing_app.errors import ValidationFailed
from billing_app.services import admin, exports, metering, quotas
from tests.factories import make_subscription, make_user


@pytest.fixture
def people(session: Session, frozen_clock) -> dict[str, int]:
    def user(name: str, plan: str = "free") -> int:
        return make_user(session, email=f"{name}@h78.test", plan=plan).id

    ids = {
        "over": user("over", "pro"),  # 120% of Pro's tokens
        "at": user("at"),  # exactly Free's 100 API calls: at the limit is over
        "near": user("near"),  # 80% of Free's API calls, exactly
        "under": user("under"),  # 79%
        "big": user("big", "enterprise"),  # unlimited, however much
        "lifted": user("lifted"),  # 90% of Free's tokens, but an override lifted it
        "lowered": user("lowered"),  # an override lowered it below the usage
        "lastmonth": user("lastmonth"),  # over in October, nothing now
    }
    make_subscription(session, ids["over"], plan="pro", status="active")
    make_subscription(session, ids["big"], plan="enterprise", status="active")
    record = [
        ("over", "tokens", 1_200_000),
        ("at", "api_calls", 100),
        ("near", "api_calls", 80),
        ("near", "tokens", 10),
        ("under", "api_calls", 79),
        ("big", "tokens", 50_000_000),
        ("lifted", "tokens", 9_000),
        ("lowered", "scraping_tasks", 7),
    ]
    for name, metric, n in record:
        metering.record(session, ids[name], metric, n)
    metering.record(
        session, ids["lastmonth"], "tokens", 20_000, occurred_at=datetime(2026, 10, 20, tzinfo=UTC)
    )
    quotas.set_override(session, ids["lifted"], "tokens", 90_000, "trial of a bigger plan")
    quotas.set_override(session, ids["lowered"], "scraping_tasks", 5, "abuse")
    return ids


def emails(session: Session, **filters: str) -> list[str]:
    page = admin.list_users(session, admin.UserFilters(sort="email", **filters), per_page=200)
    assert page.total == len(page.items)
    return [u.email.removesuffix("@h78.test") for u in page.items]


def test_over_near_and_override_select_who_needs_attention(session, people):
    assert emails(session) == sorted(people)
    assert emails(session, usage="over") == ["at", "lowered", "over"]
    assert emails(session, usage="near") == ["at", "lowered", "near", "over"]
    assert emails(session, usage="override") == ["lifted", "lowered"]


def test_the_filter_composes_with_search_plan_status_sort_and_paging(session, people):
    assert emails(session, usage="near", q="n") == ["near"]
    assert emails(session, usage="over", plan="pro") == ["over"]
    assert emails(session, usage="over", plan="free") == ["at", "lowered"]
    assert emails(session, usage="near", status="none") == ["at", "lowered", "near"]
    assert emails(session, usage="near", status="active") == ["over"]
    closest = admin.list_users(session, admin.UserFilters(usage="near", sort="-quota"))
    assert [u.email for u in closest.items][:2] == ["lowered@h78.test", "over@h78.test"]
    second = admin.list_users(
        session, admin.UserFilters(usage="near", sort="email"), page=2, per_page=3
    )
    assert second.total == 4 and second.pages == 2
    assert [u.email for u in second.items] == ["over@h78.test"]


def test_the_export_writes_what_the_filter_selects(session, people):
    text = "".join(exports.users_csv(session, admin.UserFilters(usage="over", sort="email")))
    session.rollback()
    lines = text.removeprefix(exports.BOM).splitlines()
    assert [line.split(",")[1] for line in lines[1:]] == [
        "at@h78.test",
        "lowered@h78.test",
        "over@h78.test",
    ]


def test_an_unknown_usage_filter_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValidationFailed) as err:
        admin.UserFilters(usage="hot")
    assert str(err.value) == "usage must be one of: over, near, override."


def test_with_billing_periods_the_filter_reads_the_counter_usage_goes_to_now(
    session, frozen_clock, monkeypatch
):
    """A plan that resets on its billing period: a user over Free's limit in the month,
    then subscribed mid-month, is counted in the new period's counter, as the meters are."""
    from datetime import timedelta

    from billing_app import plans
    from billing_app.settings import get_settings

    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    plans.get_catalog.cache_clear()
    get_settings.cache_clear()
    moved = make_user(session, email="moved@h78.test")
    stays = make_user(session, email="stays@h78.test")
    metering.record(session, moved.id, "tokens", 12_000)  # 120% of Free's, in the month
    metering.record(session, stays.id, "tokens", 12_000)
    frozen_clock.now += timedelta(days=1)
    make_subscription(
        session,
        moved.id,
        plan="pro",
        current_period_start=frozen_clock.now,
        current_period_end=datetime(2026, 12, 16, 12, tzinfo=UTC),
    )
    metering.record(session, moved.id, "tokens", 40)  # the Pro period's
    assert emails(session, usage="over") == ["stays"]
    assert emails(session, usage="near") == ["stays"]
