"""Group commit (services/usage_writer.py) and many writes in one transaction
(metering.apply_writes), on a real database (SQLite, or PostgreSQL with PG_TEST_URL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy.exc as sa_exc
from sqlmodel import Session

from billing_app.errors import IdempotencyConflict, QuotaExceeded, UserNotFound
from billing_app.services import metering, quotas
from billing_app.services.dto import RecordResult
from billing_app.services.metering import UsageWrite, prepare_write
from billing_app.services.usage_writer import UsageWriter
from tests.factories import make_user, usage_totals


def _state(engine, user_id: int, metric: str) -> tuple[int, int, int]:
    """(events, sum of their quantities, counter) for the user and metric."""
    with Session(engine) as s:
        return usage_totals(s, user_id, metric)


def test_one_transaction_gives_each_write_its_own_outcome(engine, frozen_clock):
    with Session(engine, expire_on_commit=False) as s:
        a = make_user(s, plan="basic")
        b = make_user(s)  # free: 100 API calls
        metering.record(s, a.id, "tokens", 7, idempotency_key="stored-before")
        writes = [
            prepare_write(a.id, "tokens", 5, "r1"),
            prepare_write(a.id, "tokens", 3, "r2"),
            prepare_write(a.id, "tokens", 5, "r1"),  # repeat inside the group
            prepare_write(a.id, "tokens", 7, "stored-before"),  # repeat of a stored event
            prepare_write(a.id, "tokens", 8, "stored-before"),  # same key, other quantity
            prepare_write(999_999, "tokens", 1, "nobody"),
            prepare_write(b.id, "api_calls", 60, "c1", consume=True),
            prepare_write(b.id, "api_calls", 60, "c2", consume=True),  # 120 > 100
            prepare_write(b.id, "api_calls", 40, "c3", consume=True),
            prepare_write(b.id, "api_calls", 60, "c2", consume=True),  # repeats a refusal
            prepare_write(b.id, "api_calls", 40, "c3", consume=True),  # repeats a grant
        ]
        out = metering.apply_writes(s, writes)
        s.commit()
    r1, r2, rep, old, conflict, nobody, c1, c2, c3, c2_again, c3_again = out
    assert isinstance(r1, RecordResult) and not r1.duplicate
    assert (r1.status.used, r2.status.used) == (12, 15)  # each sees the total up to itself
    assert rep.duplicate and rep.event.id == r1.event.id
    assert old.duplicate and old.event.quantity == 7
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(nobody, UserNotFound)
    assert c1.status.used == 60 and isinstance(c2, QuotaExceeded) and c3.status.used == 100
    assert isinstance(c2_again, QuotaExceeded)
    assert c3_again.duplicate and c3_again.event.id == c3.event.id
    assert _state(engine, a.id, "tokens") == (3, 15, 15)
    assert _state(engine, b.id, "api_calls") == (2, 100, 100)
    assert _state(engine, 999_999, "tokens") == (0, 0, 0)  # no event of the unknown user


def test_a_repeat_in_one_group_with_other_metadata_is_a_conflict(engine, frozen_clock):
    """Writes the group writer commits together: a key repeated within the group (its
    first write stored in this transaction) or stored before, records and consumes."""
    with Session(engine, expire_on_commit=False) as s:
        a = make_user(s, plan="basic")
        metering.record(s, a.id, "tokens", 2, idempotency_key="before", metadata={"v": 1})
        writes = [
            prepare_write(a.id, "tokens", 5, "r", {"v": 1}),
            prepare_write(a.id, "tokens", 5, "r", {"v": 2}),
            prepare_write(a.id, "tokens", 2, "before", {"v": 2}),
            prepare_write(a.id, "tokens", 2, "before", {"v": 1}),
        ]
        records = metering.apply_writes(s, writes)
        consumes = metering.apply_writes(s, [
            prepare_write(a.id, "api_calls", 1, "c", {"v": 1}, consume=True),
            prepare_write(a.id, "api_calls", 1, "c", None, consume=True),
        ])  # fmt: skip
        s.commit()
    new, other, stored_other, stored_same = records
    assert not new.duplicate and new.event.metadata == {"v": 1}
    assert isinstance(other, IdempotencyConflict) and isinstance(stored_other, IdempotencyConflict)
    assert stored_same.duplicate and stored_same.event.metadata == {"v": 1}
    assert not consumes[0].duplicate and isinstance(consumes[1], IdempotencyConflict)
    assert _state(engine, a.id, "tokens") == (2, 7, 7)
    assert _state(engine, a.id, "api_calls") == (1, 1, 1)


def test_each_new_event_gets_its_own_rows_id_and_counter_total(engine, frozen_clock, monkeypatch):
    """A new event's result carries its own row's id: when every event of the write is
    new (SQLite then works the ids out instead of reading them back) and when some key
    was stored before (read back). Each counter's total is read for its own metric and
    period, an event dated in the previous month included."""
    from datetime import timedelta

    from sqlmodel import select

    from billing_app.models import UsageEvent

    last_month = frozen_clock.now - timedelta(days=20)
    with Session(engine, expire_on_commit=False) as s:
        a, b = make_user(s, plan="basic"), make_user(s, plan="basic")
        metering.record(s, b.id, "tokens", 4, idempotency_key="before")
        all_new = [
            prepare_write(a.id, "tokens", 2, "n1"),
            prepare_write(b.id, "tokens", 3, "n2"),
            prepare_write(a.id, "api_calls", 5, "n3"),
            prepare_write(a.id, "tokens", 7, "n4", occurred_at=last_month),
            prepare_write(a.id, "tokens", 11, "n5"),
        ]
        some_stored = [
            prepare_write(b.id, "tokens", 4, "before"),
            prepare_write(b.id, "tokens", 6, "m1"),
            prepare_write(a.id, "tokens", 1, "m2"),
        ]
        with monkeypatch.context() as m:  # all new: no read-back on SQLite
            m.setattr(metering, "_SQ_NEW_EVENTS", "SELECT * FROM not_read_back WHERE ?")
            first = metering.apply_writes(s, all_new, commit=True)
        second = metering.apply_writes(s, some_stored, commit=True)
        rows = {e.id: e for e in s.exec(select(UsageEvent))}
    for w, r in zip(all_new + some_stored, first + second, strict=True):
        assert isinstance(r, RecordResult)
        row = rows[r.event.id]
        assert (row.user_id, row.idempotency_key, row.quantity) == (
            w.user_id, w.idempotency_key, w.quantity,
        )  # fmt: skip
    assert [r.status.used for r in first] == [2, 7, 5, 7, 13]
    assert first[3].status.period_start.month == last_month.month
    assert second[0].duplicate and [r.status.used for r in second] == [13, 13, 14]
    assert len(rows) == 8
    assert _state(engine, a.id, "tokens") == (4, 21, 21)  # n4's month counted apart
    assert _state(engine, b.id, "tokens") == (3, 13, 13)


def test_consumes_on_one_counter_are_decided_in_order(engine, frozen_clock):
    """Several consumes on one counter in a group (on PostgreSQL one statement that walks
    them in order from the locked row): each that still fits is granted, in order, even
    after a refusal; a new counter row (limited or not) takes its consumes too."""
    with Session(engine, expire_on_commit=False) as s:
        a = make_user(s)  # free: 100 API calls
        rich = make_user(s, plan="enterprise")  # no limits
        metering.consume(s, a.id, "api_calls", 90)  # the counter row exists: 10 left
        writes = [
            prepare_write(a.id, "api_calls", 4, "w1", {"step": 1}, consume=True),
            prepare_write(a.id, "api_calls", 7, "w2", consume=True),  # 11 > 10: refused
            prepare_write(a.id, "api_calls", 6, "w3", {"step": 3}, consume=True),  # fits
            prepare_write(a.id, "api_calls", 1, "w4", consume=True),  # 101: refused
        ] + [prepare_write(rich.id, "tokens", 5, f"n{i}", consume=True) for i in range(4)]
        out = metering.apply_writes(s, writes)  # rich has no counter row yet
        s.commit()
    w1, w2, w3, w4, *news = out
    assert (w1.status.used, w3.status.used) == (94, 100)
    assert isinstance(w2, QuotaExceeded) and isinstance(w4, QuotaExceeded)
    assert w1.event.metadata == {"step": 1} and w3.event.metadata == {"step": 3}
    assert [n.status.used for n in news] == [5, 10, 15, 20] and news[0].status.unlimited
    assert _state(engine, a.id, "api_calls") == (3, 100, 100)
    assert _state(engine, rich.id, "tokens") == (4, 20, 20)
    with Session(engine) as s:
        again = metering.apply_writes(
            s, [prepare_write(rich.id, "tokens", 1, f"m{i}", consume=True) for i in range(4)]
        )
        s.commit()
    assert [r.status.used for r in again] == [21, 22, 23, 24]
    assert _state(engine, rich.id, "tokens") == (8, 24, 24)


@pytest.mark.parametrize("runs", [1, 5], ids=["single-statements", "run-statement"])
def test_a_key_taken_meanwhile_gives_its_room_to_the_later_consumes(
    engine, frozen_clock, is_postgres, runs
):
    """Another transaction stores a consume's key while this group runs: that consume's
    bump is given back, and the later consumes on its counter that were refused because
    of it are decided again, so none is refused while there is room (on SQLite the other
    writer finishes before this group starts, with the same outcome)."""
    with Session(engine, expire_on_commit=False) as s:
        user = make_user(s)  # free: 100 API calls
        metering.consume(s, user.id, "api_calls", 90)  # 10 left
    other = Session(engine)  # stores the key "raced" (for tokens) and holds it
    metering.apply_writes(other, [prepare_write(user.id, "tokens", 6, "raced")])
    writes = [
        prepare_write(user.id, "api_calls", 6, "raced", consume=True),
        prepare_write(user.id, "api_calls", 5, "after", consume=True),  # 6 + 5 > 10
    ] + [prepare_write(user.id, "api_calls", 1, f"one{n}", consume=True) for n in range(runs)]
    out: list = []

    def run() -> None:
        with Session(engine) as s:
            out.extend(metering.apply_writes(s, writes))
            s.commit()

    group = threading.Thread(target=run)
    group.start()
    waiting = None
    try:
        if is_postgres:  # wait until its insert of "raced" waits for the other transaction
            with engine.connect() as conn:
                for _ in range(200):
                    waiting = conn.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    ).scalar()
                    if waiting:
                        break
                    group.join(0.05)
        group.join(0.5)
        alive = group.is_alive()
    finally:  # a failed check must not leave the group blocked behind `other`
        other.commit()
        other.close()
        group.join(30)
    assert waiting == (1 if is_postgres else None)
    assert alive
    raced, after, *ones = out
    assert isinstance(raced, IdempotencyConflict)  # the key is the tokens event's
    assert isinstance(after, RecordResult) and after.status.used <= 100
    assert all(isinstance(o, RecordResult) for o in ones)
    assert _state(engine, user.id, "api_calls") == (2 + runs, 95 + runs, 95 + runs)
    assert _state(engine, user.id, "tokens") == (1, 6, 6)


def test_commit_comes_before_the_results_are_built(engine, frozen_clock, monkeypatch):
    """With `commit`, the counter rows are committed (so no longer locked) before the
    results are built: another connection already sees the totals (before this change it
    saw nothing on PostgreSQL, and waited out the lock on SQLite). A `check` that raises
    still leaves nothing written."""
    with Session(engine, expire_on_commit=False) as s:
        user = make_user(s, plan="basic")
    seen: list[tuple[int, int, int]] = []
    build = metering._result

    def spy(*args, **kwargs):  # what another connection sees while a result is built
        seen.append(_state(engine, user.id, "tokens"))
        return build(*args, **kwargs)

    monkeypatch.setattr(metering, "_result", spy)
    writes = [prepare_write(user.id, "tokens", n, f"e{n}") for n in (2, 3)]
    with Session(engine) as s:
        out = metering.apply_writes(s, writes, commit=True)
        s.commit()
    assert [r.status.used for r in out] == [2, 5]
    assert seen == [(2, 5, 5)] * 2

    def refuse(errors):
        raise IdempotencyConflict("refused by the check")

    with Session(engine) as s, pytest.raises(IdempotencyConflict):
        try:
            metering.apply_writes(s, [prepare_write(user.id, "tokens", 9, "e9")], check=refuse,
                                  commit=True)  # fmt: skip
        finally:
            s.rollback()
    assert _state(engine, user.id, "tokens") == (2, 5, 5)


def test_group_commit_under_concurrency_is_exact(app_settings, engine):
    """2,000 consumes from 32 threads through one writer against 500 remaining: exactly
    500 granted, and the writer really grouped them."""
    with Session(engine) as s:
        user = make_user(s, plan="basic")
        quotas.set_override(s, user.id, "api_calls", 500, reason="group commit test")
    writer = UsageWriter()
    barrier = threading.Barrier(32)

    def client(n: int) -> list[str]:
        barrier.wait()
        futures = [
            writer.submit(prepare_write(user.id, "api_calls", 1, f"g{n}-{i}", consume=True))
            for i in range(62)
        ]
        futures.append(
            writer.submit(prepare_write(user.id, "api_calls", 1, f"g{n}-0", consume=True))
        )
        out = []
        for f in futures:
            try:
                out.append("dup" if f.result(timeout=60).duplicate else "ok")
            except QuotaExceeded:
                out.append("refused")
        return out

    with ThreadPoolExecutor(32) as pool:
        outcomes = [o for part in pool.map(client, range(32)) for o in part]
    print(f"granted {outcomes.count('ok')}, refused {outcomes.count('refused')}, "
          f"groups {writer.groups} for {writer.writes} writes")  # fmt: skip
    assert outcomes.count("ok") == 500
    assert _state(engine, user.id, "api_calls") == (500, 500, 500)
    assert writer.groups < writer.writes  # grouped: fewer transactions than writes


@pytest.mark.parametrize("consume", [False, True], ids=["record", "consume"])
def test_a_write_the_database_refuses_fails_alone(app_settings, engine, is_postgres, consume):
    """Also for PostgreSQL's consumes, which run on the driver's connection in one
    pipeline: its errors come out as SQLAlchemy's (a 422 for the bad write), not raw."""
    with Session(engine) as s:
        user = make_user(s)
    good = [prepare_write(user.id, "tokens", 1, f"ok{i}", consume=consume) for i in range(20)]
    # Refused by the database, not by validation (both built directly, past prepare_write,
    # which refuses them): the CHECK (quantity > 0) constraint; on PostgreSQL also a NUL
    # in jsonb metadata.
    zero = UsageWrite(user.id, "tokens", 0, "zero", None, None, consume=consume)
    bad = [(zero, sa_exc.IntegrityError)]
    if is_postgres:
        nul = UsageWrite(
            user.id, "tokens", 1, "nul", {"x": "nul \u0000 here"}, None, consume=consume
        )
        bad.append((nul, sa_exc.DataError))
    for n, (write, error) in enumerate(bad):
        writer = UsageWriter()
        batch = good[10 * n : 10 * n + 10]
        with writer.paused():
            futures = [writer.submit(w) for w in batch[:5]]
            bad_future = writer.submit(write)
            futures += [writer.submit(w) for w in batch[5:]]
        assert all(not f.result(timeout=30).duplicate for f in futures)
        with pytest.raises(error):
            bad_future.result(timeout=30)
        assert writer.groups == 1 + 11  # the failed group, then each write alone
    stored = 10 * len(bad)
    assert _state(engine, user.id, "tokens") == (stored, stored, stored)


def test_a_caller_that_goes_away_does_not_stop_its_write_or_the_group(app_settings, engine):
    with Session(engine) as s:
        user = make_user(s)
    writer = UsageWriter()
    with writer.paused():
        gone = writer.submit(prepare_write(user.id, "tokens", 2, "gone"))
        others = [writer.submit(prepare_write(user.id, "tokens", 1, f"o{i}")) for i in range(5)]
        assert not gone.cancel()  # e.g. asyncio.wrap_future of a cancelled request
    assert all(not f.result(timeout=30).duplicate for f in others)
    assert not gone.result(timeout=30).duplicate
    assert _state(engine, user.id, "tokens") == (6, 7, 7)


def test_two_processes_writers_racing_for_counters_lose_no_write(app_settings, engine):
    """Two writers (as two workers have) send groups touching the same two counters, one
    as a run of consumes on one counter. Both lock the counters in the same order, so
    neither is ever a deadlock's victim: no write fails or runs twice, and the counters
    stay exact (on SQLite the write lock orders the groups)."""
    with Session(engine) as s:
        user = make_user(s, plan="enterprise")
    first, second = UsageWriter(), UsageWriter()
    rounds, failed = 60, []
    start = threading.Barrier(2)

    def drive(name: str, writer: UsageWriter, metrics: list[str]) -> None:
        for i in range(rounds):
            start.wait()
            with writer.paused():  # the round's writes go out as one group
                futures = [
                    writer.submit(prepare_write(user.id, m, 1, f"{name}{i}-{j}", consume=True))
                    for j, m in enumerate(metrics)
                ]
            for f in futures:
                try:
                    f.result(60)
                except Exception as err:  # noqa: BLE001  (counted and shown below)
                    failed.append(f"{type(err).__name__}: {err}".splitlines()[0])

    shapes = {"a": ["api_calls"] + ["tokens"] * 4, "b": ["api_calls", "tokens"]}
    threads = [
        threading.Thread(target=drive, args=(n, w, shapes[n]))
        for n, w in (("a", first), ("b", second))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"[writers] failed={len(failed)} groups={first.groups}+{second.groups}")
    assert failed == []
    assert (first.groups, second.groups) == (rounds, rounds)  # no group was retried
    with Session(engine) as s:
        assert usage_totals(s, user.id, "api_calls") == (2 * rounds,) * 3
        assert usage_totals(s, user.id, "tokens") == (5 * rounds,) * 3


def test_a_row_held_elsewhere_fails_its_write_alone_and_soon(app_settings, engine, is_postgres):
    """A counter row another transaction holds (a psql session, a slow job) fails its own
    write after usage_writer.LOCK_TIMEOUT with a 503 cause, and the writes grouped with it go on.
    The writer used to wait for as long as the row was held: every user's writes in the
    worker stalled behind one row."""
    import time

    import sqlalchemy as sa

    from billing_app.db import unavailable

    if not is_postgres:
        pytest.skip("row locks another session holds are PostgreSQL's (PostgreSQL leg)")
    with Session(engine) as s:
        a, b = make_user(s), make_user(s)
    writer = UsageWriter()
    for user in (a, b):  # their counters exist
        writer.submit(prepare_write(user.id, "tokens", 1, "first")).result(timeout=30)
    holder = engine.connect()
    try:
        holder.execute(
            sa.text("SELECT 1 FROM usage_counter WHERE user_id = :u FOR UPDATE"), {"u": a.id}
        )
        started = time.monotonic()
        with writer.paused():  # one group: a's write, then b's
            held = writer.submit(prepare_write(a.id, "tokens", 1, "held"))
            free = writer.submit(prepare_write(b.id, "tokens", 1, "free"))
        assert not free.result(timeout=8).duplicate
        with pytest.raises(sa_exc.OperationalError) as caught:
            held.result(timeout=8)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert caught.value.orig.sqlstate == "55P03"  # type: ignore[union-attr]
    assert unavailable(caught.value) is not None  # the API answers 503, Retry-After
    assert elapsed < 7, elapsed  # two lock timeouts (the group's, then its own), no retries
    retried = writer.submit(prepare_write(a.id, "tokens", 1, "held")).result(timeout=30)
    assert not retried.duplicate  # nothing of the failed write was stored
    assert _state(engine, a.id, "tokens") == (2, 2, 2)
    assert _state(engine, b.id, "tokens") == (2, 2, 2)
