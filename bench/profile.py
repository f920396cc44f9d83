"""Profile the hot paths with pyinstrument, through the real ASGI app in-process.

FastAPI runs `def` routes and dependencies on a thread pool, which a sampling profiler
started in the main thread does not see; for profiling only, the thread-pool hop is
replaced by a direct call, so the whole request (Reflex's wrapper, FastAPI, auth, the
service, the ORM) shows up in one tree. Wall times are therefore without thread hops.

    python -m bench.profile [sqlite|postgresql] [scenario ...]   # writes bench/profiles/
Scenarios: usage, consume, check, batch, summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import seed, servers

OUT = Path(__file__).parent / "profiles"


def _inline_threadpool() -> None:
    import anyio.to_thread

    async def run_sync(func: Any, *args: Any, **_kw: Any) -> Any:
        return func(*args)

    anyio.to_thread.run_sync = run_sync  # type: ignore[assignment]
    # The fast lane's own hops (batches, key lookups, reads) likewise.
    from billing_app.api import fast_lane

    async def direct(fn: Any, *args: Any) -> Any:
        return fn(*args)

    fast_lane._blocking = direct  # type: ignore[assignment]
    fast_lane._reads.run = direct  # type: ignore[method-assign]


def _asgi_app() -> Any:
    """The object granian serves: Reflex's factory output (FastAPI in front of Reflex)."""
    os.environ.setdefault("REFLEX_ENV_MODE", "prod")
    os.chdir(servers.ROOT)
    os.environ["PATH"] = f"{servers.ROOT / 'tools/bun/node_modules/.bin'}:{os.environ['PATH']}"
    os.environ.setdefault("REFLEX_USE_SYSTEM_BUN", "1")
    from billing_app.billing_app import app

    return app()


async def _drive(app: Any, scenario: str, ids: list[int], key: str, n: int) -> float:
    import httpx

    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def one(i: int) -> int:
            uid = ids[i % len(ids)]
            if scenario == "usage":
                body = {
                    "user_id": uid,
                    "metric": "tokens",
                    "quantity": 1,
                    "idempotency_key": f"p{time.time_ns()}-{i}",
                }
                r = await client.post("/api/billing/usage", json=body, headers=headers)
            elif scenario == "consume":
                body = {
                    "user_id": ids[0],
                    "metric": "tokens",
                    "quantity": 1,
                    "idempotency_key": f"c{time.time_ns()}-{i}",
                }
                r = await client.post("/api/billing/usage/consume", json=body, headers=headers)
            elif scenario == "check":
                body = {"user_id": uid, "metric": "tokens", "quantity": 1}
                r = await client.post("/api/billing/quota/check", json=body, headers=headers)
            elif scenario == "batch":
                events = [
                    {
                        "user_id": ids[j % len(ids)],
                        "metric": "tokens",
                        "quantity": 1,
                        "idempotency_key": f"b{time.time_ns()}-{i}-{j}",
                    }
                    for j in range(1000)
                ]
                r = await client.post(
                    "/api/billing/usage/batch", json={"events": events}, headers=headers
                )
            else:
                r = await client.get("/api/billing/usage", headers=headers)
            return r.status_code

        for i in range(min(n, 20)):  # warm caches (key cache, compiled statements)
            await one(i)
        t = time.perf_counter()
        statuses = [await one(i) for i in range(n)]
        per = (time.perf_counter() - t) / n
        bad = [s for s in statuses if s >= 300]
        if bad:
            raise SystemExit(f"{scenario}: unexpected statuses {bad[:5]}")
        return per


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    scenarios = sys.argv[2:] or ["usage", "consume", "check", "batch", "summary"]
    from pyinstrument import Profiler

    OUT.mkdir(exist_ok=True)
    with servers.scratch_database(kind) as url:
        os.environ["DATABASE_URL"] = url
        eng = seed.engine_for(url)
        ids = seed.seed_users(eng, 100, plan="enterprise")
        _inline_threadpool()
        app = _asgi_app()
        summary: dict[str, float] = {}
        for scenario in scenarios:
            key = seed.user_key(url, ids[0]) if scenario == "summary" else seed.service_key(url)
            n = 20 if scenario == "batch" else 400
            asyncio.run(_drive(app, scenario, ids, key, 10))
            prof = Profiler(interval=0.001, async_mode="enabled")
            prof.start()
            per = asyncio.run(_drive(app, scenario, ids, key, n))
            prof.stop()
            summary[scenario] = round(per * 1000, 3)
            text = prof.output_text(unicode=False, color=False, show_all=False)
            (OUT / f"{kind}-{scenario}.txt").write_text(text)
            print(f"{kind} {scenario}: {per * 1000:.3f} ms/request (profiled, one at a time)")
        (OUT / f"{kind}-summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
