"""The metering core on a real database (SQLite, or PostgreSQL with TEST_DATABASE_URL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, func, select

from billing_app.errors import (
    IdempotencyConflict,
    InvalidQuantity,
    QuotaExceeded,
    UnknownMetric,
    UserNotFound,
    ValidationFailed,
)
from billing_app.metrics import METRICS
from billing_app.models import UsageCounter, UsageEvent
from billing_app.services import metering, quotas
from tests.factories import daily_total, make_user


def _events(session: Session, user_id: int, metric: str = "tokens") -> tuple[int, int]:
    """Events not cancelled, and their sum: what the counters must hold."""
    count, total = session.exec(
        select(func.count(), func.coalesce(func.sum(UsageEvent.quantity), 0)).where(
            UsageEvent.user_id == user_id,
            UsageEvent.metric == metric,
            UsageEvent.canceled_at.is_(None),  # type: ignore[union-attr]
        )
    ).one()
    session.rollback()
    return count, total


def _counter_total(session: Session, user_id: int, metric: str = "tokens") -> int:
    total = session.exec(
        select(func.coalesce(func.sum(UsageCounter.used), 0)).where(
            UsageCounter.user_id == user_id, UsageCounter.metric == metric
        )
    ).one()
    # What the daily chart reads adds up to the counters in every test that looks.
    assert daily_total(session, user_id, metric) == total, "usage_daily drifted"
    session.rollback()
    return total


def test_record_appends_event_and_bumps_counter(session, frozen_clock):
    user = make_user(session, plan="basic")
    r1 = metering.record(session, user.id, "tokens", 1500, metadata={"model": "gpt-4"})
    r2 = metering.record(session, user.id, "tokens", 500)
    assert not r1.duplicate and not r2.duplicate
    assert r2.status.used == 2000
    assert r2.status.limit == 100_000
    assert r2.status.remaining == 98_000
    assert r2.status.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert r1.event.metadata == {"model": "gpt-4"}
    assert _events(session, user.id) == (2, 2000)
    assert _counter_total(session, user.id) == 2000


def test_writes_meet_rows_the_orm_wrote(session, frozen_clock):
    """The writes' SQL text stores timestamps as the ORM does (on SQLite, text compared
    as text): a counter and an event the ORM wrote are the same rows to them."""
    user = make_user(session, plan="basic")
    period = metering.current_period(session, user.id)
    session.add(UsageCounter(user_id=user.id, metric="tokens", period_start=period.start,
                             period_end=period.end, used=5))  # fmt: skip
    session.add(UsageEvent(user_id=user.id, metric="tokens", quantity=5, idempotency_key="orm",
                           occurred_at=frozen_clock.now, recorded_at=frozen_clock.now))  # fmt: skip
    session.commit()
    r = metering.record(session, user.id, "tokens", 3)
    assert r.status.used == 8 and r.status.period_start == period.start
    again = metering.record(session, user.id, "tokens", 5, idempotency_key="orm")
    assert again.duplicate and again.event.occurred_at == frozen_clock.now
    assert metering.consume(session, user.id, "tokens", 2).status.used == 10
    assert session.exec(select(func.count()).where(UsageCounter.user_id == user.id)).one() == 1
    assert _events(session, user.id) == (3, 10)


def test_record_past_the_limit_is_stored_and_reported(session, frozen_clock):
    user = make_user(session)  # free: 100 API calls
    metering.record(session, user.id, "api_calls", 90)
    r = metering.record(session, user.id, "api_calls", 20)
    assert r.over_limit is True
    assert r.status.used == 110
    assert r.status.remaining == 0
    assert r.status.percent == 100.0
    assert _events(session, user.id, "api_calls") == (2, 110)


def test_check_reports_reason_and_reset_date(session, frozen_clock):
    user = make_user(session, plan="basic")
    metering.record(session, user.id, "tokens", 100_000)
    result = metering.check(session, user.id, "tokens", 1)
    assert result.allowed is False
    assert result.remaining == 0
    assert result.reason == "Monthly token limit of 100,000 reached; resets 2026-12-01."
    partial = metering.check(session, user.id, "api_calls", 1001)
    assert partial.allowed is False
    assert "only 1,000 of the monthly API call limit of 1,000 remain" in partial.reason
    ok = metering.check(session, user.id, "api_calls", 1000)
    assert ok.allowed is True and ok.reason is None


def test_check_on_a_bare_connection_answers_as_on_a_session(engine, session, frozen_clock):
    """The quota check's hot path (db.read_connection: no BEGIN, no ORM session) reads
    the same figures, refusals included."""
    from billing_app.db import read_connection

    user = make_user(session, plan="basic")
    metering.record(session, user.id, "api_calls", 999)
    with read_connection(engine) as conn:
        cases = (("api_calls", 1), ("api_calls", 2), ("tokens", 5), ("scraping_tasks", 1))
        for metric, qty in cases:
            assert metering.check(conn, user.id, metric, qty) == metering.check(
                session, user.id, metric, qty
            )
        assert metering.check(conn, user.id, "api_calls", 2).allowed is False
        with pytest.raises(UserNotFound):
            metering.check(conn, user.id + 999, "tokens", 1)


def test_check_on_a_dropped_read_connection_is_an_outage_then_recovers(
    engine, session, frozen_clock, is_postgres
):
    """PostgreSQL's check runs on the driver's cursor of the autocommit read pool: a
    connection the server dropped must still surface as SQLAlchemy's outage error (the
    API answers 503), be thrown out of the pool, and not poison the next check."""
    if not is_postgres:
        pytest.skip("needs a server that can drop the connection (PostgreSQL leg)")
    from billing_app.db import read_connection, read_engine

    user = make_user(session, plan="basic")
    session.commit()
    with read_connection(engine) as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    try:
        with engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        lost = None
        for _ in range(read_engine(engine).pool.checkedin() + 1):  # reach the dropped one
            try:
                with read_connection(engine) as conn:
                    metering.check(conn, user.id, "tokens", 1)
            except sa.exc.DBAPIError as err:
                lost = err
                break
        assert lost is not None and lost.connection_invalidated
        assert isinstance(lost, sa.exc.OperationalError)
        with read_connection(engine) as conn:
            assert metering.check(conn, user.id, "tokens", 1).allowed is True
    finally:
        read_engine(engine).dispose()


def test_check_reads_only(session, frozen_clock):
    user = make_user(session)
    for _ in range(3):
        metering.check(session, user.id, "tokens", 10)
    assert _events(session, user.id) == (0, 0)
    assert _counter_total(session, user.id) == 0


def test_unlimited_plan_never_refuses(session, frozen_clock):
    user = make_user(session, plan="enterprise")
    r = metering.consume(session, user.id, "tokens", 999_000_000)
    assert r.status.unlimited and r.status.remaining is None and r.status.percent == 0.0
    assert metering.check(session, user.id, "tokens", 999_000_000).allowed


def test_consume_refuses_over_limit_and_writes_nothing(session, frozen_clock):
    user = make_user(session)  # free: 10 scraping tasks
    metering.consume(session, user.id, "scraping_tasks", 8)
    with pytest.raises(QuotaExceeded) as exc:
        metering.consume(session, user.id, "scraping_tasks", 3, idempotency_key="k-over")
    assert exc.value.status_code == 403
    assert exc.value.details["used"] == 8 and exc.value.details["remaining"] == 2
    assert _events(session, user.id, "scraping_tasks") == (1, 8)
    # The refused key was not stored: the same key may succeed later within the limit.
    r = metering.consume(session, user.id, "scraping_tasks", 2, idempotency_key="k-over")
    assert r.status.used == 10 and not r.duplicate
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user.id, "scraping_tasks", 1)
    with pytest.raises(QuotaExceeded):  # larger than the whole limit
        metering.consume(session, user.id, "scraping_tasks", 11)
    assert _counter_total(session, user.id, "scraping_tasks") == 10


def test_admin_override_wins_over_plan_and_survives_plan_change(session, frozen_clock):
    user = make_user(session, plan="basic")
    quotas.set_override(session, user.id, "tokens", 5, reason="trial abuse")
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user.id, "tokens", 6)
    quotas.apply_plan(session, user.id, "pro")
    session.commit()
    q = {q.metric: q for q in quotas.get_quotas(session, user.id)}
    assert q["tokens"].limit == 5 and q["tokens"].source == "admin"
    assert q["tokens"].plan_limit == 1_000_000
    assert q["api_calls"].limit == 10_000
    quotas.set_override(session, user.id, "tokens", None, reason="resolved")
    q = {q.metric: q for q in quotas.get_quotas(session, user.id)}
    assert q["tokens"].limit == 1_000_000 and q["tokens"].source == "plan"
    log = quotas.audit_log(session, user.id)
    assert [(e["old_limit"], e["new_limit"], e["reason"]) for e in log] == [
        (5, 1_000_000, "resolved"),
        (100_000, 5, "trial abuse"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"metric": "gpu_hours"}, UnknownMetric),
        ({"quantity": 0}, InvalidQuantity),
        ({"quantity": -5}, InvalidQuantity),
        ({"quantity": 10**12}, InvalidQuantity),
        ({"quantity": 1.5}, InvalidQuantity),
        ({"quantity": True}, InvalidQuantity),
        ({"quantity": "10"}, InvalidQuantity),
        ({"idempotency_key": ""}, ValidationFailed),
        ({"idempotency_key": "x" * 256}, ValidationFailed),
        ({"metadata": ["not", "an", "object"]}, ValidationFailed),
        ({"metadata": {"bad": float("nan")}}, ValidationFailed),
        ({"occurred_at": "yesterday"}, ValidationFailed),
        ({"user_id": "7"}, ValidationFailed),
    ],
)
def test_bad_input_raises_typed_error_and_writes_nothing(session, frozen_clock, kwargs, error):
    user = make_user(session)
    args = {"user_id": user.id, "metric": "tokens", "quantity": 5, **kwargs}
    with pytest.raises(error) as exc:
        metering.record(session, **args)
    assert exc.value.message and 400 <= exc.value.status_code < 500
    assert _events(session, user.id) == (0, 0)


def test_future_events_are_refused(session, frozen_clock):
    user = make_user(session)
    with pytest.raises(ValidationFailed, match="future"):
        metering.record(
            session, user.id, "tokens", 1, occurred_at=frozen_clock.now + timedelta(hours=1)
        )


def test_unknown_user_is_a_clear_error(session, frozen_clock):
    for fn in (metering.record, metering.consume, metering.check):
        with pytest.raises(UserNotFound, match="No user with id 999999"):
            fn(session, 999_999, "tokens", 1)


def _delete_user(engine: sa.Engine, user_id: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DELETE FROM "user" WHERE id = {int(user_id)}')


def test_deleting_a_user_deletes_its_events_and_counters(engine, frozen_clock):
    """usage_event has no foreign key (migration 0006): a trigger deletes the events."""
    with Session(engine, expire_on_commit=False) as s:
        gone, kept = make_user(s, plan="pro"), make_user(s, plan="pro")
        for uid in (gone.id, kept.id):
            metering.record(s, uid, "tokens", 5)
            metering.consume(s, uid, "api_calls", 1)
        writes = [metering.prepare_write(u, "tokens", 2) for u in (gone.id, kept.id, gone.id)]
        metering.apply_writes(s, writes, commit=True)
    _delete_user(engine, gone.id)
    with Session(engine) as s:
        assert _events(s, gone.id) == (0, 0) and _events(s, gone.id, "api_calls") == (0, 0)
        assert _counter_total(s, gone.id) == 0
        assert _events(s, kept.id) == (2, 7) and _events(s, kept.id, "api_calls") == (1, 1)
        assert _counter_total(s, kept.id) == 7


def test_emptying_the_user_table_empties_the_events(engine, frozen_clock, is_postgres):
    """An operator's reset: TRUNCATE ... CASCADE on PostgreSQL (migration 0007), which
    fires no DELETE trigger; DELETE on SQLite, which has no TRUNCATE. Afterwards a new
    user with a reused id starts with no usage and may reuse the old keys."""
    with Session(engine, expire_on_commit=False) as s:
        user = make_user(s, plan="pro")
        metering.record(s, user.id, "tokens", 5, idempotency_key="k")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'TRUNCATE "user" RESTART IDENTITY CASCADE' if is_postgres else 'DELETE FROM "user"'
        )
        assert conn.exec_driver_sql("SELECT count(*) FROM usage_event").scalar() == 0
    with Session(engine, expire_on_commit=False) as s:
        again = make_user(s, plan="pro")
        assert not metering.record(s, again.id, "tokens", 7, idempotency_key="k").duplicate
        assert _events(s, again.id) == (1, 7) and _counter_total(s, again.id) == 7


def test_a_user_deleted_during_a_write_leaves_no_events(engine, frozen_clock):
    """The deletion waits for a write in flight (its counter bump holds the user), then
    takes the write's events with it: no event outlives its user."""
    with Session(engine) as s:
        user = make_user(s, plan="pro")
        metering.record(s, user.id, "tokens", 1)  # an existing counter row
        other = make_user(s, plan="pro")
    writer = Session(engine, expire_on_commit=False)
    writes = [metering.prepare_write(u, "tokens", 3) for u in (user.id, other.id)]
    outcomes = metering.apply_writes(writer, writes)  # not committed: its locks are held
    assert all(not isinstance(o, Exception) for o in outcomes)
    deleter = threading.Thread(target=_delete_user, args=(engine, user.id))
    deleter.start()
    deleter.join(0.5)
    assert deleter.is_alive()  # waiting for the write
    writer.commit()
    writer.close()
    deleter.join(30)
    assert not deleter.is_alive()
    with Session(engine) as s:
        assert _events(s, user.id) == (0, 0)
        assert _counter_total(s, user.id) == 0
        assert _events(s, other.id) == (1, 3) and _counter_total(s, other.id) == 3


def test_idempotent_record_returns_first_result(session, frozen_clock):
    user = make_user(session)
    first = metering.record(session, user.id, "tokens", 42, idempotency_key="req-1")
    again = metering.record(session, user.id, "tokens", 42, idempotency_key="req-1")
    assert again.duplicate is True
    assert again.event.id == first.event.id
    assert again.event.recorded_at == first.event.recorded_at
    assert _events(session, user.id) == (1, 42)
    assert _counter_total(session, user.id) == 42
    with pytest.raises(IdempotencyConflict):
        metering.record(session, user.id, "tokens", 43, idempotency_key="req-1")
    # Keys are per user: another user may use the same key.
    other = make_user(session)
    assert not metering.record(session, other.id, "tokens", 42, idempotency_key="req-1").duplicate


def test_same_key_twenty_times_concurrently_counts_once(engine, frozen_clock):
    with Session(engine) as s:
        user = make_user(s)
    barrier = threading.Barrier(20)

    def send(fn, key):
        with Session(engine, expire_on_commit=False) as s:
            barrier.wait()
            return fn(s, user.id, "tokens", 7, idempotency_key=key)

    for fn, key in ((metering.record, "key-r"), (metering.consume, "key-c")):
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(send, [fn] * 20, [key] * 20))
        assert sum(not r.duplicate for r in results) == 1
        assert len({r.event.id for r in results}) == 1
    with Session(engine) as s:
        assert _events(s, user.id) == (2, 14)
        assert _counter_total(s, user.id) == 14


def test_concurrent_consume_never_overshoots(engine, frozen_clock, is_postgres):
    """50 threads (each its own connection), 1,000 attempts, 100 remaining: exactly 100."""
    with Session(engine) as s:
        user = make_user(s, plan="basic")
        quotas.set_override(s, user.id, "api_calls", 150, reason="concurrency test")
        metering.record(s, user.id, "api_calls", 50)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with Session(engine, expire_on_commit=False) as s:
            barrier.wait()
            for i in range(20):
                try:
                    metering.consume(s, user.id, "api_calls", 1, idempotency_key=f"w{n}-{i}")
                    result = "ok"
                except QuotaExceeded:
                    result = "refused"
                with lock:
                    outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 1000
    assert outcomes.count("ok") == 100
    with Session(engine) as s:
        assert _counter_total(s, user.id, "api_calls") == 150
        assert _events(s, user.id, "api_calls") == (101, 150)


def test_usage_resets_at_the_start_of_the_month(session, frozen_clock):
    user = make_user(session)  # free: 100 API calls
    frozen_clock.set(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    metering.consume(session, user.id, "api_calls", 100)
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user.id, "api_calls", 1)
    frozen_clock.set(datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC))
    summary = {s.metric: s for s in metering.summary(session, user.id)}
    assert summary["api_calls"].used == 0
    assert summary["api_calls"].resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    r = metering.consume(session, user.id, "api_calls", 100)
    assert r.status.used == 100
    # A late event from November still counts in November, not December.
    late = metering.record(
        session, user.id, "api_calls", 5, occurred_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    assert late.status.period_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert late.status.used == 105
    assert metering.check(session, user.id, "api_calls", 1).used == 100


def test_billing_period_reset_follows_the_subscription(session, frozen_clock, monkeypatch):
    from billing_app import plans
    from billing_app.models import Subscription

    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    plans.get_catalog.cache_clear()
    from billing_app.settings import get_settings

    get_settings.cache_clear()
    user = make_user(session, plan="pro")
    start = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)
    session.add(
        Subscription(
            user_id=user.id,
            stripe_subscription_id="sub_test_1",
            plan="pro",
            status="active",
            current_period_start=start,
            current_period_end=datetime(2026, 12, 10, 8, 0, tzinfo=UTC),
        )
    )
    session.commit()
    r = metering.record(session, user.id, "tokens", 10)
    assert r.status.period_start == start
    assert r.status.resets_at == datetime(2026, 12, 10, 8, 0, tzinfo=UTC)
    from billing_app.db import read_connection

    with read_connection(session.get_bind()) as conn:  # the check's hot path looks it up too
        c = metering.check(conn, user.id, "tokens", 1)
    assert (c.used, c.resets_at) == (10, datetime(2026, 12, 10, 8, 0, tzinfo=UTC))

    # One group for two users: each write gets its own user's period (the group's period
    # cache is per month only when no plan resets with its billing period).
    from billing_app.services import metering_batch

    monthly = make_user(session, plan="basic")
    writes = metering_batch.validate_batch(
        [
            {"user_id": monthly.id, "metric": "tokens", "quantity": 1},
            {"user_id": user.id, "metric": "tokens", "quantity": 1},
        ]
    )
    first, second = metering_batch.record_batch(session, writes)
    assert first.status.period_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert second.status.period_start == start and second.status.used == 11


def test_billing_period_gap_before_the_renewal_webhook(session, frozen_clock, monkeypatch):
    """After the period's end and before the renewal is synced, usage goes to the period
    Stripe will bill (not the calendar month, whose counter the renewal would then drop),
    so the limit holds across the gap; an ended or ending plan falls back to the month."""
    from billing_app import plans
    from billing_app.models import Subscription
    from billing_app.settings import get_settings

    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    plans.get_catalog.cache_clear()
    get_settings.cache_clear()
    user = make_user(session, plan="pro")
    start, end = datetime(2026, 11, 10, 8, tzinfo=UTC), datetime(2026, 12, 10, 8, tzinfo=UTC)
    sub = Subscription(
        user_id=user.id,
        stripe_subscription_id="sub_gap",
        plan="pro",
        status="active",
        current_period_start=start,
        current_period_end=end,
        created_at=start,
    )
    session.add(sub)
    session.commit()
    limit = metering.check(session, user.id, "tokens", 1).limit
    next_end = datetime(2027, 1, 10, 8, tzinfo=UTC)

    frozen_clock.set(datetime(2026, 12, 10, 9, tzinfo=UTC))  # period over, not yet synced
    gap = metering.consume(session, user.id, "tokens", limit)
    assert (gap.status.period_start, gap.status.resets_at) == (end, next_end)
    sub.current_period_start, sub.current_period_end = end, next_end  # the renewal lands
    session.add(sub)
    session.commit()
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user.id, "tokens", 1)
    assert metering.check(session, user.id, "tokens", 1).used == limit

    # A backdated write in the previous billing period counts there, not in November's
    # calendar month; one from before the subscription in its calendar month.
    late = metering.record(
        session, user.id, "tokens", 3, occurred_at=datetime(2026, 12, 9, tzinfo=UTC)
    )
    assert late.status.period_start == start
    early = metering.record(
        session, user.id, "tokens", 3, occurred_at=datetime(2026, 11, 2, tzinfo=UTC)
    )
    assert early.status.period_start == datetime(2026, 11, 1, tzinfo=UTC)

    # Ending at the period's end: after it, the calendar month.
    sub.cancel_at_period_end = True
    session.add(sub)
    session.commit()
    frozen_clock.set(datetime(2027, 1, 10, 9, tzinfo=UTC))
    assert metering.check(session, user.id, "tokens", 1).resets_at == datetime(
        2027, 2, 1, tzinfo=UTC
    )
    # Canceled within its period: the period still, to its end (a fresh calendar month's
    # counter would hand out a fresh quota); after it, the calendar month.
    sub.cancel_at_period_end, sub.status = False, "canceled"
    session.add(sub)
    session.commit()
    frozen_clock.set(datetime(2027, 1, 5, tzinfo=UTC))
    assert metering.check(session, user.id, "tokens", 1).resets_at == next_end
    frozen_clock.set(datetime(2027, 1, 10, 9, tzinfo=UTC))
    assert metering.check(session, user.id, "tokens", 1).resets_at == datetime(
        2027, 2, 1, tzinfo=UTC
    )


def test_batch_limits_are_each_events_own_metric(session, frozen_clock):
    """The limits lookup reads only the quotas of the metrics written: each event still
    gets its own metric's limit, an override included, and a user without quota rows
    the free plan's."""
    from billing_app.plans import get_catalog
    from billing_app.services import metering_batch

    pro, free = make_user(session, plan="pro"), make_user(session)
    quotas.set_override(session, pro.id, "api_calls", 7, reason="test")
    session.commit()
    writes = metering_batch.validate_batch(
        [
            {"user_id": pro.id, "metric": "tokens", "quantity": 2},
            {"user_id": pro.id, "metric": "api_calls", "quantity": 9},
            {"user_id": free.id, "metric": "scraping_tasks", "quantity": 1},
            {"user_id": pro.id, "metric": "tokens", "quantity": 3},
        ]
    )
    results = metering_batch.record_batch(session, writes)
    got = [(r.status.metric, r.status.limit, r.status.used, r.over_limit) for r in results]
    assert got == [
        ("tokens", 1_000_000, 2, False),
        ("api_calls", 7, 9, True),
        ("scraping_tasks", get_catalog()["free"].limit_for("scraping_tasks"), 1, False),
        ("tokens", 1_000_000, 5, False),
    ]


def test_postgres_sessions_run_in_utc(engine, is_postgres):
    """Timestamps come back with datetime.UTC, the tzinfo of the app's own datetimes
    (the fast path of comparing and hashing them), whatever the server's zone."""
    if not is_postgres:
        pytest.skip("the session time zone is a PostgreSQL setting (PostgreSQL leg)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        assert conn.exec_driver_sql("SELECT now()").scalar().tzinfo is UTC


def test_summary_and_daily_history(session, frozen_clock):
    user = make_user(session, plan="pro")
    frozen_clock.set(datetime(2026, 11, 3, 10, tzinfo=UTC))
    metering.record(session, user.id, "tokens", 300)
    frozen_clock.set(datetime(2026, 11, 5, 23, 30, tzinfo=UTC))
    metering.record(session, user.id, "tokens", 200)
    metering.record(session, user.id, "api_calls", 2)
    summary = {s.metric: s for s in metering.summary(session, user.id)}
    assert (summary["tokens"].used, summary["tokens"].limit) == (500, 1_000_000)
    assert summary["tokens"].percent == 0.1
    history = metering.daily_history(session, user.id)
    by_day = {(h.day, h.metric): h.quantity for h in history}
    assert by_day[("2026-11-03", "tokens")] == 300
    assert by_day[("2026-11-05", "tokens")] == 200
    assert by_day[("2026-11-04", "tokens")] == 0
    assert by_day[("2026-11-05", "api_calls")] == 2
    assert {h.day for h in history} == {f"2026-11-0{d}" for d in range(1, 6)}


def _history(session: Session, user_id: int, period=None) -> dict[tuple[str, str], int]:
    return {
        (h.day, h.metric): h.quantity
        for h in metering.daily_history(session, user_id, period)
        if h.quantity
    }


def _events_by_day(session: Session, user_id: int, start: datetime, end: datetime):
    """The oracle: the events themselves, summed per UTC day and metric."""
    rows = session.exec(
        select(UsageEvent.occurred_at, UsageEvent.metric, UsageEvent.quantity).where(
            UsageEvent.user_id == user_id
        )
    ).all()
    session.rollback()
    out: dict[tuple[str, str], int] = {}
    for at, metric, q in rows:
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        if start <= at < end:
            k = (at.astimezone(UTC).date().isoformat(), metric)
            out[k] = out.get(k, 0) + q
    return out


def test_daily_history_counts_every_stored_event_once_on_every_write_path(session, frozen_clock):
    """The chart reads the counters' latest day and the closed days' usage_daily rows:
    records (backdated ones into their own day and period), duplicates not again,
    batches, consumes one by one and several on one counter at once (refused and
    repeated ones not); a counter's day closes when it is written on a later one. It
    always equals the events summed per day."""
    from billing_app.services.metering_batch import record_batch, validate_batch

    user = make_user(session, plan="basic")  # api_calls limit 1,000
    frozen_clock.set(datetime(2026, 11, 15, 23, 59, tzinfo=UTC))
    metering.record(session, user.id, "tokens", 5, idempotency_key="r1")
    metering.record(session, user.id, "tokens", 5, idempotency_key="r1")  # duplicate
    early = datetime(2026, 11, 3, 10, tzinfo=UTC)
    metering.record(session, user.id, "tokens", 7, idempotency_key="r2", occurred_at=early)
    october = datetime(2026, 10, 20, 8, tzinfo=UTC)  # the previous period's chart
    metering.record(session, user.id, "tokens", 11, idempotency_key="r3", occurred_at=october)
    events = [
        {"user_id": user.id, "metric": "tokens", "quantity": 2, "idempotency_key": "b1"},
        {"user_id": user.id, "metric": "tokens", "quantity": 3, "idempotency_key": "b2",
         "occurred_at": datetime(2026, 11, 14, 23, 59, 59, tzinfo=UTC)},
        {"user_id": user.id, "metric": "tokens", "quantity": 5, "idempotency_key": "r1"},
        {"user_id": user.id, "metric": "scraping_tasks", "quantity": 4, "idempotency_key": "b3"},
    ]  # fmt: skip
    record_batch(session, validate_batch(events))
    metering.consume(session, user.id, "api_calls", 100, idempotency_key="c0")
    frozen_clock.set(datetime(2026, 11, 16, 0, 0, 1, tzinfo=UTC))  # the next day
    metering.record(session, user.id, "tokens", 1, idempotency_key="r4")  # closes the 15th
    late = datetime(2026, 11, 15, 12, tzinfo=UTC)  # into the closed day's row
    metering.record(session, user.id, "tokens", 20, idempotency_key="r5", occurred_at=late)
    metering.consume(session, user.id, "api_calls", 500, idempotency_key="c1")
    metering.consume(session, user.id, "api_calls", 500, idempotency_key="c1")  # repeat
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user.id, "api_calls", 401, idempotency_key="c2")
    frozen_clock.set(datetime(2026, 11, 17, 9, tzinfo=UTC))
    run = [  # on PostgreSQL one statement deciding them in order (a run)
        metering.prepare_write(user.id, "api_calls", q, f"c{3 + n}", consume=True)
        for n, q in enumerate((150, 300, 200, 50))  # 300 no longer fits
    ]
    outcomes = metering.apply_writes(session, run, commit=True)
    assert [isinstance(o, QuotaExceeded) for o in outcomes] == [False, True, False, False]

    expected = {
        ("2026-11-03", "tokens"): 7,
        ("2026-11-14", "tokens"): 3,
        ("2026-11-15", "tokens"): 5 + 2 + 20,
        ("2026-11-15", "scraping_tasks"): 4,
        ("2026-11-15", "api_calls"): 100,
        ("2026-11-16", "tokens"): 1,
        ("2026-11-16", "api_calls"): 500,
        ("2026-11-17", "api_calls"): 400,
    }
    november = metering.current_period(session, user.id)
    assert _history(session, user.id) == expected
    assert _events_by_day(session, user.id, november.start, november.end) == expected
    previous = metering.calendar_month(october)
    assert _history(session, user.id, previous) == {("2026-10-20", "tokens"): 11}
    assert _events_by_day(session, user.id, previous.start, previous.end) == {
        ("2026-10-20", "tokens"): 11
    }
    for metric in ("tokens", "api_calls", "scraping_tasks"):
        assert daily_total(session, user.id, metric) == _counter_total(session, user.id, metric)


def test_daily_history_lists_each_day_the_period_has_reached(session, frozen_clock):
    """A period starting mid-day (one that resets with the subscription) lists its first
    day, and today even before the hour the period started at."""
    user = make_user(session)
    frozen_clock.set(datetime(2026, 11, 5, 10, tzinfo=UTC))
    period = metering.Period(
        datetime(2026, 11, 3, 14, tzinfo=UTC), datetime(2026, 12, 3, 14, tzinfo=UTC)
    )
    days = [h.day for h in metering.daily_history(session, user.id, period)]
    assert sorted(set(days)) == ["2026-11-03", "2026-11-04", "2026-11-05"]
    assert len(days) == 3 * len(METRICS)


def test_seed_functions_keep_their_signatures(session, frozen_clock):
    from billing_app.services import usage_meter

    user = make_user(session)
    allowed, error = usage_meter.check_token_quota(session, user.id, requested_tokens=1000)
    assert (allowed, error) == (True, None)
    usage_meter.record_token_usage(session=session, user_id=user.id, tokens=500,
                                   metadata={"model": "gpt-4"})  # fmt: skip
    usage_meter.record_api_call_usage(session, user.id)
    usage_meter.record_scraping_task_usage(session, user.id)
    allowed, error = usage_meter.check_token_quota(session, user.id, requested_tokens=9_600)
    assert allowed is False
    assert error == (
        "Requested 9,600 tokens but only 9,500 of the monthly token limit of 10,000 remain; "
        "resets 2026-12-01."
    )
    assert usage_meter.check_api_call_quota(session, user.id) == (True, None)
    assert usage_meter.check_scraping_task_quota(session, user.id) == (True, None)


def test_counter_equals_sum_of_events_after_mixed_load(engine, frozen_clock):
    with Session(engine) as s:
        users = [make_user(s, plan="pro") for _ in range(3)]

    def work(n: int) -> None:
        with Session(engine, expire_on_commit=False) as s:
            k = n % 40  # each key is sent three times, by record or consume
            fn = metering.record if n % 2 else metering.consume
            fn(s, users[k % 3].id, "tokens", k + 1, idempotency_key=f"mix-{k}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, range(120)))
    with Session(engine) as s:
        for u in users:
            assert _counter_total(s, u.id) == _events(s, u.id)[1]
        count, total = s.exec(select(func.count(), func.sum(UsageEvent.quantity))).one()
        assert (count, total) == (40, sum(range(1, 41)))


def test_a_refused_write_names_every_bad_field_not_only_the_first():
    """prepare_write stops at its first check; its error named that field alone, so a
    caller fixing it met the next one on the following attempt."""
    ahead = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(metering.UnknownMetric) as caught:
        metering.prepare_write(1, "gpus", 0, " ", {"a": "\x00"}, ahead)
    fields = caught.value.to_dict()["fields"]
    assert [(f["field"], f["type"]) for f in fields] == [
        ("metric", "unknown_metric"),
        ("quantity", "invalid_quantity"),
        ("idempotency_key", "validation_error"),
        ("metadata", "validation_error"),
        ("occurred_at", "validation_error"),
    ]
    assert fields[2]["message"] == "Idempotency key must not be blank."
    # One bad field: the error as it always was.
    with pytest.raises(metering.UnknownMetric) as caught:
        metering.prepare_write(1, "gpus", 1)
    assert [f["field"] for f in caught.value.to_dict()["fields"]] == ["metric"]
