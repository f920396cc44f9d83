"""The fast lane answers exactly as the FastAPI routes it stands in front of.

Every case is sent twice with a bearer key: once to production's composition (the lane
answers) and once to the bare FastAPI app (its routes answer). Status, error body and
the success shape must match; volatile fields (ids, timestamps) are compared by type.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from billing_app.api import fast_lane, service_routes
from billing_app.api.app import create_api
from billing_app.db import session_scope
from billing_app.models import UsageEvent
from billing_app.services import api_keys, metering
from tests.api.conftest import ORIGIN

# Both sides write to the same users, so counter values differ by what the other wrote.
VOLATILE = {"id", "recorded_at", "occurred_at", "canceled_at", "idempotency_key", "used",
            "remaining", "percent"}  # fmt: skip


def _shape(value: Any) -> Any:
    """The body with volatile fields reduced to their type."""
    if isinstance(value, dict):
        return {k: type(v).__name__ if k in VOLATILE else _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


@pytest.fixture
def pair(actors, app_settings):
    def clients(secret: str) -> tuple[TestClient, TestClient]:
        auth = {"Authorization": f"Bearer {secret}"}
        lane = TestClient(actors.api, base_url=ORIGIN, headers=auth)
        plain = TestClient(create_api(), base_url=ORIGIN, headers=auth)
        return lane, plain

    return clients


def _both(pair_clients, path: str, body: Any, tag: str, headers: dict | None = None):
    """Send to both; a JSON body's idempotency key gets a per-side suffix so both write."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    out = []
    for side, client in zip(("lane", "plain"), pair_clients, strict=True):
        if isinstance(body, dict):
            b = dict(body)
            if "idempotency_key" in b:
                b["idempotency_key"] = f"{b['idempotency_key']}-{side}"
            if "events" in b:
                b["events"] = [
                    {**e, "idempotency_key": f"{e['idempotency_key']}-{side}"}
                    if "idempotency_key" in e
                    else e
                    for e in b["events"]
                ]
            content = json.dumps(b).encode()
        else:
            content = body
        out.append(client.post(path, content=content, headers=headers))
    lane, plain = out
    assert lane.status_code == plain.status_code, (tag, lane.text, plain.text)
    assert _shape(lane.json()) == _shape(plain.json()), (tag, lane.text, plain.text)
    assert lane.headers.get("www-authenticate") == plain.headers.get("www-authenticate")
    assert lane.headers.get("preference-applied") == plain.headers.get("preference-applied")
    assert lane.headers.get_list("cache-control") == plain.headers.get_list("cache-control")
    assert lane.headers.get_list("cache-control") == ["no-store"], tag
    return lane


def test_lane_and_routes_answer_alike(actors, pair):
    svc = pair(actors.service_key)
    a, b = actors.a.id, actors.b.id
    usage = "/api/billing/usage"
    cancel = "/api/billing/usage/cancel"
    cases: list[tuple[str, str, Any, int]] = [
        ("record", usage, {"user_id": a, "metric": "tokens", "quantity": 5,
                           "idempotency_key": "k1", "metadata": {"m": 1}}, 201),
        ("duplicate", usage, {"user_id": a, "metric": "tokens", "quantity": 5,
                              "idempotency_key": "k1", "metadata": {"m": 1}}, 200),
        ("conflict", usage, {"user_id": a, "metric": "tokens", "quantity": 6,
                             "idempotency_key": "k1"}, 409),
        ("unknown metric", usage, {"user_id": a, "metric": "gpus", "quantity": 1}, 422),
        ("string quantity", usage, {"user_id": a, "metric": "tokens", "quantity": "5"}, 422),
        ("missing field", usage, {"user_id": a, "metric": "tokens"}, 422),
        ("no user_id", usage, {"metric": "tokens", "quantity": 1}, 422),
        ("unknown user", usage, {"user_id": 999_999, "metric": "tokens", "quantity": 1}, 404),
        ("future", usage, {"user_id": a, "metric": "tokens", "quantity": 1,
                           "occurred_at": "2999-01-01T00:00:00Z"}, 422),
        ("malformed", usage, b'{"user_id": 1,', 400),
        ("empty body", usage, b"", 422),
        ("check", "/api/billing/quota/check", {"user_id": a, "metric": "tokens"}, 200),
        ("consume", "/api/billing/usage/consume", {"user_id": b, "metric": "scraping_tasks",
                                                   "quantity": 1, "idempotency_key": "c1"}, 201),
        ("over limit", "/api/billing/usage/consume", {"user_id": b, "metric": "scraping_tasks",
                                                      "quantity": 10**6}, 403),
        ("cancel", cancel, {"user_id": b, "idempotency_key": "c1"}, 200),
        ("cancel again", cancel, {"user_id": b, "idempotency_key": "c1"}, 200),
        ("cancel unknown", cancel, json.dumps({"user_id": b, "idempotency_key": "no"}).encode(),
         404),
        ("cancel without key", cancel, {"user_id": b}, 422),
        ("batch", "/api/billing/usage/batch", {"events": [
            {"user_id": a, "metric": "api_calls", "quantity": 1, "idempotency_key": "b1"},
            {"user_id": b, "metric": "api_calls", "quantity": 2, "idempotency_key": "b2"},
        ]}, 201),
        ("bad batch", "/api/billing/usage/batch", {"events": [
            {"user_id": a, "metric": "api_calls", "quantity": 1},
            {"user_id": a, "metric": "nope", "quantity": -1},
        ]}, 422),
    ]  # fmt: skip
    for tag, path, body, status in cases:
        r = _both(svc, path, body, tag)
        assert r.status_code == status, (tag, r.text)

    # a batch asking for the counts only
    batch = {
        "events": [{"user_id": a, "metric": "api_calls", "quantity": 1, "idempotency_key": "m1"}]
    }
    r = _both(
        svc, "/api/billing/usage/batch", batch, "minimal", headers={"Prefer": "return=minimal"}
    )
    assert r.json() == {"recorded": 1, "duplicates": 0}
    assert r.headers["preference-applied"] == "return=minimal"
    # header key vs body key
    body = {"user_id": a, "metric": "tokens", "quantity": 1, "idempotency_key": "x"}
    _both(svc, usage, json.dumps(body).encode(), "keys differ", headers={"Idempotency-Key": "y"})
    # a user's key acting for someone else; a key that does not exist
    r = _both(pair(actors.a_key), usage, {"user_id": b, "metric": "tokens", "quantity": 1}, "403")
    assert r.status_code == 403
    r = _both(pair("bk_live_nope_nope"), usage, {"metric": "tokens", "quantity": 1}, "401")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    # Stripe's deliveries: a bad signature, a missing one (the good path: tests/stripe)
    hook = "/api/billing/webhook"
    r = _both(svc, hook, b'{"id": "evt_1"}', "bad sig", headers={"Stripe-Signature": "t=1,v1=00"})
    assert r.status_code == 400
    assert _both(svc, hook, b'{"id": "evt_1"}', "no sig").status_code == 400
    # too large, by Content-Length
    big = json.dumps({"metric": "tokens", "quantity": 1, "metadata": {"x": "a" * (1 << 20)}})
    assert _both(svc, usage, big.encode(), "413").status_code == 413


def test_lane_serves_bearer_calls_and_passes_the_rest_on(actors, monkeypatch):
    def fastapi_route_was_used(_request):
        raise AssertionError("served by the FastAPI route")

    monkeypatch.setattr(service_routes, "_caller", fastapi_route_was_used)
    c = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/usage", json=body).status_code == 201
    # Session callers go on to FastAPI (which now fails loudly, proving where it went).
    monkeypatch.undo()
    browser = actors.cookie_client(actors.a)
    r = browser.post("/api/billing/usage", json={"metric": "tokens", "quantity": 1})
    assert r.status_code == 201, r.text
    # Other content types go on to FastAPI too, which answers them its own way.
    r = c.post("/api/billing/usage", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code in (400, 415, 422), r.text


def test_usage_summary_alike(actors, pair):
    user = pair(actors.a_key)
    user[0].post("/api/billing/usage", json={"metric": "tokens", "quantity": 42})
    for query in ("", "?history=daily", "?history=weekly"):
        lane, plain = (c.get(f"/api/billing/usage{query}") for c in user)
        assert (lane.status_code, lane.json()) == (plain.status_code, plain.json()), query
        assert lane.headers["cache-control"] == plain.headers["cache-control"] == "no-store"
    assert lane.status_code == 422  # the last query: not served by the lane, validated by FastAPI
    tokens = next(m for m in user[0].get("/api/billing/usage").json()["metrics"])
    assert tokens["metric"] == "tokens" and tokens["used"] == 42
    service = pair(actors.service_key)
    lane, plain = (c.get("/api/billing/usage") for c in service)
    assert lane.status_code == plain.status_code == 422  # a service key names the user
    assert lane.json() == plain.json()


def test_usage_of_a_user_alike(actors, pair, monkeypatch):
    """GET /usage?user_id=: the same answer from both lanes for every caller and query;
    the lane serves the plain forms itself and passes any other on to FastAPI."""
    a, b = actors.a.id, actors.b.id
    with session_scope() as s:
        metering.record(s, a, "tokens", 11)
        metering.record(s, b, "tokens", 22)
        reader, writer_ = (
            api_keys.create_key(s, name=scope, service_name="svc", scopes=[scope])[1]
            for scope in ("usage:read", "usage:write")
        )
    reached_fastapi: list[bytes] = []
    api = create_api()

    async def behind(scope, receive, send):  # what the lane passes on
        reached_fastapi.append(scope["query_string"])
        await api(scope, receive, send)

    def clients(secret: str) -> tuple[TestClient, TestClient]:
        auth = {"Authorization": f"Bearer {secret}"}
        return (
            TestClient(fast_lane.fast_lane(behind), base_url=ORIGIN, headers=auth),
            TestClient(create_api(), base_url=ORIGIN, headers=auth),
        )

    A, B = 11, 22  # what a and b used: whose usage a 200 answers
    served = [  # (key, query, status or whose tokens): answered by the lane itself
        (actors.service_key, f"user_id={b}", B),
        (actors.service_key, f"user_id={a}&history=daily", A),
        (actors.service_key, f"history=daily&user_id={b}", B),
        (actors.service_key, "", 422),
        (actors.service_key, "history=daily", 422),
        (actors.service_key, "user_id=999999", 404),
        (actors.service_key, f"user_id={2**31 - 1}", 404),
        (reader, f"user_id={b}", B),
        (reader, "", 422),
        (writer_, f"user_id={b}", 403),
        (writer_, "", 403),
        (actors.a_key, "", A),
        (actors.a_key, f"user_id={a}", A),
        (actors.a_key, f"user_id={a}&history=daily", A),
        (actors.a_key, f"user_id={b}", 403),
        (actors.a_key, "user_id=999999", 403),
        ("bk_live_nope_nope", f"user_id={b}", 401),
    ]
    passed_on = [  # (key, query, status or whose tokens): validated and answered by FastAPI
        (actors.service_key, "user_id=0", 422),
        (actors.service_key, "user_id=-1", 422),
        (actors.service_key, "user_id=abc", 422),
        (actors.service_key, "user_id=", 422),
        (actors.service_key, f"user_id={2**31}", 422),
        (actors.service_key, "user_id=99999999999999999999", 422),
        (actors.service_key, f"user_id=0{b}", B),
        (actors.service_key, f"user_id=%3{b}", B),  # its first digit percent-encoded
        (actors.service_key, f"user_id={a}&user_id={b}", B),  # repeated: FastAPI's pick
        (actors.service_key, f"user_id={b}&history=weekly", 422),
        (actors.service_key, f"user_id={b}&other=1", B),
        (actors.service_key, f"user_id={b}&", B),
        (writer_, "user_id=abc", 403),  # the scope is refused before the query is read
        (actors.a_key, f"user_id={b}&history=daily&history=daily", 403),
    ]
    for served_here, cases in ((True, served), (False, passed_on)):
        for secret, query, expected in cases:
            reached_fastapi.clear()
            lane, plain = (c.get(f"/api/billing/usage?{query}") for c in clients(secret))
            tag = (secret[:12], query)
            assert (lane.status_code, lane.json()) == (plain.status_code, plain.json()), tag
            assert reached_fastapi == ([] if served_here else [query.encode()]), tag
            if expected in (A, B):
                assert lane.status_code == 200, (tag, lane.text)
                tokens = next(m for m in lane.json()["metrics"] if m["metric"] == "tokens")
                assert tokens["used"] == expected, tag
            else:
                assert lane.status_code == expected, (tag, lane.text)


def test_calls_from_a_browser_page_take_the_apps_cors_layers(actors, monkeypatch):
    """In production the lane stands in front of Reflex's layers (CORS among them), so a
    request carrying an Origin (a page calling the API) goes on to them."""
    served_by_route = []
    real = service_routes._caller
    monkeypatch.setattr(service_routes, "_caller", lambda r: served_by_route.append(1) or real(r))
    c = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/usage", json=body).status_code == 201
    assert served_by_route == []
    r = c.post("/api/billing/usage", json=body, headers={"Origin": "https://app.example"})
    assert r.status_code == 201, r.text
    assert served_by_route == [1]


def test_read_thread_refuses_at_once_when_its_backlog_is_full():
    """If the database hangs, quota checks get a 503 instead of queueing without end:
    past the backlog bound at once, and a read that waited too long is dropped unrun."""
    import asyncio
    import threading

    from billing_app.api import errors, fast_lane
    from billing_app.errors import ServiceUnavailable

    reads = fast_lane._Reads()
    reads.MAX_BACKLOG = 3
    reads.MAX_WAIT = 0.3
    release = threading.Event()
    ran: list[str] = []

    async def scenario() -> None:
        # The first read hangs (as on a hung database); two more wait behind it.
        hung = asyncio.create_task(reads.run(release.wait, 10))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(reads.run(ran.append, n)) for n in ("a", "b")]
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailable) as refused:
            await reads.run(ran.append, "over the bound")
        response = errors.response_for(refused.value)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        await asyncio.sleep(reads.MAX_WAIT)
        release.set()
        assert await hung is True
        for task in waiting:  # their turn came after MAX_WAIT: refused, never run
            with pytest.raises(ServiceUnavailable):
                await task
        assert ran == [] and reads.backlog == 0
        assert await reads.run(lambda: "served again") == "served again"

    asyncio.run(scenario())


def _tokens_used(user_id: int) -> int:
    with session_scope() as s:
        return next(m.used for m in metering.summary(s, user_id) if m.metric == "tokens")


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_repeated_authorization_or_idempotency_key_is_refused_over_http(
    actors, live_server, lane
):
    """Two Authorization headers could name two users (the lanes once picked different
    ones); two Idempotency-Keys two retries (one could count twice). Both lanes refuse
    with the same 400 and record nothing, over real HTTP."""
    alice, bob = (f"Bearer {k}" for k in (actors.a_key, actors.b_key))
    browser = [("origin", ORIGIN)] if lane == "fastapi" else []  # Origin: on to FastAPI
    json_type = [("content-type", "application/json")]
    body = json.dumps({"metric": "tokens", "quantity": 1}).encode()
    cases = [
        ("Authorization", [("authorization", alice), ("authorization", bob)]),
        ("Authorization", [("authorization", alice), ("authorization", alice)]),
        (
            "Idempotency-Key",
            [("authorization", alice), ("idempotency-key", "k1"), ("idempotency-key", "k2")],
        ),
    ]
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        for name, headers in cases:
            for method, path in (("POST", "/api/billing/usage"), ("GET", "/api/billing/usage")):
                r = c.request(
                    method,
                    path,
                    content=body if method == "POST" else None,
                    headers=headers + json_type + browser,
                )
                assert r.status_code == 400, (name, method, r.text)
                assert r.json()["error"] == {
                    "code": "repeated_header",
                    "message": f"The {name} header was sent more than once; send it once.",
                    "header": name,
                }
        # one of each is fine
        ok = c.post(
            "/api/billing/usage",
            content=body,
            headers=[("authorization", alice), ("idempotency-key", "k1"), *json_type, *browser],
        )
        assert ok.status_code == 201, ok.text
    assert (_tokens_used(actors.a.id), _tokens_used(actors.b.id)) == (1, 0)


def test_the_lane_reads_the_first_of_a_repeated_header_as_fastapi_does(actors, pair):
    """Other repeated headers: the lane takes the first, as Starlette does, so a body
    sent as text/plain and then application/json is handled alike by both."""
    body = json.dumps({"metric": "tokens", "quantity": 1}).encode()
    headers = [("content-type", "text/plain"), ("content-type", "application/json")]
    lane, plain = (
        c.post("/api/billing/usage", content=body, headers=headers) for c in pair(actors.a_key)
    )
    assert (lane.status_code, lane.json()) == (plain.status_code, plain.json())


def test_whitespace_and_byte_order_mark_bodies_are_answered_alike(actors, pair):
    """Only a body with no bytes is "missing" (422); whitespace alone is malformed JSON
    (400); a UTF-8 byte order mark before good JSON is accepted (RFC 8259 8.1 allows it,
    FastAPI's parser does), in both lanes."""
    svc = pair(actors.service_key)
    a = actors.a.id
    bom = b"\xef\xbb\xbf"
    event = json.dumps({"user_id": a, "metric": "tokens", "quantity": 1}).encode()
    for path, good, good_status in (
        ("/api/billing/usage", event, 201),
        ("/api/billing/usage/consume", event, 201),
        ("/api/billing/quota/check", event, 200),
        ("/api/billing/usage/batch", b'{"events": [%s]}' % event, 201),
    ):
        for tag, body, status in (
            ("whitespace", b"  \r\n\t ", 400),
            ("empty", b"", 422),
            ("bom only", bom, 400),
            ("bom and whitespace", bom + b"  ", 400),
            ("bom and json", bom + good, good_status),
            # json.loads (FastAPI) reads UTF-16 and UTF-32 too, with or without a BOM.
            ("utf-16", good.decode().encode("utf-16"), good_status),
            ("utf-16-be", good.decode().encode("utf-16-be"), good_status),
            ("utf-32-le", good.decode().encode("utf-32-le"), good_status),
            ("utf-16, cut short", good.decode().encode("utf-16-le")[:-1], 400),
            ("not utf-8", good[:-1] + b'"\xff"', 400),
        ):
            r = _both(svc, path, body, f"{path} {tag}")
            assert r.status_code == status, (path, tag, r.text)
            if status == 400:
                assert r.json()["error"]["code"] == "malformed_json"
    # each lane recorded the good writes, four encodings each: usage, consume, batch
    assert _tokens_used(a) == 24


def test_a_utf8_idempotency_key_header_is_read_alike(actors, pair):
    """An Idempotency-Key sent as UTF-8 bytes is that key in both lanes (it was read as
    Latin-1): the same answers, step by step, and each side's events under its own key."""
    usage, consume = "/api/billing/usage", "/api/billing/usage/consume"
    cancel, batch = "/api/billing/usage/cancel", "/api/billing/usage/batch"
    one = {"metric": "tokens", "quantity": 1}
    steps: list[tuple[str, str, str, dict[str, Any], str, int]] = [
        # (tag, key's name, path, body without the key, where the key goes, status)
        ("header", "r", usage, one, "header", 201),
        ("body retry", "r", usage, one, "body", 200),
        ("both", "r", usage, one, "both", 200),
        ("consume", "c", consume, one, "header", 201),
        ("consume retry", "c", consume, one, "body", 200),
        ("cancel", "c", cancel, {}, "header", 200),
        ("cancel again", "c", cancel, {}, "both", 200),
        ("batch", "b", batch, {"events": [one]}, "header", 201),
        ("batch retry", "b", batch, {"events": [one]}, "header", 200),
    ]
    json_type = {"Content-Type": "application/json"}
    sides = dict(zip(("lane", "plain"), pair(actors.a_key), strict=True))
    for tag, name, path, body, where, status in steps:
        answers = []
        for side, client in sides.items():
            key = f"{name}-résumé-{side}"
            sent = {**body, "idempotency_key": key} if where in ("body", "both") else body
            headers: dict[str, Any] = {**json_type}
            if where != "body":
                headers["Idempotency-Key"] = key.encode()  # UTF-8 bytes on the wire
            r = client.post(path, content=json.dumps(sent).encode(), headers=headers)
            assert r.status_code == status, (tag, side, r.text)
            event = (r.json().get("results") or [r.json()])[0]["event"]
            assert event["idempotency_key"] == (key + "#0" if path == batch else key), tag
            answers.append(_shape(r.json()))
        assert answers[0] == answers[1], (tag, answers)
    with session_scope() as s:
        keys = s.exec(sa.select(UsageEvent.idempotency_key)).scalars().all()
    assert sorted(keys) == sorted(
        f"{name}-résumé-{side}{'#0' if name == 'b' else ''}" for side in sides for name in "rcb"
    )
