"""OIDC single sign-on against a provider on loopback: PKCE, state, ID-token signature."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from billing_app.db import session_scope
from billing_app.services import auth
from tests.api.conftest import LiveServer
from tests.api.oidc_provider import CLIENT_ID, CLIENT_SECRET, OIDCProvider
from tests.conftest import _clear_caches
from tests.factories import make_user


@pytest.fixture
def provider(monkeypatch, app_settings) -> Iterator[OIDCProvider]:
    idp = OIDCProvider()
    server = LiveServer(idp.app)
    idp.url = server.url
    monkeypatch.setenv("OIDC_ISSUER", idp.url)
    monkeypatch.setenv("OIDC_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("OIDC_CLIENT_SECRET", CLIENT_SECRET)
    _clear_caches()
    yield idp
    server.stop()


def _start(client, next_="/billing/usage") -> str:
    r = client.get("/api/auth/oidc/login", params={"next": next_}, follow_redirects=False)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def _approve(location: str) -> str:
    r = httpx.get(location, follow_redirects=False)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def _callback_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_good_login_creates_the_user_and_a_session(client, provider):
    location = _start(client)
    q = parse_qs(urlsplit(location).query)
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"][0]
    assert q["state"][0] and q["nonce"][0] and "openid" in q["scope"][0]
    r = client.get(_callback_path(_approve(location)), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/billing/usage"
    assert auth.SESSION_COOKIE in r.cookies and "HttpOnly" in r.headers["set-cookie"]
    me = client.get("/api/auth/me").json()
    assert me["email"] == "sso@example.com" and me["display_name"] == "Sso User"


def test_existing_account_is_matched_by_verified_email_then_by_subject(client, provider):
    with session_scope() as s:
        existing = make_user(s, email="sso@example.com")
    client.get(_callback_path(_approve(_start(client))), follow_redirects=False)
    assert client.get("/api/auth/me").json()["id"] == existing.id
    # the subject is now linked: a changed email at the IdP still finds the same account
    provider.user = {**provider.user, "email": "renamed@example.com"}
    client.cookies.clear()
    client.get(_callback_path(_approve(_start(client))), follow_redirects=False)
    assert client.get("/api/auth/me").json()["id"] == existing.id


def test_unverified_email_is_refused(client, provider):
    with session_scope() as s:
        make_user(s, email="victim@example.com")
    provider.user = {"sub": "attacker", "email": "victim@example.com", "email_verified": False}
    r = client.get(_callback_path(_approve(_start(client))), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?error=")
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["sso_unverified_email"]
    assert auth.SESSION_COOKIE not in r.cookies


def test_bad_state_is_refused(client, provider, caplog):
    callback = _approve(_start(client))
    forged = callback.replace("state=", "state=forged")
    r = client.get(_callback_path(forged), follow_redirects=False)
    assert "MismatchingStateError" in caplog.text
    assert r.status_code == 303
    loc = urlsplit(r.headers["location"])
    assert loc.path == "/login" and parse_qs(loc.query)["error"] == ["sso_failed"]
    assert auth.SESSION_COOKIE not in r.cookies
    assert client.get("/api/auth/me").status_code == 401


def test_callback_without_a_started_login_is_refused(client, provider):
    callback = _approve(_start(client))
    client.cookies.clear()  # another browser: it never started this sign-in
    r = client.get(_callback_path(callback), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?error=")


def test_bad_id_token_signature_is_refused(client, provider, caplog):
    provider.bad_signature = True
    r = client.get(_callback_path(_approve(_start(client))), follow_redirects=False)
    assert "BadSignatureError" in caplog.text
    assert r.status_code == 303 and r.headers["location"].startswith("/login?error=")
    assert auth.SESSION_COOKIE not in r.cookies
    assert client.get("/api/auth/me").status_code == 401


def test_oidc_not_configured_is_404(client):
    r = client.get("/api/auth/oidc/login", follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
