"""GET /api/health is a readiness check: 200 only when the database answers and holds
this code's schema; otherwise 503 with the one line that says what to do. Redis down is
a 200 that says `degraded`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from billing_app.db import schema_head, schema_problem
from tests.conftest import _clear_caches, reachable_redis


def _set_revision(engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_health_names_a_database_behind_the_code(client, engine):
    head = schema_head()
    assert schema_problem(engine) is None
    assert client.get("/api/health").status_code == 200  # asked again on every call
    _set_revision(engine, "0007")
    try:
        r = client.get("/api/health")
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "service_unavailable"
        assert err["message"] == (
            f"The database schema is at 0007; this code needs {head}: run `billing-app db upgrade`."
        )
    finally:
        _set_revision(engine, head)
    assert client.get("/api/health").json() == {"status": "ok"}


def test_health_names_a_database_ahead_of_the_code(client, engine, caplog):
    """After `db upgrade`, a worker still on the old code told the operator to run
    `db upgrade` again: it says instead that its code is older, here and at its start."""
    import asyncio
    import threading

    from billing_app import billing_app as module

    head = schema_head()
    _set_revision(engine, "9999_from_newer_code")
    try:
        r = client.get("/api/health")
        assert r.status_code == 503, r.text
        expected = (
            "The database schema is at 9999_from_newer_code, a migration this code does not "
            f"have, numbered after its {head}: most likely newer code migrated it; run this "
            "worker on that code (`billing-app db upgrade` here cannot help)."
        )
        assert r.json()["error"]["message"] == expected
        # Its own thread: earlier tests (Playwright's sync API) may leave a loop running.
        start = threading.Thread(target=asyncio.run, args=(module.check_schema(),))
        start.start()
        start.join()
        assert [rec.getMessage() for rec in caplog.records if rec.name == "billing_app"] == [
            expected
        ]
    finally:
        _set_revision(engine, head)
    assert client.get("/api/health").json() == {"status": "ok"}


@pytest.mark.parametrize("revision", ["0012_other_branch", "0016b", "ae1027a6acf"])
def test_an_unknown_revision_not_numbered_after_ours_is_not_called_newer(client, engine, revision):
    """A revision this code does not know may be another branch's: only one numbered after
    this code's head is said to be (most likely) newer code's."""
    head = schema_head()
    _set_revision(engine, revision)
    try:
        r = client.get("/api/health")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["message"] == (
            f"The database schema is at {revision}, a revision this code does not know (not "
            f"numbered after its {head}: another branch's migration?); run this worker on the "
            "code that migrated the database, or with that code downgrade it to a revision "
            "this code has (`billing-app db upgrade` here cannot help)."
        )
        assert "newer" not in r.json()["error"]["message"]
    finally:
        _set_revision(engine, head)


def test_an_empty_database_has_no_schema_yet(tmp_path):
    empty = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert schema_problem(empty) == (
            f"The database has no schema yet: run `billing-app db upgrade` (to {schema_head()})."
        )
    finally:
        empty.dispose()


def test_health_says_503_when_the_database_goes_away_after_a_200(client, monkeypatch):
    from tests.conftest import _clear_caches

    assert client.get("/api/health").status_code == 200
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    _clear_caches()
    r = client.get("/api/health")
    assert r.status_code == 503, r.text


def test_requests_to_an_unmigrated_database_answer_503_naming_the_fix(
    empty_database_url, monkeypatch
):
    """Every route, not only /api/health: a login, a signup and a usage post against a
    database nobody migrated say what to do, where PostgreSQL's "relation does not exist"
    was a 500 (SQLite's "no such table" a 503 with no hint)."""
    from fastapi.testclient import TestClient

    from billing_app.api.app import create_api
    from billing_app.api.fast_lane import fast_lane
    from tests.api.conftest import ORIGIN
    from tests.conftest import _clear_caches

    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    _clear_caches()
    fix = f"The database has no schema yet: run `billing-app db upgrade` (to {schema_head()})."
    with TestClient(fast_lane(create_api()), base_url=ORIGIN) as api:
        answers = [
            api.post("/api/auth/login", json={"email": "a@example.com", "password": "x" * 12}),
            api.post("/api/auth/signup", json={"email": "a@example.com", "password": "x" * 12}),
            api.post(
                "/api/billing/usage",
                headers={"Authorization": "Bearer bk_live_nothing"},
                json={"metric": "tokens", "quantity": 1, "idempotency_key": "k1"},
            ),
            api.post(
                "/api/billing/quota/check",
                headers={"Authorization": "Bearer bk_live_nothing"},
                json={"metric": "tokens", "quantity": 1},
            ),
            api.get("/api/health"),
        ]
    for r in answers:
        assert r.status_code == 503, (r.request.url, r.text)
        assert r.json()["error"] == {"code": "service_unavailable", "message": fix}, r.text


def test_the_grace_task_says_the_fix_in_one_line_on_an_unmigrated_database(
    empty_database_url, monkeypatch, caplog
):
    import asyncio
    import logging

    from billing_app.services.stripe_sync import grace_period_task
    from tests.conftest import _clear_caches

    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    _clear_caches()

    async def one_pass() -> None:
        task = asyncio.create_task(grace_period_task(interval_seconds=60))
        while not caplog.records:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="billing_app"):
        asyncio.run(asyncio.wait_for(one_pass(), timeout=10))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.getMessage() == (
        "enforcing past_due grace periods: The database has no schema yet: "
        f"run `billing-app db upgrade` (to {schema_head()})."
    )


def test_openapi_declares_how_to_authenticate(client):
    """/api/docs gets its Authorize button and generated clients send the key: the API
    key (bearer) or the session cookie, on every operation that can answer 401."""
    doc = client.get("/api/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"]["type"] == "http" and schemes["apiKey"]["scheme"] == "bearer"
    assert schemes["sessionCookie"] == {**schemes["sessionCookie"], "in": "cookie"}
    either = [{"apiKey": []}, {"sessionCookie": []}]
    paths = doc["paths"]
    for path, method in [
        ("/api/billing/usage", "post"),
        ("/api/billing/usage/batch", "post"),
        ("/api/billing/quota/check", "post"),
        ("/api/billing/admin/users", "get"),
        ("/api/auth/me", "get"),
    ]:
        assert paths[path][method]["security"] == either, path
    for path, method in [
        ("/api/health", "get"),
        ("/api/auth/login", "post"),
        ("/api/auth/signup", "post"),
        ("/api/billing/webhook", "post"),
    ]:
        assert "security" not in paths[path][method], path


def test_redis_down_is_degraded_not_ok_nor_a_503(client, monkeypatch):
    """With REFLEX_REDIS_URL the pages keep their state in Redis: without it the login
    form never renders (2 workers, measured), yet the answer was a plain `ok`. Every
    worker shares that Redis, so a 503 would only take the JSON API down with the pages."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("REFLEX_REDIS_URL", f"redis://127.0.0.1:{closed}/0")
    _clear_caches()
    r = client.get("/api/health")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "degraded"
    assert r.json()["problem"].startswith("Redis (REFLEX_REDIS_URL) is unreachable")


def test_redis_up_is_ok(client, monkeypatch):
    url = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
    reachable_redis(url, "REDIS_TEST_URL").close()
    monkeypatch.setenv("REFLEX_REDIS_URL", url)
    _clear_caches()
    assert client.get("/api/health").json() == {"status": "ok"}


def _connections_received(r) -> int:
    return int(r.info("stats")["total_connections_received"])


def test_health_checks_reuse_one_redis_connection(client, monkeypatch):
    """A load balancer asks every few seconds, from every worker: each check opened (and
    closed) a connection of its own."""
    url = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
    probe = reachable_redis(url, "REDIS_TEST_URL")
    monkeypatch.setenv("REFLEX_REDIS_URL", url)
    _clear_caches()
    before = _connections_received(probe)
    for _ in range(20):
        assert client.get("/api/health").json() == {"status": "ok"}
    assert _connections_received(probe) - before <= 2  # the app's one, and a spare
    probe.close()


class _Relay:
    """A TCP relay to Redis that can be stopped and started again on the same port: a
    Redis that goes away and comes back, as the app sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener: socket.socket | None = None
        self.port = 0
        self.open: list[socket.socket] = []

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept; close alone doesn't
        self.listener.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            self.open += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)


def test_health_sees_redis_go_away_and_come_back(client, monkeypatch):
    """The kept connection must not hide either change: a Redis that went away is
    `degraded` at the next check, and one that came back is `ok` again."""
    url = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
    reachable_redis(url, "REDIS_TEST_URL").close()
    parts = urlsplit(url)
    relay = _Relay((parts.hostname or "127.0.0.1", parts.port or 6379))
    relay.start()
    monkeypatch.setenv("REFLEX_REDIS_URL", f"redis://127.0.0.1:{relay.port}{parts.path}")
    _clear_caches()
    try:
        assert client.get("/api/health").json() == {"status": "ok"}
        relay.stop()
        assert client.get("/api/health").json()["status"] == "degraded"
        relay.start()
        assert client.get("/api/health").json() == {"status": "ok"}
    finally:
        relay.stop()
