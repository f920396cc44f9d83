"""Two `billing_session` cookies in one request (a parent-domain cookie another host of
the site set, or an old one with another path): the API and the pages act for the same
user, the first cookie that is a live session, and sign-out revokes both."""

from __future__ import annotations

import pytest

from billing_app.db import session_scope
from billing_app.services import auth
from billing_app.states.session import user_from_cookie
from tests.api.conftest import ORIGIN, PASSWORD


def _tokens(actors) -> tuple[str, str]:
    with session_scope() as s:
        return auth.new_session(s, actors.a.id), auth.new_session(s, actors.b.id)


def _me(actors, cookie: str):
    return actors.anon().get("/api/auth/me", headers={"Cookie": cookie})


def test_the_api_and_the_pages_read_the_same_cookie_of_two(actors):
    token_a, token_b = _tokens(actors)
    header = f"{auth.SESSION_COOKIE}={token_a}; {auth.SESSION_COOKIE}={token_b}"
    assert _me(actors, header).json()["email"] == actors.a.email  # was bob's (the last)
    assert user_from_cookie(header).email == actors.a.email


def test_a_stale_first_cookie_is_passed_over_by_both(actors):
    _, token_b = _tokens(actors)
    header = f"{auth.SESSION_COOKIE}=stale-revoked-token; {auth.SESSION_COOKIE}={token_b}"
    assert _me(actors, header).json()["email"] == actors.b.email
    assert user_from_cookie(header).email == actors.b.email  # was None: a sign-in loop


def test_two_cookie_headers_are_read_as_one(actors):
    """HTTP/2 may send cookies as separate headers; Starlette's request.cookies reads the
    first header only."""
    token_a, _ = _tokens(actors)
    r = actors.anon().get(
        "/api/auth/me",
        headers=[("Cookie", "theme=dark"), ("Cookie", f"{auth.SESSION_COOKIE}={token_a}")],
    )
    assert r.status_code == 200, r.text
    assert r.json()["email"] == actors.a.email


def test_sign_out_revokes_every_session_cookie_sent(actors):
    token_a, token_b = _tokens(actors)
    header = f"{auth.SESSION_COOKIE}={token_a}; {auth.SESSION_COOKIE}={token_b}"
    r = actors.anon().post("/api/auth/logout", headers={"Cookie": header, "Origin": ORIGIN})
    assert r.status_code == 200, r.text
    assert user_from_cookie(header) is None  # the pages showed alice still
    for token in (token_a, token_b):
        assert _me(actors, f"{auth.SESSION_COOKIE}={token}").status_code == 401


def test_over_https_the_cookie_is_host_only_and_a_plain_named_one_is_ignored(actors, monkeypatch):
    """Served over HTTPS, the cookie is `__Host-billing_session`, which browsers take only
    from this host (Secure, Path=/, no Domain): a sibling subdomain cannot toss one in.
    A `billing_session` cookie (which any host of the site could set) is not read."""
    from starlette.testclient import TestClient

    from billing_app.settings import get_settings

    monkeypatch.setenv("APP_URL", "https://billing.example.com")
    get_settings.cache_clear()
    site = "https://billing.example.com"
    c = TestClient(actors.api, base_url=site, headers={"Origin": site})
    r = c.post("/api/auth/login", json={"email": actors.a.email, "password": "x" * 9})
    assert r.status_code in (401, 429)  # a wrong password: no cookie
    with session_scope() as s:
        token = auth.new_session(s, actors.a.id)
    tossed = c.get("/api/auth/me", headers={"Cookie": f"billing_session={token}"})
    assert tossed.status_code == 401
    own = c.get("/api/auth/me", headers={"Cookie": f"__Host-billing_session={token}"})
    assert own.status_code == 200 and own.json()["email"] == actors.a.email
    out = c.post("/api/auth/logout", headers={"Cookie": f"__Host-billing_session={token}"})
    cleared = out.headers["set-cookie"]
    assert cleared.startswith("__Host-billing_session=") and "Secure" in cleared
    assert "Path=/" in cleared and "Domain" not in cleared


def test_signing_in_over_https_sets_the_host_only_cookie(client, monkeypatch):
    from billing_app.settings import get_settings
    from tests.api.conftest import PASSWORD

    monkeypatch.setenv("APP_URL", "https://billing.example.com")
    get_settings.cache_clear()
    r = client.post(
        "/api/auth/signup",
        json={"email": "host@example.com", "password": PASSWORD},
        headers={"Origin": ORIGIN},
    )
    assert r.status_code == 201, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-billing_session=")
    assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie


@pytest.mark.parametrize(
    "site",
    ["http://[::1]:8000", "http://127.8.9.10:8000", "http://192.168.1.20:8000"],
)
def test_over_plain_http_the_cookie_is_not_secure_and_sign_in_sticks(actors, monkeypatch, site):
    """The cookie was Secure on any http host but `localhost`/`127.0.0.1`: a browser
    drops that, so http://[::1]:8000 (local, like 127/8) and the README's demo on a
    network over plain http bounced every sign-in back to /login."""
    from starlette.testclient import TestClient

    from billing_app.settings import get_settings

    monkeypatch.setenv("APP_URL", site)
    monkeypatch.setenv("API_URL", site)
    get_settings.cache_clear()
    c = TestClient(actors.api, base_url=site, headers={"Origin": site})
    r = c.post("/api/auth/signup", json={"email": "h90-plain@example.com", "password": PASSWORD})
    assert r.status_code == 201, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{auth.SESSION_COOKIE}=") and "Secure" not in cookie
    me = c.get("/api/auth/me")  # the client's jar, like a browser's, keeps it over http
    assert me.status_code == 200 and me.json()["email"] == "h90-plain@example.com"


@pytest.mark.parametrize("site", ["https://localhost:8443", "https://10.0.0.5"])
def test_over_https_the_cookie_is_secure_on_any_host(client, monkeypatch, site):
    """Guard: served over https, local or not, the cookie is Secure."""
    from billing_app.settings import get_settings

    monkeypatch.setenv("APP_URL", site)
    get_settings.cache_clear()
    r = client.post(
        "/api/auth/signup",
        json={"email": "h90-https@example.com", "password": PASSWORD},
        headers={"Origin": ORIGIN},
    )
    assert r.status_code == 201, r.text
    assert "Secure" in r.headers["set-cookie"]
