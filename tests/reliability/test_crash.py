"""Crash: the production server is killed with SIGKILL twice while 32 clients send 20,000
usage events with retries; every acknowledged event is stored, and after the retries
every event is stored exactly once (counter = sum of events = what the clients sent)."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from bench import seed
from bench.servers import app_server
from tests.reliability.conftest import report
from tests.reliability.http import RETRYABLE, Client

pytestmark = pytest.mark.reliability

EVENTS = 20_000
CLIENTS = 32
KILL_AT = (4_000, 11_000)  # acknowledged events at which the server is killed


def test_kill_9_twice_loses_nothing_and_counts_once(scratch_url):
    eng = seed.engine_for(scratch_url)
    users = seed.seed_users(eng, 4, plan="pro", prefix="crash")
    headers = {"Authorization": f"Bearer {seed.service_key(scratch_url)}"}
    sent = {i: (users[i % 4], i % 5 + 1) for i in range(EVENTS)}  # key -> (user, quantity)
    acked: dict[int, int] = {}  # key -> status of the 2xx that acknowledged it
    retries = 0
    server_errors = 0
    srv = app_server(scratch_url, log=None).start()
    restarts: list[float] = []

    async def killer() -> None:
        loop = asyncio.get_running_loop()
        for at in KILL_AT:
            while len(acked) < at:
                await asyncio.sleep(0.01)
            srv.kill()  # SIGKILL to the whole process group, mid-run
            t = time.monotonic()
            await loop.run_in_executor(None, srv.start)  # same port, same command
            restarts.append(time.monotonic() - t)

    async def client(queue: asyncio.Queue[int]) -> None:
        nonlocal retries, server_errors
        c = Client(srv.port, headers)
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            user, qty = sent[i]
            body = {
                "user_id": user,
                "metric": "tokens",
                "quantity": qty,
                "idempotency_key": f"crash-{i}",
            }
            deadline = time.monotonic() + 120
            while True:
                try:
                    status, data = await c.post("/api/billing/usage", body)
                except RETRYABLE:
                    status, data = None, None
                if status in (200, 201):
                    acked[i] = status
                    break
                if status is not None and status < 500:
                    raise AssertionError(f"event {i}: unexpected {status} {data}")
                if status is not None:
                    server_errors += 1
                retries += 1
                assert time.monotonic() < deadline, f"event {i} never acknowledged"
                await asyncio.sleep(0.05)
        c.close()

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(EVENTS):
            queue.put_nowait(i)
        await asyncio.gather(killer(), *(client(queue) for _ in range(CLIENTS)))

    try:
        asyncio.run(main())
    finally:
        srv.stop()
    with eng.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT idempotency_key, user_id, quantity FROM usage_event")
        ).all()
        counter = conn.execute(sa.text("SELECT coalesce(sum(used), 0) FROM usage_counter")).scalar()
        daily = conn.execute(
            sa.text(
                "SELECT (SELECT coalesce(sum(quantity), 0) FROM usage_daily)"
                " + (SELECT coalesce(sum(day_used), 0) FROM usage_counter)"
            )
        ).scalar()
    stored = {}
    for key, user, qty in rows:
        stored[int(key.removeprefix("crash-"))] = (user, qty)
    lost_acked = sum(1 for i in acked if i not in stored)
    duplicated = len(rows) - len(stored)
    wrong = sum(1 for i, v in stored.items() if sent.get(i) != v)
    expected_sum = sum(q for _, q in sent.values())
    event_sum = sum(q for _, q in stored.values())
    report(
        "crash",
        sent=EVENTS,
        acknowledged=len(acked),
        stored=len(rows),
        lost_acknowledged=lost_acked,
        lost=EVENTS - len(stored),
        duplicated=duplicated,
        wrong=wrong,
        counter_drift=int(counter) - event_sum,
        daily_drift=int(daily) - event_sum,
        sum_drift=event_sum - expected_sum,
        duplicates_answered=sum(1 for s in acked.values() if s == 200),
        retries=retries,
        server_errors=server_errors,
        kills=len(restarts),
    )
    print(f"restart times: {[round(r, 1) for r in restarts]} s")
    assert len(restarts) == 2
    assert len(acked) == EVENTS
    assert lost_acked == 0 and duplicated == 0 and wrong == 0
    assert len(stored) == EVENTS and event_sum == expected_sum and int(counter) == event_sum
    assert int(daily) == event_sum
