"""Authorization matrix: every user, admin and service endpoint against every kind of caller.

No credentials → 401; a non-admin on admin endpoints → 403; user A against user B's
objects → 403/404 (or simply never sees them); a service key is not a user.
"""

from __future__ import annotations

import pytest

from billing_app.db import session_scope
from billing_app.models import Invoice
from billing_app.services import metering

USER_ENDPOINTS = [
    ("POST", "/api/billing/checkout", {"plan": "pro"}),
    ("POST", "/api/billing/portal", None),
    ("GET", "/api/billing/subscription", None),
    ("GET", "/api/billing/quota", None),
    ("GET", "/api/billing/usage", None),
    ("GET", "/api/billing/invoices", None),
    ("GET", "/api/auth/me", None),
]
ADMIN_ENDPOINTS = [
    ("GET", "/api/billing/admin/users", None),
    ("GET", "/api/billing/admin/stats", None),
    ("GET", "/api/billing/admin/users/{b}", None),
    ("PUT", "/api/billing/admin/users/{b}/quota", {"metric": "tokens", "limit": 1, "reason": "x"}),
    ("GET", "/api/billing/admin/invoices", None),
    ("POST", "/api/billing/admin/api-keys", {"name": "x", "service_name": "x"}),
    ("GET", "/api/billing/admin/api-keys", None),
    ("DELETE", "/api/billing/admin/api-keys/{b_key}", None),
]
SERVICE_ENDPOINTS = [
    ("POST", "/api/billing/usage", {"user_id": "{b}", "metric": "tokens", "quantity": 1}),
    (
        "POST",
        "/api/billing/usage/batch",
        {"events": [{"user_id": "{b}", "metric": "tokens", "quantity": 1}]},
    ),
    ("POST", "/api/billing/quota/check", {"user_id": "{b}", "metric": "tokens", "quantity": 1}),
    ("POST", "/api/billing/usage/consume", {"user_id": "{b}", "metric": "tokens", "quantity": 1}),
]
ALL = USER_ENDPOINTS + ADMIN_ENDPOINTS + SERVICE_ENDPOINTS


def _fill(value, ids):
    if isinstance(value, str):
        return int(value.format(**ids)) if value.startswith("{") else value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def _call(client, method, path, body, actors):
    ids = {"b": actors.b.id, "b_key": _b_key_id(actors)}
    return client.request(method, path.format(**ids), json=_fill(body, ids))


def _b_key_id(actors) -> int:
    from billing_app.services import api_keys

    with session_scope() as s:
        return next(k.id for k in api_keys.list_keys(s, actors.b.id))


def _ids(endpoints):
    return [f"{m} {p}" for m, p, _ in endpoints]


@pytest.mark.parametrize(("method", "path", "body"), ALL, ids=_ids(ALL))
def test_no_credentials_is_401(actors, method, path, body):
    r = _call(actors.anon(), method, path, body, actors)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body"), ALL, ids=_ids(ALL))
def test_expired_or_bogus_credentials_are_401(actors, method, path, body):
    bogus_cookie = actors.anon()
    bogus_cookie.cookies.set("billing_session", "forged")
    assert _call(bogus_cookie, method, path, body, actors).status_code == 401
    bogus_key = actors.key_client("bk_live_0000_forged")
    assert _call(bogus_key, method, path, body, actors).status_code == 401


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS, ids=_ids(ADMIN_ENDPOINTS))
@pytest.mark.parametrize("who", ["cookie", "user_key", "service_key"])
def test_non_admins_get_403_on_admin_endpoints(actors, method, path, body, who):
    client = {
        "cookie": lambda: actors.cookie_client(actors.a),
        "user_key": lambda: actors.key_client(actors.a_key),
        "service_key": lambda: actors.key_client(actors.service_key),
    }[who]()
    r = _call(client, method, path, body, actors)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS, ids=_ids(ADMIN_ENDPOINTS))
def test_admins_pass(actors, method, path, body):
    r = _call(actors.cookie_client(actors.admin), method, path, body, actors)
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize(("method", "path", "body"), SERVICE_ENDPOINTS, ids=_ids(SERVICE_ENDPOINTS))
@pytest.mark.parametrize("who", ["cookie", "user_key"])
def test_user_a_cannot_act_for_user_b(actors, method, path, body, who):
    client = actors.cookie_client(actors.a) if who == "cookie" else actors.key_client(actors.a_key)
    r = _call(client, method, path, body, actors)
    assert r.status_code == 403, r.text
    with session_scope() as s:
        assert sum(m.used for m in metering.summary(s, actors.b.id)) == 0


@pytest.mark.parametrize(("method", "path", "body"), SERVICE_ENDPOINTS, ids=_ids(SERVICE_ENDPOINTS))
def test_service_key_acts_for_anyone(actors, method, path, body):
    r = _call(actors.key_client(actors.service_key), method, path, body, actors)
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize(
    ("method", "path", "body"), USER_ENDPOINTS[2:], ids=_ids(USER_ENDPOINTS[2:])
)
def test_service_keys_are_not_users(actors, method, path, body):
    r = _call(actors.key_client(actors.service_key), method, path, body, actors)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_user_endpoints_are_scoped_by_the_caller_not_the_request(actors):
    with session_scope() as s:
        metering.record(s, actors.b.id, "tokens", 777)
        s.add(Invoice(stripe_invoice_id="in_b", user_id=actors.b.id, status="paid"))
        s.commit()
    for client in (actors.cookie_client(actors.a), actors.key_client(actors.a_key)):
        # an id smuggled in the query string is ignored: A sees only A
        inv = client.get("/api/billing/invoices", params={"user_id": actors.b.id}).json()
        assert inv["total"] == 0
        usage = client.get("/api/billing/usage", params={"user_id": actors.b.id}).json()
        assert all(m["used"] == 0 for m in usage["metrics"])
        assert client.get("/api/auth/me").json()["id"] == actors.a.id
