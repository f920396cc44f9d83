"""A transaction that loses to another one (a deadlock, a serialization failure, a lock
held past its timeout, SQLite's write lock held past its wait) is no outage: the 503
says the database is busy and asks for a retry after 1 s, not that the database is
unavailable with 5 s. Real conflicts, on both databases."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from billing_app import db
from billing_app.db import BUSY_MESSAGE, UNAVAILABLE_MESSAGE, unavailable
from billing_app.services import usage_writer
from tests.conftest import _clear_caches
from tests.factories import make_user


def _deadlock(engine: sa.Engine, ids: tuple[int, int]) -> sa.exc.DBAPIError:
    """Two transactions each lock one user's row, then ask for the other's: PostgreSQL
    ends one of them with a deadlock. Returns the victim's error."""
    both_hold = threading.Barrier(2, timeout=10)
    errors: list[sa.exc.DBAPIError] = []

    def lock(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(sa.text('SELECT 1 FROM "user" WHERE id = :i FOR UPDATE'), {"i": first})
                both_hold.wait()
                conn.execute(
                    sa.text('SELECT 1 FROM "user" WHERE id = :i FOR UPDATE'), {"i": second}
                )
        except sa.exc.DBAPIError as err:
            errors.append(err)

    threads = [
        threading.Thread(target=lock, args=ids),
        threading.Thread(target=lock, args=ids[::-1]),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(errors) == 1, errors  # one victim, the other went through
    return errors[0]


def test_a_deadlock_is_busy_not_an_outage(engine, is_postgres):
    if not is_postgres:
        pytest.skip("deadlock detection is PostgreSQL's (PostgreSQL leg)")
    with Session(engine) as s:
        a, b = make_user(s), make_user(s)
    err = _deadlock(engine, (a.id, b.id))
    assert err.orig.sqlstate == "40P01"  # type: ignore[union-attr]
    down = unavailable(err)
    assert down is not None and down.status_code == 503
    assert down.message == BUSY_MESSAGE
    assert down.details["retry_after"] == 1


def test_an_outage_still_says_unavailable(monkeypatch):
    """The other side of the rule: a database nobody answers for is the outage message."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    _clear_caches()
    try:
        with pytest.raises(sa.exc.OperationalError) as caught:
            with db.get_engine().connect():
                pass
    finally:
        monkeypatch.undo()
        _clear_caches()
    down = unavailable(caught.value)
    assert down is not None and down.message == UNAVAILABLE_MESSAGE
    assert "retry_after" not in down.details


def test_a_write_meeting_a_held_lock_answers_busy_with_a_short_retry(
    actors, engine, is_postgres, monkeypatch
):
    """A usage write whose counter row (PostgreSQL) or the database's write lock
    (SQLite) another transaction holds answers 503 "busy", Retry-After: 1, and stores
    nothing; once the holder is gone the same write goes through."""
    svc = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 5, "idempotency_key": "k1"}
    first = {**body, "idempotency_key": "k0"}
    assert svc.post("/api/billing/usage", json=first).status_code in (200, 201)
    if is_postgres:
        holder = engine.connect()
        holder.execute(
            sa.text("SELECT 1 FROM usage_counter WHERE user_id = :u FOR UPDATE"),
            {"u": actors.a.id},
        )
    else:
        monkeypatch.setattr(db, "SQLITE_LOCK_TIMEOUT", 0.5)
        holder = engine.connect()
        holder.begin()  # BEGIN IMMEDIATE: the write lock, in-process and in the file
    try:
        started = time.monotonic()
        r = svc.post("/api/billing/usage", json=body)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == {"code": "service_unavailable", "message": BUSY_MESSAGE}
    assert r.headers["retry-after"] == "1"
    # PostgreSQL: the group's lock timeout, then the write's own (usage_writer's rule).
    assert elapsed < (2 * int(usage_writer.LOCK_TIMEOUT.rstrip("s")) + 3 if is_postgres else 5)
    again = svc.post("/api/billing/usage", json=body)
    assert again.status_code in (200, 201), again.text
    assert again.json()["duplicate"] is False  # nothing of the refused write was stored
    assert again.json()["used"] == 10
