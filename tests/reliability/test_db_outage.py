"""Database outage: PostgreSQL stops for ~10 s under load. Requests fail fast with 503 and
a clear error (no 500, no hang), the server recovers by itself when PostgreSQL returns,
and no acknowledged event is lost. PostgreSQL is always restarted (finally), and the
outage is kept short: other suites share this server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench import seed
from bench.servers import app_server
from tests.reliability.conftest import database_kind, report
from tests.reliability.http import RETRYABLE, Client

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(database_kind() != "postgresql", reason="PostgreSQL leg only"),
]

OUTAGE_S = 10.0
CLIENTS = 16
FAIL_FAST_S = 5.0  # every answer during the outage comes at least this fast


def _cluster() -> tuple[str, str]:
    version = (
        os.environ.get("PG_CLUSTER_VERSION")
        or sorted(os.listdir("/etc/postgresql"), key=lambda v: int(v) if v.isdigit() else 0)[-1]
    )
    return version, os.environ.get("PG_CLUSTER_NAME", "main")


def _pg(action: str) -> None:
    version, name = _cluster()
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action]
    if action == "stop":
        cmd += ["-m", "fast"]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)


def _pg_up() -> bool:
    version, name = _cluster()
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    return any(
        line.split()[:2] == [version, name] and "online" in line for line in out.splitlines()
    )


@pytest.mark.skipif(not Path("/etc/postgresql").is_dir(), reason="no local PostgreSQL cluster")
def test_postgres_outage_gives_fast_503s_and_recovers(scratch_url):
    eng = seed.engine_for(scratch_url)
    users = seed.seed_users(eng, 4, plan="pro", prefix="outage")
    headers = {"Authorization": f"Bearer {seed.service_key(scratch_url)}"}
    eng.dispose()
    srv = app_server(scratch_url).start()
    acked: dict[str, int] = {}
    during: dict[str, int] = {}  # status -> count while PostgreSQL was down
    bad_bodies: list[str] = []
    slowest = 0.0
    state = {"phase": "before", "down_at": 0.0, "up_at": 0.0, "recovered_at": 0.0}
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal slowest
        c = Client(srv.port, headers, timeout=30)
        i = 0
        while not stop.is_set():
            key = f"out-{n}-{i}"
            body = {
                "user_id": users[n % 4],
                "metric": "tokens",
                "quantity": 1,
                "idempotency_key": key,
            }
            while not stop.is_set():  # a real service retries the same key until stored
                t = time.monotonic()
                try:
                    status, data = await c.post("/api/billing/usage", body)
                except RETRYABLE as e:
                    status, data = None, type(e).__name__
                took = time.monotonic() - t
                if state["phase"] == "down":
                    slowest = max(slowest, took)
                    k = str(status)
                    during[k] = during.get(k, 0) + 1
                    if status == 503 and "database" not in str(data).lower():
                        bad_bodies.append(str(data)[:200])
                if status in (200, 201):
                    acked[key] = 1
                    if state["phase"] == "after" and not state["recovered_at"]:
                        state["recovered_at"] = time.monotonic()
                    break
                assert status in (None, 503), f"unexpected {status}: {data}"
                await asyncio.sleep(0.1)
            i += 1
        c.close()

    async def outage() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3)
        try:
            state["phase"] = "down"
            state["down_at"] = time.monotonic()
            await loop.run_in_executor(None, _pg, "stop")
            await asyncio.sleep(OUTAGE_S)
        finally:
            await loop.run_in_executor(None, _pg, "start")
            state["up_at"] = time.monotonic()
            state["phase"] = "after"
        deadline = time.monotonic() + 30
        while not state["recovered_at"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # steady state again
        stop.set()

    async def main() -> None:
        await asyncio.gather(outage(), *(client(n) for n in range(CLIENTS)))

    try:
        asyncio.run(main())
    finally:
        if not _pg_up():  # belt and braces: never leave the shared server down
            _pg("start")
        srv.stop()
    eng = seed.engine_for(scratch_url)
    with eng.connect() as conn:
        keys = {k for (k,) in conn.execute(sa.text("SELECT idempotency_key FROM usage_event"))}
        count = conn.execute(sa.text("SELECT count(*) FROM usage_event")).scalar()
    totals = seed.totals(eng)
    eng.dispose()
    lost = sum(1 for k in acked if k not in keys)
    recovery = state["recovered_at"] - state["up_at"] if state["recovered_at"] else -1
    report(
        "db outage",
        acknowledged=len(acked),
        stored=int(count),
        lost_acknowledged=lost,
        duplicated=int(count) - len(keys),
        answers_500=during.get("500", 0),
        answers_503=during.get("503", 0),
        connection_errors=during.get("None", 0),
        slowest_ms_during_outage=int(slowest * 1000),
        recovery_ms=int(recovery * 1000),
        counter_drift=totals["counter_sum"] - totals["event_sum"],
        daily_drift=totals["daily_sum"] - totals["event_sum"],
    )
    print(f"statuses during outage: {during}")
    assert lost == 0 and count == len(keys)
    assert totals["counter_sum"] == totals["event_sum"] == totals["daily_sum"]
    assert during.get("503", 0) > 0, "no request saw the outage"
    assert set(during) <= {"503", "200", "201"}, during  # 2xx: answered before it noticed
    assert not bad_bodies, bad_bodies[:3]
    assert slowest < FAIL_FAST_S, f"a request took {slowest:.1f}s during the outage"
    assert state["recovered_at"], "the service did not recover by itself"
