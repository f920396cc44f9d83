"""Behind a reverse proxy (TRUSTED_PROXIES): the login limit counts the client's address
from X-Forwarded-For, and URLs follow X-Forwarded-Proto. Served over real HTTP the way
production serves it: granian applies no proxy headers, so uvicorn's are turned off
(by default it believes X-Forwarded-For from 127.0.0.1, which would hide the defect)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from sqlmodel import select

from billing_app.api.app import create_api
from billing_app.api.fast_lane import fast_lane
from billing_app.api.proxies import behind_proxies
from billing_app.db import session_scope
from billing_app.models.tables import LoginAttempt
from billing_app.services import auth
from billing_app.settings import ConfigError, load_settings
from tests.api.conftest import PASSWORD, LiveServer
from tests.api.test_oidc import provider  # noqa: F401  (fixture)
from tests.conftest import _clear_caches


@pytest.fixture
def serve(monkeypatch) -> Iterator[Callable[[str], str]]:
    """serve(TRUSTED_PROXIES): the production composition behind `behind_proxies` over
    real HTTP; its URL."""
    monkeypatch.setattr(uvicorn, "Config", functools.partial(uvicorn.Config, proxy_headers=False))
    servers: list[LiveServer] = []

    def start(proxies: str) -> str:
        monkeypatch.setenv("TRUSTED_PROXIES", proxies)
        _clear_caches()
        servers.append(LiveServer(behind_proxies(fast_lane(create_api()))))
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


def _strangers_then_owner(url: str) -> tuple[list[int], int]:
    """MAX_FAILS_PER_IP strangers fail through the proxy, then the owner signs in."""
    with session_scope() as s:
        auth.signup(s, "owner@example.com", PASSWORD)
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as proxy:
        for i in range(auth.MAX_FAILS_PER_IP):
            fwd = {"X-Forwarded-For": f"203.0.113.{i}", "X-Forwarded-Proto": "https"}
            body = {"email": f"stranger{i}@example.com", "password": "wrong password"}
            statuses.append(proxy.post("/api/auth/login", json=body, headers=fwd).status_code)
        fwd = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        body = {"email": "owner@example.com", "password": PASSWORD}
        owner = proxy.post("/api/auth/login", json=body, headers=fwd).status_code
    return statuses, owner


def _recorded_ips() -> set[str | None]:
    with session_scope() as s:
        return set(s.exec(select(LoginAttempt.ip)).all())


def test_behind_a_trusted_proxy_each_client_has_its_own_limit(serve):
    statuses, owner = _strangers_then_owner(serve("127.0.0.1"))
    assert statuses == [401] * auth.MAX_FAILS_PER_IP
    assert owner == 200  # was 429: everyone shared the proxy's address
    assert _recorded_ips() == {f"203.0.113.{i}" for i in range(auth.MAX_FAILS_PER_IP)}


def test_a_network_of_proxies_is_trusted_too(serve):
    statuses, owner = _strangers_then_owner(serve("10.0.0.0/8, 127.0.0.1/8"))
    assert owner == 200
    assert "127.0.0.1" not in _recorded_ips()


def test_without_trusted_proxies_a_client_cannot_choose_its_address(serve):
    """X-Forwarded-For from anyone is ignored: otherwise each attempt could name a new
    address and never reach the per-IP limit."""
    statuses, owner = _strangers_then_owner(serve(""))
    assert owner == 429
    assert _recorded_ips() == {"127.0.0.1"}


def test_behind_a_tls_proxy_the_sso_callback_is_https(monkeypatch, provider, serve):  # noqa: F811
    monkeypatch.setenv("APP_URL", "https://billing.example.com")
    monkeypatch.setenv("API_URL", "https://billing.example.com")
    url = serve("127.0.0.1")
    r = httpx.get(
        url + "/api/auth/oidc/login",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"},
        follow_redirects=False,
    )
    assert r.status_code == 302, r.text
    redirect_uri = parse_qs(urlsplit(r.headers["location"]).query)["redirect_uri"][0]
    assert redirect_uri.startswith("https://"), redirect_uri


def test_a_malformed_trusted_proxy_stops_the_start():
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES 'nginx' is not an IP address"):
        load_settings(trusted_proxies="10.0.0.0/8,nginx")
    assert load_settings(trusted_proxies=" 10.1.2.3/8 , ::1").trusted_proxy_list == [
        "10.0.0.0/8",
        "::1",
    ]
