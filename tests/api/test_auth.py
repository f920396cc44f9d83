"""Sign-up, sign-in (JSON and HTML form), sessions, logout, rate limits, CSRF."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from sqlmodel import select

from billing_app.clock import utcnow
from billing_app.db import session_scope
from billing_app.models import AuthSession, User
from billing_app.services import auth
from tests.api.conftest import ORIGIN, PASSWORD


def _signup(client, email="new@example.com", **extra):
    return client.post(
        "/api/auth/signup",
        json={"email": email, "password": PASSWORD, "display_name": "New", **extra},
    )


def test_signup_json_sets_httponly_cookie_and_me_works(client):
    r = _signup(client)
    assert r.status_code == 201, r.text
    assert r.json()["user"]["email"] == "new@example.com"
    set_cookie = r.headers["set-cookie"]
    assert set_cookie.startswith(f"{auth.SESSION_COOKIE}=")
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    assert "Secure" not in set_cookie  # plain-http localhost development
    me = client.get("/api/auth/me")
    assert me.status_code == 200 and me.json()["email"] == "new@example.com"
    # only the hash of the token is stored; the password never in clear
    token = client.cookies.get(auth.SESSION_COOKIE)
    with session_scope() as s:
        row = s.exec(select(AuthSession)).one()
        user = s.exec(select(User)).one()
    assert row.token_hash == auth.hash_token(token) and token not in row.token_hash
    assert user.password_hash.startswith("$argon2") and PASSWORD not in user.password_hash


def test_cookie_is_secure_outside_localhost(client, monkeypatch):
    monkeypatch.setenv("APP_URL", "https://billing.example.com")
    from billing_app.settings import get_settings

    get_settings.cache_clear()
    r = _signup(client)
    assert "Secure" in r.headers["set-cookie"]


def test_signup_conflict_and_validation(client):
    assert _signup(client).status_code == 201
    dup = _signup(client, email="NEW@example.com")
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
    weak = client.post("/api/auth/signup", json={"email": "x@example.com", "password": "short"})
    assert weak.status_code == 422
    assert weak.json()["error"]["field"] == "password"
    bad = client.post("/api/auth/signup", json={"email": "nope", "password": PASSWORD})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "email"


def test_login_json_and_generic_failure(client):
    _signup(client)
    client.cookies.clear()
    ok = client.post("/api/auth/login", json={"email": "New@Example.com", "password": PASSWORD})
    assert ok.status_code == 200 and ok.json()["user"]["email"] == "new@example.com"
    assert auth.SESSION_COOKIE in ok.cookies
    wrong = client.post("/api/auth/login", json={"email": "new@example.com", "password": "x" * 9})
    nobody = client.post("/api/auth/login", json={"email": "who@example.com", "password": "x" * 9})
    for r in (wrong, nobody):
        assert r.status_code == 401
        assert r.json()["error"] == {
            "code": "unauthorized",
            "message": "Email or password is incorrect.",
        }


def test_form_login_redirects_with_cookie(client):
    _signup(client)
    client.cookies.clear()
    r = client.post(
        "/api/auth/login",
        data={"email": "new@example.com", "password": PASSWORD, "next": "/billing/usage"},
        headers={"Origin": ORIGIN},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/billing/usage"
    assert "HttpOnly" in r.headers["set-cookie"]


def test_form_posted_before_the_page_loaded_follows_the_referers_next(client):
    """The login page's hidden `next` is empty until its state loads; the Referer has it."""
    _signup(client)
    client.cookies.clear()
    r = client.post(
        "/api/auth/login",
        data={"email": "new@example.com", "password": PASSWORD, "next": ""},
        headers={"Origin": ORIGIN, "Referer": f"{ORIGIN}/login?next=/admin/billing"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/billing"
    client.cookies.clear()
    evil = client.post(
        "/api/auth/login",
        data={"email": "new@example.com", "password": PASSWORD},
        headers={"Origin": ORIGIN, "Referer": f"{ORIGIN}/login?next=//evil.example/"},
        follow_redirects=False,
    )
    assert evil.status_code == 303 and evil.headers["location"] == "/billing"


def test_form_login_failure_redirects_back_with_error(client):
    r = client.post(
        "/api/auth/login",
        data={"email": "no@example.com", "password": "wrong-pass", "next": "/admin"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    loc = urlsplit(r.headers["location"])
    assert loc.path == "/login"
    q = parse_qs(loc.query)
    assert q["error"] == ["login_failed"] and q["next"] == ["/admin"]  # a code, not a text
    assert "set-cookie" not in r.headers


def test_form_signup_and_open_redirects_are_refused(client):
    for evil in ("https://evil.example/x", "//evil.example/x", "/\\evil.example"):
        client.cookies.clear()
        r = client.post(
            "/api/auth/signup",
            data={"email": f"u{len(evil)}@example.com", "password": PASSWORD, "next": evil},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/billing", evil
    bad = client.post(
        "/api/auth/signup",
        data={"email": "bad", "password": PASSWORD, "next": "/x"},
        follow_redirects=False,
    )
    assert bad.status_code == 303 and bad.headers["location"].startswith("/signup?error=")
    assert parse_qs(urlsplit(bad.headers["location"]).query)["error"] == ["invalid_email"]
    taken = client.post(
        "/api/auth/signup",
        data={"email": "u22@example.com", "password": PASSWORD, "next": "/x"},
        follow_redirects=False,
    )
    assert parse_qs(urlsplit(taken.headers["location"]).query)["error"] == ["email_taken"]


def test_login_form_from_a_foreign_origin_is_refused(client):
    _signup(client)
    client.cookies.clear()
    r = client.post(
        "/api/auth/login",
        json={"email": "new@example.com", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"


def test_logout_revokes_the_session(client):
    _signup(client)
    token = client.cookies.get(auth.SESSION_COOKIE)
    r = client.post("/api/auth/logout", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and r.json() == {"ok": True}
    with session_scope() as s:
        assert auth.user_for_token(s, token) is None
    client.cookies.set(auth.SESSION_COOKIE, token)  # replaying the old cookie does not work
    assert client.get("/api/auth/me").status_code == 401


def test_logout_form_redirects_to_login(client):
    _signup(client)
    r = client.post(
        "/api/auth/logout", data={"next": "/"}, headers={"Origin": ORIGIN}, follow_redirects=False
    )
    # The sign-in page says the sign-out happened.
    assert r.status_code == 303 and r.headers["location"] == "/login?signed_out=1"


def test_expired_session_is_rejected(client, frozen_clock):
    _signup(client)
    frozen_clock.set(frozen_clock.now + auth.SESSION_TTL + timedelta(seconds=1))
    assert client.get("/api/auth/me").status_code == 401


def test_me_without_credentials_is_401(client):
    r = client.get("/api/auth/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_login_rate_limit_per_account(client):
    _signup(client)
    client.cookies.clear()
    for _ in range(auth.MAX_FAILS_PER_ACCOUNT):
        r = client.post("/api/auth/login", json={"email": "new@example.com", "password": "bad-pw"})
        assert r.status_code == 401
    # even the right password is refused now, with a Retry-After
    r = client.post("/api/auth/login", json={"email": "new@example.com", "password": PASSWORD})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) > 0


def test_login_rate_limit_window_passes(client, frozen_clock):
    _signup(client)
    client.cookies.clear()
    for _ in range(auth.MAX_FAILS_PER_ACCOUNT):
        client.post("/api/auth/login", json={"email": "new@example.com", "password": "bad-pw"})
    frozen_clock.set(frozen_clock.now + auth.RATE_WINDOW + timedelta(seconds=1))
    r = client.post("/api/auth/login", json={"email": "new@example.com", "password": PASSWORD})
    assert r.status_code == 200


def test_login_rate_limit_per_ip(client, monkeypatch):
    # many accounts from one address: the IP limit trips, not the per-account one
    monkeypatch.setattr(auth, "MAX_FAILS_PER_IP", 6)
    for i in range(auth.MAX_FAILS_PER_IP):
        r = client.post("/api/auth/login", json={"email": f"u{i}@example.com", "password": "x"})
        assert r.status_code == 401
    r = client.post("/api/auth/login", json={"email": "other@example.com", "password": "x"})
    assert r.status_code == 429


def test_csrf_cookie_post_needs_our_origin(actors):
    c = actors.cookie_client(actors.a)
    body = {"metric": "tokens", "quantity": 5}
    assert c.post("/api/billing/usage", json=body).status_code == 201  # Origin: ours
    foreign = c.post("/api/billing/usage", json=body, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "csrf_failed"
    del c.headers["Origin"]
    missing = c.post("/api/billing/usage", json=body)
    assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
    referer = c.post("/api/billing/usage", json=body, headers={"Referer": f"{ORIGIN}/billing"})
    assert referer.status_code == 201
    # reads need no Origin; API keys are not cookies and need none either
    assert c.get("/api/billing/usage").status_code == 200
    k = actors.key_client(actors.a_key)
    assert k.post("/api/billing/usage", json=body).status_code == 201


def test_session_tokens():
    assert auth.session_tokens(None) == []
    assert auth.session_tokens("") == []
    assert auth.session_tokens("a=1; billing_session=tok123; b=2") == ["tok123"]
    assert auth.session_tokens("other=1") == []
    assert auth.session_tokens('bad"cookie; billing_session=tok9') == ["tok9"]
    two = "billing_session=old; x=1; billing_session=new; billing_session=old"
    assert auth.session_tokens(two) == ["old", "new"]
    many = "; ".join(f"billing_session=t{i}" for i in range(10))
    assert len(auth.session_tokens(many)) == auth.MAX_SESSION_COOKIES


def test_user_for_token_handles_junk(session):
    assert auth.user_for_token(session, None) is None
    assert auth.user_for_token(session, "nope") is None
    assert auth.user_for_token(session, "x" * 5000) is None


def test_sessions_track_last_seen_cheaply(client, frozen_clock):
    _signup(client)
    with session_scope() as s:
        first = s.exec(select(AuthSession)).one().last_seen_at
    frozen_clock.set(frozen_clock.now + timedelta(minutes=1))
    client.get("/api/auth/me")
    with session_scope() as s:
        assert s.exec(select(AuthSession)).one().last_seen_at == first  # not written yet
    frozen_clock.set(frozen_clock.now + auth.SEEN_EVERY)
    client.get("/api/auth/me")
    with session_scope() as s:
        assert s.exec(select(AuthSession)).one().last_seen_at == utcnow()


def test_a_session_lookup_leaves_no_transaction_open(client, frozen_clock):
    """Whether it records last_seen (commit) or not (rollback), the lookup ends its
    transaction and starts no other: on SQLite an open one holds the write lock."""
    _signup(client)
    token = client.cookies.get(auth.SESSION_COOKIE)
    for step in (auth.SEEN_EVERY + timedelta(seconds=1), timedelta(seconds=1)):
        frozen_clock.set(frozen_clock.now + step)
        with session_scope() as s:
            assert auth.user_for_token(s, token).email == "new@example.com"
            assert not s.in_transaction()
