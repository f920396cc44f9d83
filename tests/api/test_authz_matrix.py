"""Authorization matrix: every user, admin and service endpoint against every kind of caller.

No credentials → 401; a non-admin on admin endpoints → 403; user A against user B's
objects → 403/404 (or simply never sees them); a service key is not a user, but reads
any user's usage and quotas when it names the user.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing_app.db import session_scope
from billing_app.models import ApiKey, AuthSession, Invoice, QuotaAudit, UsageEvent, User
from billing_app.services import api_keys, metering, quotas
from tests.api.conftest import ORIGIN
from tests.factories import make_subscription

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
    ("GET", "/api/billing/admin/users.csv", None),
    ("GET", "/api/billing/admin/invoices.csv", None),
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
# A service write too, but of an event that must exist: its own tests are test_usage_cancel.
CANCEL = [("POST", "/api/billing/usage/cancel", {"user_id": "{b}", "idempotency_key": "k"})]
ALL = USER_ENDPOINTS + ADMIN_ENDPOINTS + SERVICE_ENDPOINTS + CANCEL


def _fill(value, ids):
    if isinstance(value, str):
        return int(value.format(**ids)) if value.startswith("{") else value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def _call(client, method, path, body, actors):
    ids = {"a": actors.a.id, "b": actors.b.id, "b_key": _b_key_id(actors)}
    return client.request(method, path.format(**ids), json=_fill(body, ids))


def _b_key_id(actors) -> int:
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


@pytest.mark.parametrize(
    ("method", "path", "body"), SERVICE_ENDPOINTS + CANCEL, ids=_ids(SERVICE_ENDPOINTS + CANCEL)
)
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


USER_ONLY = [e for e in USER_ENDPOINTS if e[1] == "/api/auth/me"]


@pytest.mark.parametrize(("method", "path", "body"), USER_ONLY, ids=_ids(USER_ONLY))
def test_service_keys_are_not_users(actors, method, path, body):
    r = _call(actors.key_client(actors.service_key), method, path, body, actors)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_user_endpoints_are_scoped_by_the_caller_not_the_request(actors):
    with session_scope() as s:
        metering.record(s, actors.b.id, "tokens", 777)
        s.add(Invoice(stripe_invoice_id="in_b", user_id=actors.b.id, status="paid"))
        s.commit()
    for client in (actors.cookie_client(actors.a), actors.key_client(actors.a_key)):
        # the reads take user_id (for service keys): another user's is refused, never
        # ignored (invoices once answered A's own for B's id)
        for path in READS:
            r = client.get(path, params={"user_id": actors.b.id})
            assert r.status_code == 403 and "777" not in r.text and "in_b" not in r.text
        assert client.get("/api/auth/me").json()["id"] == actors.a.id


# ------------------------------------------------------------------ who reads whose usage
#
# GET /usage, /quota, /subscription and /invoices: a service key names the user
# (`?user_id=`, required); a session or a user's key reads its own user's (no user_id, or
# its own id); another user's id is 403, whether or not that user exists (a user key
# cannot probe ids). Each case in both lanes: without Origin the fast lane answers GET
# /usage itself; with it, FastAPI.

READS = ["/api/billing/usage", "/api/billing/quota", "/api/billing/subscription",
         "/api/billing/invoices"]  # fmt: skip
USAGE_READS = [*READS, "/api/billing/usage?history=daily"]
UNKNOWN_ID = 999_999
# (caller, user_id to send: "a", "b", "unknown" or None, status, error code)
WHO_READS_WHOSE = [
    ("service", "b", 200, None),
    ("service", "a", 200, None),
    ("service", None, 422, "validation_error"),
    ("service", "unknown", 404, "user_not_found"),
    ("service usage:read", "b", 200, None),
    ("service usage:read", None, 422, "validation_error"),
    ("service usage:write", "b", 403, "forbidden"),
    ("service usage:write", None, 403, "forbidden"),
    ("a key", None, 200, None),
    ("a key", "a", 200, None),
    ("a key", "b", 403, "forbidden"),
    ("a key", "unknown", 403, "forbidden"),
    ("a usage:read", "a", 200, None),
    ("a usage:read", "b", 403, "forbidden"),
    ("a usage:write", "a", 403, "forbidden"),
    ("a session", None, 200, None),
    ("a session", "a", 200, None),
    ("a session", "b", 403, "forbidden"),
    ("admin session", "b", 403, "forbidden"),  # admins read others through /admin/users
]


def _whose(path: str, body: dict) -> int:
    """What marks whose answer `body` is: the tokens used, A's 111 or B's 222 (usage and
    quota); the plan's price or the invoice's amount, 111 or 222 cents, elsewhere."""
    if "/subscription" in path:
        return {"free": 111, "pro": 222}[body["plan"]]
    if "/invoices" in path:
        (invoice,) = body["items"]
        return invoice["amount_due"]
    rows = body["quotas"] if "quotas" in body else body["metrics"]
    return next(m["used"] for m in rows if m["metric"] == "tokens")


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("path", USAGE_READS)
@pytest.mark.parametrize(
    ("caller", "whose", "status", "code"),
    WHO_READS_WHOSE,
    ids=[f"{c} for {w}" for c, w, *_ in WHO_READS_WHOSE],
)
def test_who_may_read_whose_usage(actors, caller, whose, status, code, path, lane):
    with session_scope() as s:
        metering.record(s, actors.a.id, "tokens", 111)
        metering.record(s, actors.b.id, "tokens", 222)
        for user, cents in ((actors.a, 111), (actors.b, 222)):
            s.add(Invoice(stripe_invoice_id=f"in_{cents}", user_id=user.id, status="paid",
                          amount_due=cents, currency="usd"))  # fmt: skip
        s.commit()
        make_subscription(s, actors.b.id, plan="pro")
        keys = {
            "service": actors.service_key,
            "a key": actors.a_key,
            **{
                f"service {scope}": api_keys.create_key(
                    s, name=scope, service_name="reader", scopes=[scope]
                )[1]
                for scope in ("usage:read", "usage:write")
            },
            **{
                f"a {scope}": api_keys.create_key(
                    s, name=scope, user_id=actors.a.id, scopes=[scope]
                )[1]
                for scope in ("usage:read", "usage:write")
            },
        }
    if caller.endswith("session"):
        client = actors.cookie_client(actors.admin if caller.startswith("admin") else actors.a)
    else:
        client = actors.key_client(keys[caller])
        if lane == "fastapi":
            client.headers["Origin"] = ORIGIN
    user_id = {"a": actors.a.id, "b": actors.b.id, "unknown": UNKNOWN_ID, None: None}[whose]
    url = path if user_id is None else f"{path}{'&' if '?' in path else '?'}user_id={user_id}"
    r = client.get(url)
    assert r.status_code == status, r.text
    if status == 200:
        assert _whose(path, r.json()) == (222 if whose == "b" else 111)
        assert (r.json().get("history") is not None) == ("history" in path)
        return
    error = r.json()["error"]
    assert error["code"] == code
    assert "111" not in r.text and "222" not in r.text
    if caller.endswith("usage:write"):
        assert error == {
            "code": "forbidden",
            "message": "This API key lacks the 'usage:read' scope.",
            "scope": "usage:read",
        }
    elif status == 403:
        assert error == {
            "code": "forbidden",
            "message": "You may only act for your own account."
            if caller.endswith("session")
            else "This key may only act for its own user.",
            "user_id": user_id,
        }
    elif status == 422:
        assert error == {
            "code": "validation_error",
            "message": "user_id is required with a service key.",
            "field": "user_id",
            "fields": [
                {
                    "field": "user_id",
                    "message": "user_id is required with a service key.",
                    "type": "validation_error",
                }
            ],
        }
    else:
        assert error == {
            "code": "user_not_found",
            "message": f"No user with id {UNKNOWN_ID}.",
            "user_id": UNKNOWN_ID,
        }


def test_openapi_says_who_may_pass_user_id(api):
    paths = api.openapi()["paths"]
    for path in READS:
        op = paths[path]["get"]
        (param,) = [p for p in op["parameters"] if p["name"] == "user_id"]
        assert param["in"] == "query" and not param["required"]
        assert "required with a service key" in param["description"]
        assert "another user's id is 403" in param["description"]
        assert "404" in op["responses"]


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("path", ["/api/billing/usage", "/api/billing/quota"])
@pytest.mark.parametrize("user_id", ["0", "-1", "abc", "1.5", str(2**31), ""])
def test_a_bad_user_id_is_422(actors, path, user_id, lane):
    client = actors.key_client(actors.service_key)
    if lane == "fastapi":
        client.headers["Origin"] = ORIGIN
    r = client.get(f"{path}?user_id={user_id}")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and "user_id" in error["message"]


# ------------------------------------------------------------------ scoped API keys
#
# A key with scopes may call only the endpoints its scopes name: usage:read for the
# user's read-only endpoints and the quota check, usage:write for recording. Every
# other endpoint a user key reaches (checkout, portal, account, admin) needs an
# unscoped key or a session. Each case runs in both lanes: without Origin the fast
# lane answers what it serves itself; with Origin the request goes on to FastAPI.

ANY_SCOPE = None  # the endpoint names no scope: unscoped keys and sessions only
SCOPED_ROUTES = [
    # (method, path, body, whose key, scope needed)
    ("POST", "/api/billing/checkout", {"plan": "pro"}, "a", ANY_SCOPE),
    ("POST", "/api/billing/portal", None, "a", ANY_SCOPE),
    ("GET", "/api/billing/subscription", None, "a", "usage:read"),
    ("GET", "/api/billing/quota", None, "a", "usage:read"),
    ("GET", "/api/billing/usage", None, "a", "usage:read"),
    ("GET", "/api/billing/usage?history=daily", None, "a", "usage:read"),
    ("GET", "/api/billing/invoices", None, "a", "usage:read"),
    ("GET", "/api/billing/usage?user_id={a}", None, "a", "usage:read"),
    ("GET", "/api/billing/quota?user_id={a}", None, "a", "usage:read"),
    ("GET", "/api/billing/usage?user_id={b}", None, "service", "usage:read"),
    ("GET", "/api/billing/usage?history=daily&user_id={b}", None, "service", "usage:read"),
    ("GET", "/api/billing/quota?user_id={b}", None, "service", "usage:read"),
    ("GET", "/api/auth/me", None, "a", ANY_SCOPE),
    ("POST", "/api/auth/logout", None, "a", ANY_SCOPE),
    *[(m, p, b, "admin", ANY_SCOPE) for m, p, b in ADMIN_ENDPOINTS],
    ("POST", "/api/billing/usage", {"metric": "tokens", "quantity": 1}, "a", "usage:write"),
    (
        "POST",
        "/api/billing/usage/batch",
        {"events": [{"metric": "tokens", "quantity": 1}]},
        "a",
        "usage:write",
    ),
    ("POST", "/api/billing/usage/consume", {"metric": "tokens", "quantity": 1}, "a", "usage:write"),
    ("POST", "/api/billing/usage/cancel", {"idempotency_key": "k"}, "a", "usage:write"),
    ("POST", "/api/billing/quota/check", {"metric": "tokens", "quantity": 1}, "a", "usage:read"),
]
# Endpoints that take no credentials (or Stripe's signature): outside the scope rule.
PUBLIC_ROUTES = {
    ("GET", "/api/health"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/signup"),
    ("GET", "/api/auth/oidc/login"),
    ("GET", "/api/auth/oidc/callback"),
    ("POST", "/api/billing/webhook"),
}
# What an allowed call answers here (no Stripe is reachable in this test: checkout
# gets as far as calling it; alice has no billing account for the portal yet, nor an
# event to cancel).
ALLOWED_STATUS = {
    "/api/billing/checkout": 502,
    "/api/billing/portal": 409,
    "/api/billing/usage/cancel": 404,
}
KEY_KINDS = ["unscoped", "usage:read", "usage:write"]


@pytest.fixture
def scoped_keys(actors):
    """{(owner, kind): secret} for alice, the admin and a service, one key per kind."""
    keys = {}
    with session_scope() as s:
        for owner, user in (("a", actors.a), ("admin", actors.admin), ("service", None)):
            for kind in KEY_KINDS:
                scopes = [] if kind == "unscoped" else [kind]
                keys[owner, kind] = api_keys.create_key(
                    s,
                    name=f"{owner} {kind}",
                    user_id=user.id if user else None,
                    service_name=None if user else "reader",
                    scopes=scopes,
                )[1]
    return keys


def _written() -> tuple[int, ...]:
    """Row counts a refused call must leave alone: keys, revocations, usage, quota
    audit, sessions, Stripe customers."""
    with session_scope() as s:
        counts = (
            s.scalar(sa.select(sa.func.count()).select_from(ApiKey)),
            s.scalar(sa.select(sa.func.count()).where(ApiKey.revoked_at.is_not(None))),
            s.scalar(sa.select(sa.func.count()).select_from(UsageEvent)),
            s.scalar(sa.select(sa.func.count()).select_from(QuotaAudit)),
            s.scalar(sa.select(sa.func.count()).where(AuthSession.revoked_at.is_not(None))),
            s.scalar(sa.select(sa.func.count()).where(User.stripe_customer_id.is_not(None))),
        )
    return counts


def _scoped_ids(routes):
    return [f"{m} {p}" for m, p, *_ in routes]


def test_scope_matrix_covers_every_authenticated_route(api):
    """A new route must be added to SCOPED_ROUTES (or PUBLIC_ROUTES) to pass."""
    routes = {
        (method.upper(), path) for path, ops in api.openapi()["paths"].items() for method in ops
    }
    covered = {(m, p.split("?")[0]) for m, p, *_ in SCOPED_ROUTES}
    covered = {
        (m, p.replace("{b}", "{user_id}").replace("{b_key}", "{key_id}")) for m, p in covered
    }
    assert routes - PUBLIC_ROUTES == covered


@pytest.fixture
def no_stripe(monkeypatch):
    """Stripe at a port nothing listens on, whatever runs on this machine (a `make run`
    beside the tests has its sandbox on the default port)."""
    from billing_app.settings import get_settings

    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:1")
    get_settings.cache_clear()


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize(
    ("method", "path", "body", "owner", "needs"), SCOPED_ROUTES, ids=_scoped_ids(SCOPED_ROUTES)
)
def test_scoped_keys_reach_only_what_their_scopes_name(
    actors, scoped_keys, no_stripe, method, path, body, owner, needs, kind, lane
):
    client = actors.key_client(scoped_keys[owner, kind])
    if lane == "fastapi":
        client.headers["Origin"] = ORIGIN
    before = _written()
    r = _call(client, method, path, body, actors)
    allowed = kind == "unscoped" or kind == needs
    if allowed:
        assert r.status_code in {ALLOWED_STATUS.get(path, 200), 201}, r.text
        return
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "forbidden"
    if needs is ANY_SCOPE:
        assert error["message"] == (
            f"This API key is limited to scopes {kind}; this endpoint needs an "
            "unrestricted key or a signed-in session."
        )
        assert error["scopes"] == [kind]
    else:
        assert error["scope"] == needs and needs in error["message"]
    assert _written() == before


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_an_admins_read_only_key_cannot_escalate(actors, scoped_keys, lane):
    """The reviewer's case: an admin's usage:read key must not mint an unscoped service
    key, change a quota, or revoke a key; all three are refused with nothing written."""
    client = actors.key_client(scoped_keys["admin", "usage:read"])
    if lane == "fastapi":
        client.headers["Origin"] = ORIGIN
    minted = client.post("/api/billing/admin/api-keys", json={"name": "x", "service_name": "x"})
    assert minted.status_code == 403 and "secret" not in minted.text
    quota = client.put(
        f"/api/billing/admin/users/{actors.a.id}/quota",
        json={"metric": "tokens", "limit": 0, "reason": "unlimited please"},
    )
    assert quota.status_code == 403
    revoke = client.delete(f"/api/billing/admin/api-keys/{_b_key_id(actors)}")
    assert revoke.status_code == 403
    with session_scope() as s:
        keys = api_keys.list_keys(s)
        assert not any(k.service_name == "x" for k in keys)
        assert all(k.revoked_at is None for k in keys)
        tokens = next(q for q in quotas.get_quotas(s, actors.a.id) if q.metric == "tokens")
        assert tokens.source == "plan" and not tokens.unlimited
    # the same admin's unscoped key and session still may
    assert (
        actors.key_client(scoped_keys["admin", "unscoped"])
        .put(
            f"/api/billing/admin/users/{actors.a.id}/quota",
            json={"metric": "tokens", "limit": 0, "reason": "ok"},
        )
        .status_code
        == 200
    )


def test_sessions_are_not_restricted_by_scopes(actors):
    c = actors.cookie_client(actors.admin)
    assert c.get("/api/billing/usage").status_code == 200
    assert (
        c.post("/api/billing/admin/api-keys", json={"name": "y", "service_name": "y"}).status_code
        == 201
    )
