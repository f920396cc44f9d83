"""/api/openapi.json against what the server answers a service, over real HTTP: every
status, every field of every answer and the headers a client acts on (Retry-After,
Preference-Applied, WWW-Authenticate) are documented where they occur. Schemathesis
checks that answers fit the schema; a field or header the schema does not name passes
there, and an engineer reading /api/docs never learns of it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from billing_app.clock import utcnow
from billing_app.db import session_scope
from billing_app.models import Invoice
from tests.api.conftest import http
from tests.conftest import _clear_caches
from tests.factories import make_subscription

# Objects whose keys are the caller's own, by design.
FREE_FORM = ("metadata",)
# Headers a client acts on: each must be documented for the status it comes with.
ACTED_ON = ("retry-after", "preference-applied", "www-authenticate")


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _branch(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> dict[str, Any]:
    """The anyOf branch that documents `value`'s JSON type."""
    schema = _resolve(spec, schema)
    want = {dict: "object", list: "array", type(None): "null"}.get(type(value))
    for option in schema.get("anyOf", []):
        option = _resolve(spec, option)
        if (
            want is None
            or option.get("type") == want
            or (want == "object" and "properties" in option)
        ):
            return option
    return schema


def undocumented(spec: dict[str, Any], schema: dict[str, Any], value: Any, at: str) -> list[str]:
    """Where `value` holds fields its schema does not name (or a required one is missing),
    or a documented time not in UTC with a Z."""
    schema = _branch(spec, schema, value)
    if isinstance(value, list):
        items = schema.get("items", {})
        return [p for i, v in enumerate(value) for p in undocumented(spec, items, v, f"{at}[{i}]")]
    if schema.get("format") == "date-time" and isinstance(value, str):
        # The README: "Every time in an answer is ISO 8601 in UTC with a `Z`".
        return [] if value.endswith("Z") else [f"{at}: {value!r} is not UTC with a Z"]
    if not isinstance(value, dict):
        return []
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    if props is None:
        if isinstance(extra, dict) and extra:  # a typed map
            return [p for k, v in value.items() for p in undocumented(spec, extra, v, f"{at}.{k}")]
        if value and not at.endswith(FREE_FORM):
            return [f"{at}: an object whose fields are not documented ({sorted(value)})"]
        return []
    problems = [f"{at}.{k}: missing" for k in schema.get("required", []) if k not in value]
    for k, v in value.items():
        if k in props:
            problems += undocumented(spec, props[k], v, f"{at}.{k}")
        elif extra is not True:  # open models (an error's details) may carry more
            problems.append(f"{at}.{k}: not documented")
    return problems


class Documented:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.problems: list[str] = []

    def check(self, template: str, r: httpx.Response) -> httpx.Response:
        """Note what of `r` the spec does not document for `template`."""
        method = r.request.method
        where = f"{method} {template} {r.status_code}"
        responses = self.spec["paths"][template][method.lower()]["responses"]
        doc = responses.get(str(r.status_code))
        if doc is None:
            self.problems.append(f"{where}: status not documented")
            return r
        headers = {name.lower() for name in doc.get("headers", {})}
        for name in ACTED_ON:
            if name in r.headers and name not in headers:
                self.problems.append(f"{where}: header {name} not documented")
        schema = doc.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            self.problems += undocumented(self.spec, schema, r.json(), where)
        return r


@pytest.fixture
def documented(live_server) -> Documented:
    with httpx.Client(base_url=live_server.url) as c:
        return Documented(c.get("/api/openapi.json").json())


def _customer(actors) -> int:
    """User A with a subscription and an invoice, as the webhooks store them."""
    uid = actors.a.id
    now = utcnow()
    with session_scope() as s:
        make_subscription(
            s,
            uid,
            plan="basic",
            current_period_start=now - timedelta(days=3),
            current_period_end=now + timedelta(days=27),
        )
        s.add(
            Invoice(
                stripe_invoice_id="in_doc",
                user_id=uid,
                number="DOC-1",
                status="paid",
                amount_due=1900,
                amount_paid=1900,
                total=1900,
            )
        )
        s.commit()
    return uid


def test_every_field_answered_to_a_service_is_documented(live_server, actors, documented):
    uid = _customer(actors)
    ok = documented.check
    with http(live_server, actors.service_key) as svc:
        write = {"user_id": uid, "metric": "tokens", "quantity": 5, "idempotency_key": "d-1"}
        ok("/api/billing/usage", svc.post("/api/billing/usage", json=write))
        ok("/api/billing/usage", svc.post("/api/billing/usage", json=write))  # a duplicate
        ok("/api/billing/usage", svc.post("/api/billing/usage", json={**write, "quantity": 6}))
        ok("/api/billing/usage", svc.post("/api/billing/usage", json={**write, "user_id": 99999}))
        ok(
            "/api/billing/usage",
            svc.post("/api/billing/usage", json={"metric": "x", "quantity": 0}),
        )
        consume = {"user_id": uid, "metric": "scraping_tasks", "quantity": 1}
        ok("/api/billing/usage/consume", svc.post("/api/billing/usage/consume", json=consume))
        over = {**consume, "quantity": 10_000}
        r = ok("/api/billing/usage/consume", svc.post("/api/billing/usage/consume", json=over))
        assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"
        check = {"user_id": uid, "metric": "tokens", "quantity": 10}
        ok("/api/billing/quota/check", svc.post("/api/billing/quota/check", json=check))
        cancel = {"user_id": uid, "idempotency_key": "d-1"}
        ok("/api/billing/usage/cancel", svc.post("/api/billing/usage/cancel", json=cancel))
        gone = {**cancel, "idempotency_key": "nope"}
        ok("/api/billing/usage/cancel", svc.post("/api/billing/usage/cancel", json=gone))
        events = {"events": [{"user_id": uid, "metric": "api_calls", "quantity": 1}]}
        ok("/api/billing/usage/batch", svc.post("/api/billing/usage/batch", json=events))
        bad = {"events": [{"user_id": uid, "metric": "api_calls", "quantity": -1}]}
        ok("/api/billing/usage/batch", svc.post("/api/billing/usage/batch", json=bad))
        for path in ("usage", "quota", "subscription", "invoices"):
            r = ok(f"/api/billing/{path}", svc.get(f"/api/billing/{path}", params={"user_id": uid}))
            assert r.status_code == 200, r.text
        r = svc.get("/api/billing/usage", params={"user_id": uid, "history": "daily"})
        ok("/api/billing/usage", r)
        sub = svc.get("/api/billing/subscription", params={"user_id": uid}).json()
        invoices = svc.get("/api/billing/invoices", params={"user_id": uid}).json()
    # The answers had something to document.
    assert sub["subscription"]["plan"] == "basic" and invoices["items"][0]["number"] == "DOC-1"
    assert documented.problems == []


def test_the_headers_a_client_acts_on_are_documented(live_server, actors, documented, monkeypatch):
    ok = documented.check
    with http(live_server, actors.service_key) as svc:
        events = {"events": [{"user_id": actors.a.id, "metric": "tokens", "quantity": 1}]}
        minimal = {"Prefer": "return=minimal", "Idempotency-Key": "batch-1"}
        for status in (201, 200):  # recorded, then all duplicates
            r = svc.post("/api/billing/usage/batch", json=events, headers=minimal)
            assert r.status_code == status and r.headers["preference-applied"] == "return=minimal"
            ok("/api/billing/usage/batch", r)
    with http(live_server, "bk_live_nope_nope") as stranger:
        r = stranger.get("/api/billing/usage", params={"user_id": actors.a.id})
        assert r.status_code == 401 and r.headers["www-authenticate"]
        ok("/api/billing/usage", r)

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    _clear_caches()
    with http(live_server, actors.service_key) as svc:
        write = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
        for path in ("/api/billing/usage", "/api/billing/usage/consume"):
            r = ok(path, svc.post(path, json=write))
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
        r = ok("/api/billing/quota", svc.get("/api/billing/quota", params={"user_id": 1}))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert documented.problems == []


# The statuses each service write can answer besides the common ones (400, 401, 403, 404,
# 413, 415, 422, 429, 503): a 409 only where a stored key can clash.
CONFLICTS = {
    "/api/billing/usage": True,
    "/api/billing/usage/batch": True,
    "/api/billing/usage/consume": True,
    "/api/billing/usage/cancel": True,
    "/api/billing/quota/check": False,
}


@pytest.mark.parametrize(("path", "conflicts"), CONFLICTS.items(), ids=list(CONFLICTS))
def test_a_409_is_documented_only_where_it_can_be_answered(documented, path, conflicts):
    """A check reads only: documenting a 409 on it sends an engineer looking for a clash
    that never comes."""
    responses = documented.spec["paths"][path]["post"]["responses"]
    assert ("409" in responses) is conflicts


def test_every_documented_503_says_it_carries_retry_after(documented):
    """The client waits what Retry-After asks: an engineer reading /api/docs learns it
    for every 503, the webhook's and the CSV exports' too."""
    missing = [
        f"{method.upper()} {path}"
        for path, item in documented.spec["paths"].items()
        for method, op in item.items()
        if "503" in op.get("responses", {})
        and "Retry-After" not in op["responses"]["503"].get("headers", {})
    ]
    assert missing == []


def test_every_503_answered_carries_retry_after(live_server, actors, documented, engine):
    """Not only the database's outage: the health check of an un-migrated database, an
    unreachable identity provider, a webhook delivery that could not be stored."""
    import sqlalchemy as sa

    from billing_app.api import auth_routes, webhook
    from billing_app.db import schema_head

    ok = documented.check

    class Unreachable:
        async def authorize_redirect(self, *_args: Any) -> None:
            raise OSError("no route to the identity provider")

    def cannot_store(*_args: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))

    def set_revision(revision: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})

    answers = []
    with httpx.Client(base_url=live_server.url) as anon:
        set_revision("0007")
        try:
            answers.append(("/api/health", anon.get("/api/health")))
        finally:
            set_revision(schema_head())
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(auth_routes, "oidc_client", Unreachable)
            answers.append(("/api/auth/oidc/login", anon.get("/api/auth/oidc/login")))
            mp.setattr(webhook, "_handle", cannot_store)
            signed = {"Stripe-Signature": "x"}  # not read: the delivery fails before
            hook = anon.post("/api/billing/webhook", content=b"{}", headers=signed)
            answers.append(("/api/billing/webhook", hook))
    for path, r in answers:
        assert r.status_code == 503, (path, r.text)
        assert r.headers.get("retry-after") == "5", (path, dict(r.headers))
        ok(path, r)
    assert documented.problems == []


def test_the_admin_user_detail_is_documented_field_by_field(actors, documented):
    """GET /api/billing/admin/users/{id}: its subscription and invoices too, not objects
    of any shape."""
    uid = _customer(actors)
    with actors.cookie_client(actors.admin) as admin:
        r = admin.put(
            f"/api/billing/admin/users/{uid}/quota",
            json={"metric": "tokens", "limit": 5, "reason": "h79 trial"},
        )
        assert r.status_code == 200, r.text
        r = documented.check(
            "/api/billing/admin/users/{user_id}", admin.get(f"/api/billing/admin/users/{uid}")
        )
    assert r.status_code == 200, r.text
    detail = r.json()
    # The answer had something in each part to document.
    assert detail["subscription"]["plan"] == "basic" and detail["invoices"][0]["number"] == "DOC-1"
    assert detail["audit_log"][0]["reason"] == "h79 trial"
    assert documented.problems == []


def test_every_answer_with_a_limit_says_how_unlimited_reads(documented):
    """`limit` is 0 for a metric without one: each schema answering `limit` beside
    `unlimited` says so (and that `remaining` is then null), or a client comparing `used`
    with `limit` would refuse every such user. The write and check answers included."""
    schemas = documented.spec["components"]["schemas"]
    described = []
    for name, schema in schemas.items():
        props = schema.get("properties", {})
        if not {"limit", "unlimited"} <= props.keys():
            continue
        described.append(name)
        assert "0 when unlimited" in props["limit"].get("description", ""), name
        assert "`limit` is 0" in props["unlimited"].get("description", ""), name
        if "remaining" in props:
            assert "null when unlimited" in props["remaining"].get("description", ""), name
    assert {"RecordOut", "CancelOut", "CheckOut", "MeterOut", "QuotaStatusOut"} <= set(described)


def _error_properties(spec: dict[str, Any], path: str, status: str) -> set[str]:
    doc = spec["paths"][path]["post"]["responses"][status]
    answer = _resolve(spec, doc["content"]["application/json"]["schema"])
    return set(_resolve(spec, answer["properties"]["error"])["properties"])


def test_a_quota_exceeded_and_a_reused_key_name_each_of_their_fields(
    live_server, actors, documented
):
    """An error's model is open (details pass as extras), so /api/docs named a 403
    `quota_exceeded`'s numbers and a 409's `differing_fields` in prose at most: each
    field the answers carry is a documented property of the status's error."""
    uid = actors.a.id
    with http(live_server, actors.service_key) as svc:
        over = {"user_id": uid, "metric": "scraping_tasks", "quantity": 10_000}
        exceeded = svc.post("/api/billing/usage/consume", json=over)
        write = {"user_id": uid, "metric": "tokens", "quantity": 5, "idempotency_key": "h86-d"}
        assert svc.post("/api/billing/usage", json=write).status_code == 201
        reused = {
            path: svc.post(path, json=body)
            for path, body in (
                ("/api/billing/usage", {**write, "quantity": 6}),
                ("/api/billing/usage/consume", {**write, "quantity": 6}),
                ("/api/billing/usage/batch", {"events": [{**write, "quantity": 6}]}),
            )
        }
    assert exceeded.status_code == 403, exceeded.text
    error = exceeded.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert (
        set(error) - _error_properties(documented.spec, "/api/billing/usage/consume", "403")
        == set()
    )
    for path, r in reused.items():
        assert r.status_code == 409, (path, r.text)
        error = r.json()["error"]
        assert error["differing_fields"] == ["quantity"], (path, error)
        assert set(error) - _error_properties(documented.spec, path, "409") == set(), path


def test_the_admin_quota_save_documents_its_409(documented):
    """The README's 409 `quota_busy` for a save that finds the quota row held: the spec
    listed no 409 there, so a generated client had no case for it."""
    put = documented.spec["paths"]["/api/billing/admin/users/{user_id}/quota"]["put"]
    assert "quota_busy" in put["responses"]["409"]["description"]
