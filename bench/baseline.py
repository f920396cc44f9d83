"""The bare baseline: a minimal ASGI app on the same server (granian) and database.

It parses the same JSON and does one raw insert into `usage_event` (a batch body:
one executemany in one transaction), with no auth, validation or counters. Blocking
DB work runs on a thread pool with one raw DB-API connection per thread, capped at
20 threads = the app's write pool ceiling (2 x db_pool_size 10).

    BENCH_DATABASE_URL=... granian --interface asgi bench.baseline:app
Paths: GET /health; POST /check (one indexed SELECT instead of an insert); any other
POST inserts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

URL = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
THREADS = 20
_pool = ThreadPoolExecutor(THREADS, thread_name_prefix="baseline")
_local = threading.local()
# SQLite has one writer at a time; queue writers on a lock instead of letting them
# sleep in SQLite's busy handler (which is what a bare, sane implementation does).
_write_lock = threading.Lock()
IS_SQLITE = URL.startswith("sqlite")
INLINE = os.environ.get("BASELINE_INLINE") == "1"  # experiment: DB call on the event loop

INSERT = (
    "INSERT INTO usage_event (user_id, metric, quantity, occurred_at, recorded_at, "
    "idempotency_key) VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
).format(p="?" if IS_SQLITE else "%s")
SELECT = ("SELECT used FROM usage_counter WHERE user_id = {p} AND metric = {p} LIMIT 1").format(
    p="?" if IS_SQLITE else "%s"
)


def _conn() -> Any:
    c = getattr(_local, "conn", None)
    if c is None:
        if IS_SQLITE:
            c = sqlite3.connect(URL.split("///", 1)[1], isolation_level=None, timeout=30)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
        else:
            import psycopg

            c = psycopg.connect(URL.replace("postgresql+psycopg://", "postgresql://"))
            c.autocommit = True
        _local.conn = c
    return c


def _now() -> Any:
    now = datetime.now(UTC)
    # SQLAlchemy stores SQLite datetimes as naive ISO text; match it.
    return now.replace(tzinfo=None).isoformat(sep=" ") if IS_SQLITE else now


def _row(e: dict[str, Any]) -> tuple:
    now = _now()
    key = e.get("idempotency_key") or uuid.uuid4().hex
    return (e["user_id"], e["metric"], e["quantity"], now, now, key)


def _insert(body: dict[str, Any]) -> int:
    c = _conn()
    if "events" in body:
        rows = [_row(e) for e in body["events"]]
        if IS_SQLITE:
            with _write_lock:
                c.execute("BEGIN IMMEDIATE")
                c.executemany(INSERT, rows)
                c.execute("COMMIT")
        else:
            with c.transaction(), c.cursor() as cur:
                cur.executemany(INSERT, rows)
        return len(rows)
    if IS_SQLITE:
        with _write_lock:
            c.execute(INSERT, _row(body))
    else:
        c.execute(INSERT, _row(body))
    return 1


def _select(body: dict[str, Any]) -> int:
    row = _conn().execute(SELECT, (body["user_id"], body["metric"])).fetchone()
    return row[0] if row else 0


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] == "GET":
        await _send_json(send, 200, {"status": "ok"})
        return
    body = json.loads(await _read_body(receive))
    loop = asyncio.get_running_loop()
    if scope["path"].endswith("/check"):
        used = await loop.run_in_executor(_pool, _select, body)
        await _send_json(send, 200, {"used": used})
        return
    if INLINE:
        n = _insert(body)
    else:
        n = await loop.run_in_executor(_pool, _insert, body)
    await _send_json(send, 201, {"stored": n})
