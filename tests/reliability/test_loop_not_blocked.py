"""A page's event handler waiting on the database does not hold up the worker's event loop,
which also answers the JSON API: through the production server (granian, one worker, its
event socket on), on the leg's database. The test holds the lock an admin's quota
override needs (PostgreSQL: the quota row, as another admin's save would; SQLite: the
write lock) while the admin saves; quota checks on the same worker must answer promptly
meanwhile, and the save completes once the lock is let go. A few seconds: normal suite."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session

from bench import seed
from bench.loop_block import SAVED, EventSocket
from bench.servers import Server, app_server
from billing_app.services import auth

PROMPT = 3.0  # seconds: a quota check answers in milliseconds; a blocked loop, never


@pytest.fixture(scope="module")
def served(scratch_url: str) -> Iterator[tuple[Server, dict[str, Any]]]:
    eng = seed.engine_for(scratch_url)
    customer = seed.seed_users(eng, 1, plan="pro", prefix="locked")[0]
    admin = seed.seed_users(eng, 1, plan="free", prefix="admin", role="admin")[0]
    with Session(eng) as s:
        cookie = f"{auth.SESSION_COOKIE}={auth.new_session(s, admin)}"
    eng.dispose()
    key = seed.service_key(scratch_url, name="loop-test")
    with app_server(scratch_url, websockets=True) as srv:
        yield srv, {"customer": customer, "cookie": cookie, "key": key}


class _Lock:
    """Another transaction holding what the customer's tokens override needs."""

    def __init__(self, url: str, user_id: int) -> None:
        self.url, self.user_id = url, user_id
        self.conn: Any = None

    def __enter__(self) -> _Lock:
        if self.url.startswith("sqlite"):
            self.conn = sqlite3.connect(make_url(self.url).database, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            self.conn = psycopg.connect(self.url.replace("+psycopg", ""))
            self.conn.execute(
                "SELECT 1 FROM quota WHERE user_id = %s AND metric = 'tokens' FOR UPDATE",
                (self.user_id,),
            )
        return self

    def waiters(self) -> int | None:
        """PostgreSQL: sessions of this database waiting for a lock; SQLite: None (its
        waiters are not visible from outside the process)."""
        if self.url.startswith("sqlite"):
            return None
        eng = sa.create_engine(self.url)
        try:
            with eng.connect() as c:
                return c.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
        finally:
            eng.dispose()

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.conn, sqlite3.Connection):
            self.conn.execute("COMMIT")  # opened in autocommit mode, BEGIN by hand
        else:
            self.conn.commit()
        self.conn.close()


def _limit(url: str, user_id: int) -> int:
    eng = seed.engine_for(url)
    try:
        with eng.connect() as c:
            return c.execute(
                sa.text("SELECT \"limit\" FROM quota WHERE user_id = :u AND metric = 'tokens'"),
                {"u": user_id},
            ).scalar_one()
    finally:
        eng.dispose()


def test_api_answers_while_an_admin_save_waits_for_a_lock(
    served: tuple[Server, dict[str, Any]],
) -> None:
    srv, ctx = served
    check = {"user_id": ctx["customer"], "metric": "tokens", "quantity": 1}
    api = httpx.Client(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {ctx['key']}"}, timeout=PROMPT
    )
    sock = EventSocket(srv.port, ctx["cookie"])
    try:
        sock.send("open_user", {"user_id": ctx["customer"]})
        sock.send("set_override_limit", {"value": "777"})
        sock.send("set_override_reason", {"value": "pilot"})
        assert sock.wait_for(lambda m: '"override_reason_rx_state_":"pilot"' in m, 30)
        # The key verified now: within its cache's 5 s no check needs a write (on SQLite
        # the held write lock would stop that, whatever the loop does).
        assert api.post("/api/billing/quota/check", json=check).status_code == 200

        with _Lock(srv.database_url, ctx["customer"]) as lock:
            # The save runs right behind the reason's event: once that one's answer is
            # here, the save is under way and meets the lock.
            sock.send("set_override_reason", {"value": "pilot customer"})
            sock.send("save_override")
            assert sock.wait_for(lambda m: '"override_reason_rx_state_":"pilot customer"' in m)
            if lock.waiters() is not None:  # PostgreSQL: see the save wait for the row
                deadline = time.monotonic() + 30
                while not lock.waiters() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert lock.waiters(), "the save never waited for the row lock"
            for _ in range(3):
                t0 = time.monotonic()
                try:
                    r = api.post("/api/billing/quota/check", json=check)
                except httpx.TimeoutException:
                    pytest.fail(f"a quota check got no answer in {PROMPT} s: the loop is held")
                assert r.status_code == 200, r.text
                assert time.monotonic() - t0 < PROMPT
            # The save was still waiting for the lock all along.
            assert not sock.wait_for(lambda m: SAVED in m, timeout=0.2)
        assert sock.wait_for(lambda m: SAVED in m, timeout=30)
        assert _limit(srv.database_url, ctx["customer"]) == 777
    finally:
        sock.close()
        api.close()
