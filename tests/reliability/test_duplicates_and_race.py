"""Duplicates and the quota race on the service layer, on the leg's database (SQLite or
PostgreSQL): each under a minute, so they run in the normal suite. The same promises over
HTTP against the production server are in test_http_faults.py (`make reliability`)."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import Session, func, select

from billing_app.errors import QuotaExceeded
from billing_app.models import UsageCounter, UsageDaily, UsageEvent
from billing_app.services import metering, quotas
from tests.factories import make_user
from tests.reliability.conftest import report

THREADS = 32  # each its own connection; PostgreSQL here is shared with other suites


def _totals(engine, user_ids: list[int]) -> tuple[int, int, int]:
    """Events not cancelled, their sum, the counters' sum; the days' rows must add up to
    the counters."""
    with Session(engine) as s:
        count, total = s.exec(
            select(func.count(), func.coalesce(func.sum(UsageEvent.quantity), 0)).where(
                UsageEvent.user_id.in_(user_ids),  # type: ignore[attr-defined]
                UsageEvent.canceled_at.is_(None),  # type: ignore[union-attr]
            )
        ).one()
        counter = s.exec(
            select(func.coalesce(func.sum(UsageCounter.used), 0)).where(
                UsageCounter.user_id.in_(user_ids)  # type: ignore[attr-defined]
            )
        ).one()
        daily = (
            s.exec(
                select(func.coalesce(func.sum(UsageDaily.quantity), 0)).where(
                    UsageDaily.user_id.in_(user_ids)  # type: ignore[attr-defined]
                )
            ).one()
            + s.exec(
                select(func.coalesce(func.sum(UsageCounter.day_used), 0)).where(
                    UsageCounter.user_id.in_(user_ids)  # type: ignore[attr-defined]
                )
            ).one()
        )
    assert daily == counter, f"usage_daily {daily} != counters {counter}"
    return int(count), int(total), int(counter)


def test_10000_posts_of_1000_keys_store_exactly_1000_events(engine):
    with Session(engine) as s:
        users = [make_user(s, plan="pro").id for _ in range(4)]
    # Key k always carries the same (user, quantity): quantity k % 7 + 1.
    sends = [k for k in range(1000) for _ in range(10)]
    random.Random(42).shuffle(sends)
    fresh = 0
    lock = threading.Lock()
    local = threading.local()

    def send(k: int) -> None:
        nonlocal fresh
        if not hasattr(local, "s"):
            local.s = Session(engine, expire_on_commit=False)
        r = metering.record(local.s, users[k % 4], "tokens", k % 7 + 1, idempotency_key=f"dup-{k}")
        if not r.duplicate:
            with lock:
                fresh += 1

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, sends))
    count, total, counter = _totals(engine, users)
    expected = sum(k % 7 + 1 for k in range(1000))
    report(
        "duplicates",
        posts=len(sends),
        events=count,
        acknowledged_new=fresh,
        duplicated=count - 1000,
        lost=1000 - count,
        counter_drift=counter - total,
        sum_drift=total - expected,
    )
    assert (count, fresh) == (1000, 1000)
    assert total == expected and counter == total


def test_10000_concurrent_consumes_against_limit_1000_grant_exactly_1000(engine):
    with Session(engine) as s:
        user = make_user(s, plan="basic")
        quotas.set_override(s, user.id, "api_calls", 1000, reason="quota race test")
    barrier = threading.Barrier(THREADS)
    granted = refused = 0
    lock = threading.Lock()

    def worker(n: int) -> None:
        nonlocal granted, refused
        ok = no = 0
        with Session(engine, expire_on_commit=False) as s:
            barrier.wait()
            for i in range(n, 10_000, THREADS):
                try:
                    metering.consume(s, user.id, "api_calls", 1, idempotency_key=f"race-{i}")
                    ok += 1
                except QuotaExceeded:
                    no += 1
        with lock:
            granted += ok
            refused += no

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    count, total, counter = _totals(engine, [user.id])
    report(
        "quota race",
        attempts=granted + refused,
        granted=granted,
        refused=refused,
        overshoot=max(0, granted - 1000),
        undershoot=max(0, 1000 - granted),
        events=count,
        counter=counter,
    )
    assert granted + refused == 10_000
    assert granted == 1000 and count == 1000 and total == 1000 and counter == 1000
