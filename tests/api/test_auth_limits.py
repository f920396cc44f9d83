"""Failed sign-ins are limited per account and per IP however many arrive at once, and a
password check holds no database lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlmodel import func, select

from billing_app.db import session_scope
from billing_app.errors import RateLimited, Unauthorized
from billing_app.models.tables import AuthSession, LoginAttempt
from billing_app.services import auth, passwords
from tests.api.conftest import PASSWORD

N = 20


def _count_password_checks(monkeypatch) -> list[str]:
    """Every password check, each taking 100 ms (production argon2 costs about that)."""
    calls: list[str] = []
    real = passwords.verify_password

    def verify(stored, password):
        calls.append(password)
        time.sleep(0.1)
        return real(stored, password)

    monkeypatch.setattr(passwords, "verify_password", verify)
    return calls


def _parallel_failed_logins(pairs: list[tuple[str, str]]) -> list[str]:
    barrier = threading.Barrier(len(pairs))

    def attempt(email: str, ip: str) -> str:
        barrier.wait()
        with session_scope() as s:
            try:
                auth.login(s, email, "wrong password", ip)
            except RateLimited:
                return "429"
            except Unauthorized:
                return "401"
        return "200"

    with ThreadPoolExecutor(len(pairs)) as pool:
        return list(pool.map(lambda p: attempt(*p), pairs))


def _attempts(**where) -> int:
    with session_scope() as s:
        q = select(func.count()).select_from(LoginAttempt)
        for k, v in where.items():
            q = q.where(getattr(LoginAttempt, k) == v)
        return s.exec(q).one()


# ---------------------------------------------------------------- parallel attempts


def test_parallel_failed_logins_get_at_most_the_accounts_limit_of_checks(monkeypatch):
    with session_scope() as s:
        auth.signup(s, "victim@example.com", PASSWORD)
    checks = _count_password_checks(monkeypatch)
    results = _parallel_failed_logins([("victim@example.com", f"10.0.0.{i}") for i in range(N)])
    assert len(checks) <= auth.MAX_FAILS_PER_ACCOUNT, (len(checks), results)
    assert _attempts(email="victim@example.com") <= auth.MAX_FAILS_PER_ACCOUNT


def test_parallel_failed_logins_get_at_most_the_ips_limit_of_checks(monkeypatch):
    monkeypatch.setattr(auth, "MAX_FAILS_PER_IP", 5)
    checks = _count_password_checks(monkeypatch)
    results = _parallel_failed_logins([(f"u{i}@example.com", "203.0.113.9") for i in range(N)])
    assert len(checks) <= auth.MAX_FAILS_PER_IP, (len(checks), results)
    assert _attempts(ip="203.0.113.9") <= auth.MAX_FAILS_PER_IP


def test_parallel_failed_logins_over_http_get_at_most_5_guesses(live_server, monkeypatch):
    with session_scope() as s:
        auth.signup(s, "victim@example.com", PASSWORD)
    _count_password_checks(monkeypatch)
    barrier = threading.Barrier(N)

    def attempt(i: int) -> int:
        with httpx.Client(base_url=live_server.url, timeout=30) as c:
            barrier.wait()
            body = {"email": "victim@example.com", "password": f"guess-{i}"}
            return c.post("/api/auth/login", json=body).status_code

    with ThreadPoolExecutor(N) as pool:
        statuses = list(pool.map(attempt, range(N)))
    assert statuses.count(401) <= auth.MAX_FAILS_PER_ACCOUNT, statuses


# ---------------------------------------------------------------- the rest


def test_password_login_records_the_user_agent(client):
    """As signup and SSO do (a password sign-in dropped it)."""
    with session_scope() as s:
        auth.signup(s, "ua@example.com", PASSWORD)
    r = client.post(
        "/api/auth/login",
        json={"email": "ua@example.com", "password": PASSWORD},
        headers={"User-Agent": "Firefox/140"},
    )
    assert r.status_code == 200
    with session_scope() as s:
        assert s.exec(select(AuthSession.user_agent)).all() == ["Firefox/140"]


def test_a_password_check_does_not_hold_the_database_write_lock(monkeypatch, actors):
    """On SQLite (the default DATABASE_URL) the one write lock was held through the argon2
    check (login's count began BEGIN IMMEDIATE): every other write waited."""
    entered = threading.Event()
    real = passwords.verify_password

    def slow_verify(stored, password):
        entered.set()
        time.sleep(0.5)
        return real(stored, password)

    monkeypatch.setattr(passwords, "verify_password", slow_verify)

    def login() -> None:
        with session_scope() as s, pytest.raises(Unauthorized):
            auth.login(s, "alice@example.com", "wrong password", "203.0.113.1")

    t = threading.Thread(target=login)
    t.start()
    assert entered.wait(5)
    started = time.monotonic()
    with session_scope() as s:
        auth.new_session(s, actors.b.id)  # any other write: usage, webhooks, sign-ins
    waited = time.monotonic() - started
    t.join()
    assert waited < 0.25, f"an unrelated write waited {waited:.2f} s for a password check"


def test_the_lock_out_ends_a_window_after_the_failures_and_a_success_clears_them(
    frozen_clock, monkeypatch
):
    """Refused attempts are not counted (they would stretch the lock-out for as long as
    someone keeps trying), and a success clears the account's failures."""
    from datetime import UTC, datetime

    frozen_clock.set(datetime(2026, 11, 1, 12, tzinfo=UTC))
    with session_scope() as s:
        auth.signup(s, "owner@example.com", PASSWORD)

    def login(password: str) -> str:
        with session_scope() as s:
            try:
                auth.login(s, "owner@example.com", password, "198.51.100.1")
            except RateLimited:
                return "429"
            except Unauthorized:
                return "401"
        return "200"

    assert [login("wrong") for _ in range(7)] == ["401"] * 5 + ["429"] * 2
    assert login(PASSWORD) == "429"
    assert _attempts(email="owner@example.com") == 5
    frozen_clock.set(datetime(2026, 11, 1, 12, 16, tzinfo=UTC))  # the window has passed
    assert login(PASSWORD) == "200"
    assert _attempts(email="owner@example.com") == 0
    assert [login("wrong") for _ in range(5)] == ["401"] * 5
