"""Adversarial probes of the metering promise under races: real threads, real
connections (SQLite, or PostgreSQL with TEST_DATABASE_URL). Each asserts that the
counters (and the days' rows) equal the stored events not cancelled, per period and
per UTC day, and that consumes neither overshoot nor refuse while there was room."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from billing_app import plans
from billing_app.errors import (
    QuotaExceeded,
    UsageEventNotFound,
    UserNotFound,
    ValidationFailed,
)
from billing_app.models import Subscription
from billing_app.services import metering, metering_batch, quotas, stripe_sync
from billing_app.services.metering import prepare_write
from billing_app.services.usage_writer import UsageWriter
from billing_app.settings import get_settings
from tests.factories import make_subscription, make_user


def assert_exact(engine: sa.Engine, user_id: int | None = None) -> None:
    """Per counter (user, metric, period) and per (user, metric, UTC day): the counters
    and the days' rows hold exactly the events not cancelled (each event counted in the
    counter whose period holds its moment; the probes' periods do not overlap)."""
    where = "" if user_id is None else f" WHERE user_id = {int(user_id)}"
    with engine.connect() as conn:
        events = conn.execute(
            sa.text(
                "SELECT user_id, metric, occurred_at, quantity FROM usage_event"
                f"{where}{' AND' if where else ' WHERE'} canceled_at IS NULL"
            )
        ).all()
        counters = conn.execute(
            sa.text(
                "SELECT user_id, metric, period_start, period_end, used, day, day_used"
                f" FROM usage_counter{where}"
            )
        ).all()
        daily = conn.execute(
            sa.text(f"SELECT user_id, metric, day, quantity FROM usage_daily{where}")
        ).all()
    by_period: Counter = Counter()
    by_day: Counter = Counter()
    spans = [(u, m, _utc(s), _utc(e)) for u, m, s, e, *_ in counters]
    for u, m, at, q in events:
        at = _utc(at)
        holding = [s for cu, cm, s, e in spans if (cu, cm) == (u, m) and s <= at < e]
        assert len(holding) == 1, f"event at {at} of {u}/{m} in {len(holding)} counters"
        by_period[(u, m, holding[0])] += q
        by_day[(u, m, at.date())] += q
    stored = Counter({(u, m, _utc(s)): used for u, m, s, _e, used, *_ in counters if used})
    assert stored == +by_period, "a counter differs from its events"
    days: Counter = Counter()
    for u, m, *_, day, day_used in counters:
        if day_used:
            days[(u, m, _date(day))] += day_used
    for u, m, day, q in daily:
        days[(u, m, _date(day))] += q
    assert +days == +by_day, "a day's usage differs from its events"


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _date(value):
    return datetime.fromisoformat(value).date() if isinstance(value, str) else value


def _delete_user(engine: sa.Engine, user_id: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DELETE FROM "user" WHERE id = {int(user_id)}')


def _delete_after_lookup(monkeypatch, engine: sa.Engine, user_id: int) -> list[bool]:
    """Delete `user_id` (committed, from another connection) right after the next write
    has looked its users up, before its counters are bumped (PostgreSQL: nothing of the
    write holds the user yet; SQLite: the write holds the database, so the deletion
    would wait for it: not run there)."""
    real = metering._first_round
    fired: list[bool] = []

    def first_round(conn, *args, **kwargs):
        out = real(conn, *args, **kwargs)
        if not fired and conn.dialect.name == "postgresql":
            fired.append(True)
            _delete_user(engine, user_id)
        return out

    monkeypatch.setattr(metering, "_first_round", first_round)
    return fired


def _postgres_only(is_postgres: bool, why: str) -> None:
    if not is_postgres:
        pytest.skip(f"PostgreSQL leg: on SQLite {why}")


@pytest.mark.parametrize("consume", [False, True], ids=["record", "consume"])
@pytest.mark.parametrize("path", ["writer", "service"])
def test_a_user_deleted_after_a_single_writes_lookup_is_not_found(
    app_settings, engine, frozen_clock, monkeypatch, is_postgres, consume, path
):
    """A lone write (POST /usage, /consume through the writer; the service's own, as the
    CLI calls it) whose user is deleted between its lookup and its counter bump: the
    user is not found (404), not a foreign key's error (was a 500)."""
    _postgres_only(is_postgres, "a write holds the database, so a deletion waits for it")
    with Session(engine) as s:
        user = make_user(s, plan="pro")
        metering.record(s, user.id, "tokens", 5)
    fired = _delete_after_lookup(monkeypatch, engine, user.id)
    write = prepare_write(user.id, "tokens", 3, "gone", consume=consume)
    with pytest.raises(UserNotFound):
        if path == "writer":
            UsageWriter().write(write)
        else:
            with Session(engine) as s:
                metering.write_one(s, write)
    assert fired == [True]
    assert_exact(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM usage_event").scalar() == 0


def test_a_user_deleted_after_a_batchs_lookup_refuses_the_batch_as_unknown(
    engine, frozen_clock, monkeypatch, is_postgres
):
    """A batch's user deleted while it runs: the batch is refused naming that event's
    unknown user (422, nothing recorded), not a foreign key's error (was a 500); the
    other user's usage stays exact."""
    _postgres_only(is_postgres, "a write holds the database, so a deletion waits for it")
    with Session(engine) as s:
        gone, kept = make_user(s, plan="pro"), make_user(s, plan="pro")
        metering.record(s, kept.id, "tokens", 5)
    fired = _delete_after_lookup(monkeypatch, engine, gone.id)
    events = [prepare_write(u, "tokens", 2, f"b{u}") for u in (kept.id, gone.id)]
    with Session(engine) as s, pytest.raises(ValidationFailed) as err:
        metering_batch.record_batch(s, events)
    assert [e["index"] for e in err.value.details["events"]] == [1]
    assert fired == [True]
    assert_exact(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM usage_event").scalar() == 1


def _paused_after_lookup(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The next write pauses after its lookups (it has read the clock, and on PostgreSQL
    holds no counter yet): (paused, go)."""
    real = metering._first_round
    paused, go = threading.Event(), threading.Event()

    def first_round(*args, **kwargs):
        out = real(*args, **kwargs)
        if not paused.is_set():
            paused.set()
            assert go.wait(30)
        return out

    monkeypatch.setattr(metering, "_first_round", first_round)
    return paused, go


@pytest.mark.parametrize("consume", [False, True], ids=["record", "consume"])
@pytest.mark.parametrize(
    "before, after",
    [
        (datetime(2026, 11, 14, 23, 59, 59, 999999, UTC), datetime(2026, 11, 15, tzinfo=UTC)),
        (datetime(2026, 11, 30, 23, 59, 59, 999999, UTC), datetime(2026, 12, 1, tzinfo=UTC)),
    ],
    ids=["day", "month"],
)
def test_a_write_of_the_last_microsecond_committed_after_the_next_days_keeps_its_day(
    engine, frozen_clock, monkeypatch, is_postgres, consume, before, after
):
    """Two workers: one write reads the clock at 23:59:59.999999 and commits after
    another's of 00:00:00 (the counter's day goes back). Each counts in its own day and
    period, and a cancel of each takes it off there."""
    _postgres_only(is_postgres, "a write takes the lock before it reads the clock")
    with Session(engine) as s:
        user = make_user(s, plan="pro")
    frozen_clock.set(before.replace(hour=12))
    with Session(engine) as s:
        metering.record(s, user.id, "tokens", 7, idempotency_key="noon")
    paused, go = _paused_after_lookup(monkeypatch)
    frozen_clock.set(before)
    late: list = []

    def write_late() -> None:
        with Session(engine) as s:
            w = prepare_write(user.id, "tokens", 3, "late", consume=consume)
            late.append(metering.write_one(s, w))

    t = threading.Thread(target=write_late)
    t.start()
    try:
        assert paused.wait(10)
        frozen_clock.set(after)
        with Session(engine) as s:
            w = prepare_write(user.id, "tokens", 5, "next", consume=consume)
            metering.write_one(s, w)
    finally:
        go.set()
        t.join(30)
    assert late and late[0].event.occurred_at == before
    with engine.connect() as conn:  # mid-month, the counter's day went back
        days = conn.exec_driver_sql("SELECT day FROM usage_counter ORDER BY period_start")
        expected = [before.date()] + ([after.date()] if after.day == 1 else [])
        assert [_date(d) for (d,) in days] == expected
    assert_exact(engine)
    frozen_clock.set(after.replace(minute=30))
    keys = ["next", "late", "noon"] if after.day != 1 else ["next"]
    with Session(engine) as s:
        for key in keys:
            assert not metering.cancel(s, user.id, key).already_canceled
            assert_exact(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT coalesce(sum(used), 0) FROM usage_counter"
            ).scalar() == (0 if after.day != 1 else 10)


class _Hammer:
    """`n` threads, each its own connection, consuming `quantity` of `metric` until
    stopped. Each attempt's outcome: (granted, the limit it was decided against, used,
    the era it began in, the era it ended in); `mark()` starts the next era."""

    def __init__(self, engine: sa.Engine, user_id: int, metric: str, quantity: int, n: int = 6):
        self.outcomes: list[tuple[bool, int, int, int, int]] = []
        self.era = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(engine, user_id, metric, quantity, i))
            for i in range(n)
        ]

    def _run(self, engine, user_id, metric, quantity, i) -> None:
        with Session(engine) as s:
            for k in range(100_000):
                if self._stop.is_set():
                    return
                began = self.era
                try:
                    r = metering.consume(s, user_id, metric, quantity, f"h{i}-{k}")
                    seen = (True, r.status.limit, r.status.used)
                except QuotaExceeded as err:
                    seen = (False, err.details["limit"], err.details["used"])
                with self._lock:
                    self.outcomes.append((*seen, began, self.era))

    def __enter__(self) -> _Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def mark(self) -> None:
        with self._lock:
            self.era += 1

    def within(self, era: int) -> list[tuple[bool, int, int]]:
        """The attempts that began and ended in `era`: (granted, limit, used)."""
        return [(g, lim, u) for g, lim, u, b, e in self.outcomes if b == e == era]

    def wait(self, era: int, count: int, granted: bool | None = None) -> None:
        """Until `count` attempts within `era` (granted or refused only, if given)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self._lock:
                seen = [g for g, *_ in self.within(era) if granted is None or g == granted]
            if len(seen) >= count:
                return
            time.sleep(0.005)
        raise AssertionError(f"fewer than {count} attempts within era {era}")


def test_an_override_lowered_below_used_then_raised_while_consumes_race(engine, frozen_clock):
    """Consumes race an admin lowering the limit under `used`, then raising it: none that
    begins after the lowering is granted, none passes the limit it was decided against,
    and after the raise they fill the quota to exactly its limit (never refused with room)."""
    with Session(engine) as s:
        user = make_user(s, plan="basic")
        quotas.set_override(s, user.id, "api_calls", 300, reason="race")

    def override(limit: int) -> None:
        with Session(engine) as s:
            quotas.set_override(s, user.id, "api_calls", limit, reason=f"to {limit}")

    with _Hammer(engine, user.id, "api_calls", 1) as h:
        h.wait(0, 20, granted=True)
        override(5)
        h.mark()  # 1: after the lowering
        h.wait(1, 30)
        h.mark()  # 2: the raise in flight
        override(300)
        h.mark()  # 3: after the raise
        h.wait(3, 10, granted=False)
    granted = [(lim, u) for g, lim, u, *_ in h.outcomes if g]
    assert len(granted) == 300 and max(u for _, u in granted) == 300
    assert all(u <= lim for lim, u in granted)
    assert all(not g and lim == 5 for g, lim, _ in h.within(1))
    assert all(lim == 300 and (g or u == 300) for g, lim, u in h.within(3))
    assert_exact(engine)


def test_a_plan_change_racing_consumes_applies_to_every_later_consume(engine, frozen_clock):
    """A downgrade's webhook (the quota refresh) commits while consumes run: every consume
    that begins after it is refused against the new plan's limit, none passes the limit
    it was decided against; after the upgrade back they are granted again."""
    with Session(engine) as s:
        user = make_user(s, plan="pro")  # 1,000,000 tokens
        make_subscription(s, user.id, plan="pro")
        metering.record(s, user.id, "tokens", 150_000)  # past Basic's 100,000

    def change(plan: str) -> None:
        with Session(engine) as s:
            sub = s.exec(select(Subscription).where(Subscription.user_id == user.id)).one()
            sub.plan = plan
            s.add(sub)
            assert stripe_sync.refresh_quotas(s, user.id) == plan
            s.commit()

    with _Hammer(engine, user.id, "tokens", 100) as h:
        h.wait(0, 20, granted=True)
        change("basic")
        h.mark()  # 1: after the downgrade
        h.wait(1, 30)
        h.mark()  # 2: the upgrade in flight
        change("pro")
        h.mark()  # 3: after the upgrade
        h.wait(3, 20)
    assert all(u <= lim for g, lim, u, *_ in h.outcomes if g)
    assert all(not g and lim == 100_000 for g, lim, _ in h.within(1))
    assert all(g and lim == 1_000_000 for g, lim, _ in h.within(3))
    assert_exact(engine)


def test_consumes_racing_a_billing_period_end_and_its_late_renewal_grant_each_period_once(
    engine, frozen_clock, monkeypatch
):
    """A plan that resets with its billing period: consumes run across the period's last
    microsecond, the gap before the renewal's webhook, and the webhook landing. Each
    period grants exactly its limit: the end starts the next period's quota once, and
    the renewal landing mid-flight hands out none."""
    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    plans.get_catalog.cache_clear()
    get_settings.cache_clear()
    start, end = datetime(2026, 11, 10, 8, tzinfo=UTC), datetime(2026, 12, 10, 8, tzinfo=UTC)
    after = datetime(2027, 1, 10, 8, tzinfo=UTC)
    with Session(engine) as s:
        user = make_user(s, plan="pro")
        fields = {"current_period_start": start, "current_period_end": end, "created_at": start}
        make_subscription(s, user.id, plan="pro", **fields)
        quotas.set_override(s, user.id, "api_calls", 50, reason="race")
    frozen_clock.set(end - timedelta(microseconds=1))
    with _Hammer(engine, user.id, "api_calls", 1) as h:
        h.wait(0, 5, granted=False)  # the first period is full
        h.mark()
        frozen_clock.set(end)  # over, the renewal not synced yet
        h.mark()  # 2: the gap
        h.wait(2, 5, granted=False)
        h.mark()
        with Session(engine) as s:  # the renewal's webhook lands
            sub = s.exec(select(Subscription).where(Subscription.user_id == user.id)).one()
            sub.current_period_start, sub.current_period_end = end, after
            s.add(sub)
            s.commit()
        h.mark()  # 4: after the renewal
        h.wait(4, 5)
    assert sum(g for g, *_ in h.outcomes) == 100
    assert all(not g and u == 50 for era in (0, 2, 4) for g, _, u in h.within(era)[-5:])
    assert all(not g for g, _, _ in h.within(4))  # the renewal gave no fresh quota
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT period_start, used FROM usage_counter ORDER BY period_start"
        ).all()
    assert [(_utc(p), u) for p, u in rows] == [(start, 50), (end, 50)]
    assert_exact(engine)


def test_cancels_of_consumes_racing_new_consumes_give_back_exactly_their_room(engine, frozen_clock):
    """A full quota; 20 of its consumes are cancelled while others consume: exactly the
    20 freed units are granted again, and once the cancels are in none is refused with
    room left."""
    with Session(engine) as s:
        user = make_user(s, plan="basic")
        quotas.set_override(s, user.id, "api_calls", 100, reason="race")
        for k in range(100):
            metering.consume(s, user.id, "api_calls", 1, idempotency_key=f"c{k}")

    def cancel(k: int) -> bool:
        with Session(engine) as s:
            return metering.cancel(s, user.id, f"c{k}").already_canceled

    with _Hammer(engine, user.id, "api_calls", 1) as h:
        h.wait(0, 10, granted=False)
        h.mark()
        with ThreadPoolExecutor(4) as pool:
            assert not any(pool.map(cancel, range(0, 100, 5)))
        h.mark()  # 2: every cancel in
        h.wait(2, 10, granted=False)
    assert sum(g for g, *_ in h.outcomes) == 20
    assert all(g or u == 100 for g, _, u in h.within(2))
    with engine.connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM usage_event WHERE canceled_at IS NOT NULL"
            ).scalar()
            == 20
        )
    assert_exact(engine)


def test_cancels_racing_the_batch_that_writes_their_key_take_it_off_once(
    engine, frozen_clock, monkeypatch
):
    """Cancels of a key sent while the batch storing it is still in flight: not found
    until it commits (nothing taken off), then exactly one takes it off."""
    with Session(engine) as s:
        user = make_user(s, plan="pro")
    paused, go = _paused_after_lookup(monkeypatch)
    events = [prepare_write(user.id, "tokens", q, f"k{q}") for q in (3, 5, 8)]

    def batch() -> None:
        with Session(engine) as s:
            metering_batch.record_batch(s, events)

    def cancel(_: int) -> str:
        with Session(engine) as s:
            for _ in range(2000):
                try:
                    r = metering.cancel(s, user.id, "k5")
                except UsageEventNotFound:
                    time.sleep(0.001)
                    continue
                return "again" if r.already_canceled else "took"
        return "never found"

    t = threading.Thread(target=batch)
    t.start()
    try:
        assert paused.wait(10)
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(cancel, n) for n in range(6)]
            time.sleep(0.2)  # the cancels are running (PostgreSQL: not finding the key)
            go.set()
            outcomes = sorted(f.result() for f in futures)
    finally:
        go.set()
        t.join(30)
    assert outcomes == ["again"] * 5 + ["took"]
    assert_exact(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT sum(used) FROM usage_counter").scalar() == 11


def test_overlapping_batches_and_consumes_of_the_same_keys_store_each_key_once(
    app_settings, engine, frozen_clock
):
    """Batches whose keys overlap each other's (and repeat within a batch) race consumes
    of the same keys on the same counter: each key is stored once, by whichever came
    first, the others answer duplicate; no consume passes the limit; the counter holds
    exactly the stored events. A batch (records: keys, then counters) and a consume
    (counter, then key) sharing a key can deadlock on PostgreSQL: the loser runs again
    (a batch was refused with a 503)."""
    with Session(engine) as s:
        user = make_user(s, plan="basic")
        quotas.set_override(s, user.id, "api_calls", 40, reason="race")
    keys = [f"k{n:02}" for n in range(60)]
    barrier = threading.Barrier(6)

    def batch(n: int) -> list[bool]:
        window = keys[n * 15 : n * 15 + 30]  # overlaps the next batch's by half
        events = [prepare_write(user.id, "api_calls", 1, k) for k in window + window[:5]]
        barrier.wait()
        with Session(engine) as s:
            return [r.duplicate for r in metering_batch.record_batch(s, events)]

    def consumes(n: int) -> list[tuple[bool, int] | None]:
        out: list[tuple[bool, int] | None] = []
        writer = UsageWriter()  # a process's of its own, as POST /consume goes
        barrier.wait()
        for k in keys[n::3]:
            try:
                r = writer.write(prepare_write(user.id, "api_calls", 1, k, consume=True))
                out.append((r.duplicate, r.status.used))
            except QuotaExceeded:
                out.append(None)
        return out

    with ThreadPoolExecutor(6) as pool:
        batches = [pool.submit(batch, n) for n in range(3)]
        consumers = [pool.submit(consumes, n) for n in range(3)]
        stored_by_batch = sum(d.count(False) for d in (f.result() for f in batches))
        decided = [o for f in consumers for o in f.result()]
    granted = [used for o in decided if o is not None and not o[0] for used in [o[1]]]
    assert all(used <= 40 for used in granted)
    assert stored_by_batch + len(granted) == 60  # each key stored by exactly one writer
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*), sum(quantity) FROM usage_event").one() == (
            60,
            60,
        )
    assert_exact(engine)


def test_a_direct_write_that_loses_a_lock_race_runs_again(engine, monkeypatch):
    """The CLI's and `usage_meter`'s path (metering.write_one): a deadlock PostgreSQL
    chose it to lose (a record and a consume sharing a key, as above) is run again, not
    raised; a write that keeps losing is raised after WRITE_RUNS. The database's answer
    is PostgreSQL's own error class, raised where the write's statements run."""
    import psycopg.errors

    with Session(engine) as s:
        user = make_user(s, plan="pro")
    real = metering.apply_writes
    losses = {"left": 1, "runs": 0}

    def losing(session, writes, **kw):
        losses["runs"] += 1
        if losses["left"] > 0:
            losses["left"] -= 1
            raise sa.exc.OperationalError("INSERT ...", {}, psycopg.errors.DeadlockDetected())
        return real(session, writes, **kw)

    monkeypatch.setattr(metering, "apply_writes", losing)
    with Session(engine) as s:
        out = metering.record(s, user.id, "tokens", 5, idempotency_key="lost-once")
    assert (out.duplicate, losses["runs"]) == (False, 2)

    losses.update(left=metering.WRITE_RUNS, runs=0)
    with Session(engine) as s, pytest.raises(sa.exc.OperationalError):
        metering.record(s, user.id, "tokens", 5, idempotency_key="lost-always")
    assert losses["runs"] == metering.WRITE_RUNS
    assert_exact(engine, user.id)
    with engine.connect() as conn:
        keys = conn.execute(
            sa.text("SELECT idempotency_key FROM usage_event WHERE user_id = :u"), {"u": user.id}
        ).scalars()
        assert sorted(keys) == ["lost-once"]
