"""Sign-ups are limited per client address, before any password is hashed: anyone could
otherwise send them without end, each a full-cost hash and a new user row."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import func, select

from billing_app.db import session_scope
from billing_app.errors import RateLimited
from billing_app.models import SignupAttempt, User
from billing_app.services import auth, passwords
from tests.api.conftest import PASSWORD
from tests.api.test_proxies import serve  # noqa: F401  (fixture)

MAX = auth.MAX_SIGNUPS_PER_IP


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = passwords.hash_password

    def hash_password(password: str) -> str:
        calls.append(password)
        return real(password)

    monkeypatch.setattr(passwords, "hash_password", hash_password)
    return calls


def _users() -> int:
    with session_scope() as s:
        return s.exec(select(func.count()).select_from(User)).one()


def _body(i: int) -> dict[str, str]:
    return {"email": f"new{i}@example.com", "password": PASSWORD}


def test_past_the_limit_a_signup_is_429_over_http_and_hashes_nothing(live_server, monkeypatch):
    hashes = _count_hashes(monkeypatch)
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        statuses = [c.post("/api/auth/signup", json=_body(i)).status_code for i in range(MAX)]
        refused = c.post("/api/auth/signup", json=_body(MAX))
    assert statuses == [201] * MAX
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == str(int(auth.SIGNUP_WINDOW.total_seconds()))
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["message"] == auth.SIGNUP_LIMITED
    assert "set-cookie" not in refused.headers
    assert len(hashes) == MAX and _users() == MAX
    with session_scope() as s:  # the refused one is not counted
        assert s.exec(select(func.count()).select_from(SignupAttempt)).one() == MAX


def test_signups_sent_at_once_get_at_most_the_limit_of_hashes(live_server, monkeypatch):
    hashes = _count_hashes(monkeypatch)
    n = 2 * MAX
    barrier = threading.Barrier(n)

    def attempt(i: int) -> int:
        with httpx.Client(base_url=live_server.url, timeout=30) as c:
            barrier.wait()
            return c.post("/api/auth/signup", json=_body(i)).status_code

    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(attempt, range(n)))
    assert set(statuses) == {201, 429}, statuses
    assert statuses.count(201) <= MAX and len(hashes) <= MAX, statuses
    assert _users() == statuses.count(201)


def test_the_signup_page_comes_back_with_its_own_message(client, monkeypatch):
    """The page's form posts to the same route; refused, it lands on /signup with the
    code the page shows the limit's text for (not sign-in's)."""
    monkeypatch.setattr(auth, "MAX_SIGNUPS_PER_IP", 1)
    form = {"email": "a@example.com", "password": PASSWORD, "next": "/billing"}
    r = client.post("/api/auth/signup", data=form, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/billing")
    r = client.post(
        "/api/auth/signup", data={**form, "email": "b@example.com"}, follow_redirects=False
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/signup?error=signup_limited&next=%2Fbilling"
    from billing_app.states import auth_pages

    assert auth_pages.error_message("signup_limited") == auth.SIGNUP_LIMITED


def test_the_limit_ends_a_window_after_the_signups(client, frozen_clock):
    """Counted in the app's clock; refused sign-ups do not stretch the wait."""
    frozen_clock.set(datetime(2026, 11, 1, 12, tzinfo=UTC))

    def signup(i: int) -> int:
        return client.post("/api/auth/signup", json=_body(i)).status_code

    assert [signup(i) for i in range(MAX + 1)] == [201] * MAX + [429]
    frozen_clock.set(datetime(2026, 11, 1, 12, 9, 59, tzinfo=UTC))
    assert signup(100) == 429
    frozen_clock.set(datetime(2026, 11, 1, 12, 10, 1, tzinfo=UTC))  # the window has passed
    assert [signup(200 + i) for i in range(MAX + 1)] == [201] * MAX + [429]
    with session_scope() as s:  # the spent ones were cleared on the way
        assert s.exec(select(func.count()).select_from(SignupAttempt)).one() == MAX


def test_each_address_has_its_own_limit_and_the_cli_none(engine):
    def signup(email: str, ip: str | None) -> str:
        with session_scope() as s:
            try:
                auth.signup(s, email, PASSWORD, ip=ip)
            except RateLimited:
                return "429"
        return "201"

    assert [signup(f"a{i}@example.com", "203.0.113.1") for i in range(MAX + 1)][-2:] == [
        "201",
        "429",
    ]
    assert signup("b@example.com", "203.0.113.2") == "201"
    # An operator's or the CLI's sign-ups name no address: never limited.
    assert {signup(f"c{i}@example.com", None) for i in range(MAX + 1)} == {"201"}


def test_behind_a_trusted_proxy_each_client_has_its_own_signup_limit(serve):  # noqa: F811
    url = serve("127.0.0.1")
    with httpx.Client(base_url=url, timeout=30) as proxy:
        statuses = [
            proxy.post(
                "/api/auth/signup",
                json=_body(i),
                headers={"X-Forwarded-For": f"203.0.113.{i}", "X-Forwarded-Proto": "https"},
            ).status_code
            for i in range(MAX + 1)
        ]
    assert statuses == [201] * (MAX + 1)  # was one address, the proxy's: the last a 429
    with session_scope() as s:
        ips = set(s.exec(select(SignupAttempt.ip)).all())
    assert ips == {f"203.0.113.{i}" for i in range(MAX + 1)}


def test_without_trusted_proxies_a_client_cannot_choose_its_signup_address(serve):  # noqa: F811
    url = serve("")
    with httpx.Client(base_url=url, timeout=30) as c:
        statuses = [
            c.post(
                "/api/auth/signup", json=_body(i), headers={"X-Forwarded-For": f"203.0.113.{i}"}
            ).status_code
            for i in range(MAX + 1)
        ]
    assert statuses == [201] * MAX + [429]
