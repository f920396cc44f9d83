"""An admin's quota change saved while a plan change is applying the user's quotas:
the quota ends as the admin and the audit log say, under the new plan (PostgreSQL;
SQLite's write lock serializes the two)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlmodel import Session, select

from billing_app.clock import utcnow
from billing_app.db import get_engine, session_scope
from billing_app.models import Quota, Subscription
from billing_app.services import quotas, stripe_sync
from tests.factories import make_subscription, make_user

Change = Callable[[Session, int], Any]


@pytest.fixture(autouse=True)
def _postgres_only(is_postgres: bool) -> None:
    if not is_postgres:
        pytest.skip("SQLite's write lock serializes the two (PostgreSQL leg)")


def _tokens_quota(engine: Any, user_id: int) -> tuple[int, str, int]:
    with Session(engine) as s:
        q = s.exec(select(Quota).where(Quota.user_id == user_id, Quota.metric == "tokens")).one()
        return q.limit, q.source, q.plan_limit


def _upgrade_meets(monkeypatch: pytest.MonkeyPatch, admin_change: Change, before: Change) -> int:
    """A free user upgraded to Pro: the webhook's quota refresh has read the quota rows
    (unlocked) when `admin_change` commits, before the refresh writes them."""
    with session_scope() as s:
        uid = make_user(s).id
        before(s, uid)
    real = stripe_sync.driver_rows
    fired: list[bool] = []

    def driver_rows(conn: Any, stmt: Any, params: Any) -> Any:
        if stmt in (stripe_sync._PG_QUOTA_UPDATES, stripe_sync._QUOTA_UPDATE) and not fired:
            fired.append(True)
            with session_scope() as admin_session:  # another connection: not blocked
                admin_change(admin_session, uid)
        return real(conn, stmt, params)

    monkeypatch.setattr(stripe_sync, "driver_rows", driver_rows)
    with session_scope() as s:
        s.add(Subscription(user_id=uid, stripe_subscription_id="sub_up", plan="pro",
                           status="active"))  # fmt: skip
        assert stripe_sync.refresh_quotas(s, uid) == "pro"
        s.commit()
    assert fired
    return uid


def _override(s: Session, uid: int) -> None:
    quotas.set_override(s, uid, "tokens", 5, "abuse")


def _reset(s: Session, uid: int) -> None:
    quotas.set_override(s, uid, "tokens", None)


def test_an_override_saved_during_a_plan_change_stays(engine, monkeypatch):
    uid = _upgrade_meets(monkeypatch, _override, before=lambda s, uid: None)
    # Pro's limit goes under the override, not over it: the user stays at the 5 the
    # admin set (and the audit log says), not 1,000,000 labelled as an override.
    assert _tokens_quota(engine, uid) == (5, "admin", 1_000_000)


def test_a_reset_saved_during_a_plan_change_gets_the_new_plans_limit(engine, monkeypatch):
    uid = _upgrade_meets(monkeypatch, _reset, before=_override)
    # Back on the plan, Pro's now: not the old override's 5 labelled as the plan's.
    assert _tokens_quota(engine, uid) == (1_000_000, "plan", 1_000_000)


def _grace_end_meets(engine: Any, admin_change: Change, before: Change) -> int:
    """A Pro user past due beyond the grace days: the grace pass (back to Free's quotas)
    has read the quota rows when `admin_change` commits, before the pass writes them."""
    with session_scope() as s:
        uid = make_user(s).id
        make_subscription(s, uid, plan="pro", status="past_due",
                          past_due_since=utcnow() - timedelta(days=60))  # fmt: skip
        before(s, uid)
    fired: list[bool] = []

    def meet(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.replace('"', "").lstrip().upper().startswith("UPDATE QUOTA") and not fired:
            fired.append(True)
            with session_scope() as admin_session:  # another connection: not blocked
                admin_change(admin_session, uid)

    app_engine = get_engine()
    event.listen(app_engine, "before_cursor_execute", meet)
    try:
        with session_scope() as s:
            assert stripe_sync.enforce_grace_periods(s) == 1
    finally:
        event.remove(app_engine, "before_cursor_execute", meet)
    assert fired
    return uid


def test_an_override_saved_during_the_grace_pass_stays(engine):
    uid = _grace_end_meets(engine, _override, before=lambda s, uid: None)
    assert _tokens_quota(engine, uid) == (5, "admin", 10_000)


def test_a_reset_saved_during_the_grace_pass_gets_the_free_plans_limit(engine):
    uid = _grace_end_meets(engine, _reset, before=_override)
    assert _tokens_quota(engine, uid) == (10_000, "plan", 10_000)


def test_an_override_of_a_user_missing_a_metric_logs_the_limit_it_replaced(engine, monkeypatch):
    """A user without a row for one metric (a metric added since): the save first fills it
    in, which reads the user's rows; another admin's save commits before this one locks
    its row. The audit's old limit is the limit this save replaced (7), not the one read
    before the lock (10,000): the locked read must not hand back the row as first read."""
    with session_scope() as s:
        uid = make_user(s).id
        s.exec(sa.delete(Quota).where(Quota.user_id == uid, Quota.metric == "api_calls"))
        s.commit()
    real = quotas.apply_missing

    def meanwhile(session: Session, user_id: int) -> None:
        real(session, user_id)
        with session_scope() as other:  # another admin's save, committed first
            other.exec(
                sa.update(Quota)
                .where(Quota.user_id == user_id, Quota.metric == "tokens")
                .values(limit=7, source="admin")
            )
            other.commit()

    monkeypatch.setattr(quotas, "apply_missing", meanwhile)
    with session_scope() as s:
        quotas.set_override(s, uid, "tokens", 5, "abuse")
        audit = quotas.audit_log(s, uid)
    assert [(a["old_limit"], a["new_limit"]) for a in audit] == [(7, 5)]
    assert _tokens_quota(engine, uid) == (5, "admin", 10_000)
