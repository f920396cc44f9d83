"""Ways to take an account or a role that is not yours: an admin's address typed at
signup, an address registered before its owner signs in by SSO, a sign-in's timing that
tells which accounts exist, and a key revoked while a request was reading it."""

from __future__ import annotations

import statistics
import time
from urllib.parse import parse_qs, urlsplit

from argon2 import PasswordHasher
from starlette.testclient import TestClient

from billing_app.db import session_scope
from billing_app.services import api_keys, auth, passwords, users
from billing_app.settings import get_settings
from tests.api.conftest import ORIGIN
from tests.api.test_oidc import _approve, _callback_path, _start, provider  # noqa: F401


def test_typing_an_admin_email_at_signup_does_not_make_an_admin(client, monkeypatch):
    monkeypatch.setenv("ADMIN_EMAILS", "ops@example.com")
    get_settings.cache_clear()
    r = client.post(
        "/api/auth/signup",
        headers={"Origin": ORIGIN},
        json={"email": "Ops@Example.com ", "password": "attacker-pw-1"},
    )
    assert r.status_code == 201 and r.json()["user"]["role"] == "user"
    assert client.get("/api/billing/admin/stats").status_code == 403
    # An operator's command (the address is theirs to vouch for) still makes one.
    with session_scope() as s:
        assert users.create_user(s, "ops2@example.com").role == "user"
    monkeypatch.setenv("ADMIN_EMAILS", "ops@example.com,ops2@example.com,ops3@example.com")
    get_settings.cache_clear()
    with session_scope() as s:
        assert users.create_user(s, "ops3@example.com").role == "admin"


def test_sso_takes_an_address_registered_before_its_owner_came(app, client, provider):  # noqa: F811
    """Someone signs up with the address first and makes an API key; its verified owner
    then signs in by SSO. The owner has the account; the password, the sessions and the
    key of whoever registered it no longer work."""
    squatter = TestClient(app, base_url=ORIGIN, headers={"Origin": ORIGIN})
    r = squatter.post(
        "/api/auth/signup", json={"email": "sso@example.com", "password": "attacker-pw-1"}
    )
    assert r.status_code == 201
    squatter_id = r.json()["user"]["id"]
    with session_scope() as s:
        key = api_keys.create_key(s, name="mine", user_id=squatter_id)[1]
    assert squatter.get("/api/auth/me").status_code == 200

    client.get(_callback_path(_approve(_start(client))), follow_redirects=False)
    owner = client.get("/api/auth/me")
    assert owner.status_code == 200 and owner.json()["id"] == squatter_id  # the same account
    assert squatter.get("/api/auth/me").status_code == 401  # its session is gone
    again = TestClient(app, base_url=ORIGIN).post(
        "/api/auth/login", json={"email": "sso@example.com", "password": "attacker-pw-1"}
    )
    assert again.status_code == 401
    keyed = TestClient(app, base_url=ORIGIN, headers={"Authorization": f"Bearer {key}"})
    assert keyed.get("/api/billing/usage").status_code == 401


def test_a_sign_in_takes_as_long_for_an_sso_only_account_as_for_nobody(client, monkeypatch):
    real = PasswordHasher()  # production cost
    monkeypatch.setattr(passwords, "_hasher", real)
    monkeypatch.setattr(auth, "_DUMMY_HASH", real.hash("x" * 12))
    with session_scope() as s:
        users.create_user(s, "sso-only@example.com", oidc_subject="sub-1")

    def timed(email: str) -> float:
        t0 = time.perf_counter()
        r = client.post("/api/auth/login", json={"email": email, "password": "guess-guess"})
        assert r.status_code == 401
        return time.perf_counter() - t0

    unknown = statistics.median(timed(f"nobody{i}@example.com") for i in range(3))
    sso_only = statistics.median(timed("sso-only@example.com") for _ in range(3))
    # Both run one argon2 check (tens of ms); without it the SSO account answered at once.
    assert sso_only > unknown / 3, (unknown, sso_only)


class _HookedLock:
    """api_keys._lock, running `hook` once before its next acquisition."""

    def __init__(self, real):
        self.real, self.hook = real, None

    def __enter__(self):
        hook, self.hook = self.hook, None
        if hook:
            hook()
        return self.real.__enter__()

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)


def test_a_key_revoked_while_a_request_reads_it_is_not_cached_again(actors, monkeypatch):
    lock = _HookedLock(api_keys._lock)
    monkeypatch.setattr(api_keys, "_lock", lock)
    with session_scope() as s:
        key_id = next(k.id for k in api_keys.list_keys(s) if k.service_name)

    def revoke() -> None:  # an admin's revocation, between the lookup and the cache write
        with session_scope() as s:
            api_keys.revoke_key(s, key_id)

    k = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    lock.hook = revoke
    assert k.post("/api/billing/usage", json=body).status_code == 201  # read before it
    assert k.post("/api/billing/usage", json=body).status_code == 401


def test_a_second_identity_with_the_same_verified_email_does_not_take_a_linked_account(
    app,
    client,
    provider,  # noqa: F811
):
    """The provider verifies the address for another subject (an address reassigned to a
    new employee, or renamed to): only the subject is stable, so the account stays with
    the identity it is linked to, and the newcomer is told why, with no session."""
    client.get(_callback_path(_approve(_start(client))), follow_redirects=False)
    owner = client.get("/api/auth/me").json()
    provider.user = {**provider.user, "sub": "someone-else"}
    other = TestClient(app, base_url=ORIGIN)
    r = other.get(_callback_path(_approve(_start(other))), follow_redirects=False)
    assert r.status_code == 303
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["sso_linked_elsewhere"]
    assert auth.SESSION_COOKIE not in r.cookies
    assert other.get("/api/auth/me").status_code == 401
    with session_scope() as s:
        assert users.get_user(s, owner["id"]).oidc_subject == "idp-user-1"
    assert client.get("/api/auth/me").json()["id"] == owner["id"]  # its owner still signed in
