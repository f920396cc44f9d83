"""The per-address limits (failed sign-ins, sign-ups) count an IPv6 client by its /64: a
home or cloud host is given a whole /64, so counting exact addresses gave it endless
addresses and no limit. Over real HTTP behind a trusted proxy, which names the address."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select

from billing_app.db import session_scope
from billing_app.models import AuthSession, LoginAttempt, SignupAttempt
from billing_app.services import auth
from tests.api.conftest import PASSWORD
from tests.api.test_proxies import serve  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:0DB8:0001:0002:0000:0000:0000:0001", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff::/64"),
        ("testclient", "testclient"),
        ("x" * 100, "x" * 64),
        ("", None),
        (None, None),
    ],
)
def test_the_limits_key(ip: str | None, key: str | None) -> None:
    assert auth.limit_key(ip) == key


def _via(url: str):
    client = httpx.Client(base_url=url, timeout=30)

    def post(path: str, body: dict[str, str], ip: str) -> int:
        headers = {"X-Forwarded-For": ip, "X-Forwarded-Proto": "https"}
        return client.post(path, json=body, headers=headers).status_code

    return client, post


def test_signups_from_one_ipv6_64_share_the_limit_and_another_64_does_not(serve, monkeypatch):  # noqa: F811
    monkeypatch.setattr(auth, "MAX_SIGNUPS_PER_IP", 3)
    client, post = _via(serve("127.0.0.1"))
    with client:
        one_64 = [
            post("/api/auth/signup", {"email": f"a{i}@example.com", "password": PASSWORD}, ip)
            for i, ip in enumerate(
                ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9", "2001:db8:1:2::4"]
            )
        ]
        other_64 = post(
            "/api/auth/signup", {"email": "b@example.com", "password": PASSWORD}, "2001:db8:1:3::1"
        )
    assert one_64 == [201, 201, 201, 429]
    assert other_64 == 201
    with session_scope() as s:
        assert set(s.exec(select(SignupAttempt.ip)).all()) == {
            "2001:db8:1:2::/64",
            "2001:db8:1:3::/64",
        }
        # A session still records the exact address it came from.
        assert "2001:db8:1:2:ffff::9" in s.exec(select(AuthSession.ip)).all()


def test_failed_signins_from_one_ipv6_64_share_the_limit_and_another_64_does_not(
    serve,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setattr(auth, "MAX_FAILS_PER_IP", 3)
    client, post = _via(serve("127.0.0.1"))

    def fail(i: int, ip: str) -> int:  # a new account each time: the account limit stays out
        return post("/api/auth/login", {"email": f"s{i}@example.com", "password": "wrong"}, ip)

    with client:
        one_64 = [fail(i, f"2001:db8:a:b::{i + 1:x}") for i in range(4)]
        other_64 = fail(10, "2001:db8:a:c::1")
    assert one_64 == [401, 401, 401, 429]
    assert other_64 == 401
    with session_scope() as s:
        assert sorted(s.exec(select(LoginAttempt.ip)).all()) == ["2001:db8:a:b::/64"] * 3 + [
            "2001:db8:a:c::/64"
        ]


def test_an_ipv4_mapped_address_is_its_ipv4_and_ipv4_stays_exact(serve, monkeypatch):  # noqa: F811
    monkeypatch.setattr(auth, "MAX_SIGNUPS_PER_IP", 2)
    client, post = _via(serve("127.0.0.1"))

    def signup(i: int, ip: str) -> int:
        return post("/api/auth/signup", {"email": f"m{i}@example.com", "password": PASSWORD}, ip)

    with client:
        statuses = [
            signup(0, "203.0.113.5"),
            signup(1, "::ffff:203.0.113.5"),
            signup(2, "::ffff:cb00:7105"),  # the same address, written in hex
            signup(3, "203.0.113.6"),  # its neighbour has its own limit, as before
        ]
    assert statuses == [201, 201, 429, 201]
    with session_scope() as s:
        assert set(s.exec(select(SignupAttempt.ip)).all()) == {"203.0.113.5", "203.0.113.6"}
