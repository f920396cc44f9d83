"""Edges of the API contract an engineer wiring a service meets: a body nested deeper
than a parser goes, batch errors in one shape whatever refused the event, keys the
server would otherwise ignore, and the same answer from both lanes for bodies the fast
lane does not take."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from billing_app.api.app import create_api
from billing_app.db import session_scope
from billing_app.services import api_keys
from tests.api.conftest import ORIGIN
from tests.factories import usage_totals

JSON = {"Content-Type": "application/json"}


def _lanes(actors, secret: str) -> tuple[TestClient, TestClient]:
    """The production composition (the fast lane in front) and FastAPI alone."""
    auth = {"Authorization": f"Bearer {secret}"}
    lane = TestClient(actors.api, base_url=ORIGIN, headers=auth, raise_server_exceptions=False)
    plain = TestClient(create_api(), base_url=ORIGIN, headers=auth, raise_server_exceptions=False)
    return lane, plain


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/auth/signup"])
def test_a_body_nested_deeper_than_the_parser_goes_is_malformed_json_not_a_500(actors, path):
    anon = TestClient(actors.api, base_url=ORIGIN, raise_server_exceptions=False)
    r = anon.post(path, content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "malformed_json"


def test_a_batch_event_without_user_id_is_named_as_every_bad_event_is(actors):
    svc = actors.key_client(actors.service_key)
    r = svc.post(
        "/api/billing/usage/batch",
        json={
            "events": [
                {"user_id": actors.a.id, "metric": "tokens", "quantity": 1},
                {"metric": "tokens", "quantity": 1},  # a service key names the user
                {"user_id": actors.a.id, "metric": "gpus", "quantity": 1},
            ]
        },
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["message"] == "2 of 3 events are invalid; nothing was recorded."
    missing, unknown = error["events"]
    assert missing["index"] == 1 and missing["errors"] == [
        {"field": "user_id", "code": "validation_error", "message": missing["message"]}
    ]
    assert unknown["index"] == 2 and unknown["errors"][0]["field"] == "metric"


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_batch_event_without_user_id_also_names_its_other_problems(actors, lane):
    """No user_id and an unknown metric in one event: the 422 named the user_id alone
    (a single write names both), so the fixed batch met a second 422 for the metric."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    r = svc.post(
        "/api/billing/usage/batch",
        json={"events": [{"metric": "gpus", "quantity": 1, "idempotency_key": "k"}]},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    [event] = error["events"]
    assert (event["index"], event["code"]) == (0, "validation_error")
    assert event["message"] == "user_id is required with a service key."
    assert [(p["field"], p["code"]) for p in event["errors"]] == [
        ("user_id", "validation_error"),
        ("metric", "unknown_metric"),
    ]
    assert [f["field"] for f in error["fields"]] == ["events.0.user_id", "events.0.metric"]
    single = svc.post("/api/billing/usage", json={"metric": "gpus", "quantity": 1})
    assert [f["field"] for f in single.json()["error"]["fields"]] == ["user_id", "metric"]


def test_a_user_key_naming_another_user_in_a_batch_is_refused_whole(actors):
    from billing_app.services import api_keys

    with session_scope() as s:
        own = api_keys.create_key(s, name="mine", user_id=actors.a.id)[1]
    r = actors.key_client(own).post(
        "/api/billing/usage/batch",
        json={"events": [{"metric": "tokens", "quantity": 1, "user_id": actors.b.id}]},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_batch_sent_again_with_the_same_idempotency_key_header_counts_once(actors, lane):
    client = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    events = [
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 5},
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 7, "idempotency_key": "own"},
    ]
    send = lambda: client.post(  # noqa: E731
        "/api/billing/usage/batch", json={"events": events}, headers={"Idempotency-Key": "b-1"}
    )
    first, again = send(), send()
    assert (first.status_code, first.json()["recorded"]) == (201, 2), first.text
    assert (again.status_code, again.json()["duplicates"]) == (200, 2), again.text
    keys = [r["event"]["idempotency_key"] for r in first.json()["results"]]
    assert keys == ["b-1#0", "own"]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (2, 12, 12)
    too_long = client.post(
        "/api/billing/usage/batch", json={"events": events}, headers={"Idempotency-Key": "k" * 251}
    )
    assert too_long.status_code == 422 and "1 to 250" in too_long.json()["error"]["message"]


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_misspelled_field_is_refused_not_ignored(actors, lane):
    """`idempotencyKey` ignored would make the retry count twice."""
    client = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    ev = {"user_id": actors.a.id, "metric": "tokens", "quantity": 5, "idempotencyKey": "job-1"}
    r = client.post("/api/billing/usage", json=ev)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "idempotencyKey"
    assert "spelling" in r.json()["error"]["message"]
    batch = client.post("/api/billing/usage/batch", json={"events": [ev]})
    assert batch.status_code == 422
    assert batch.json()["error"]["events"][0]["errors"][0]["field"] == "idempotencyKey"
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


BODIES = {
    "lone surrogate": b'{"user_id": %d, "metric": "tokens", "quantity": 1, '
    b'"idempotency_key": "k\\ud800"}',
    "array": b"[]",
    "string": b'"x"',
    "null": b"null",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(BODIES))
def test_a_body_the_lane_does_not_take_gets_fastapis_answer(actors, name):
    body = BODIES[name].replace(b"%d", str(actors.a.id).encode())
    lane, plain = _lanes(actors, actors.service_key)
    a = lane.post("/api/billing/usage", content=body, headers=JSON)
    b = plain.post("/api/billing/usage", content=body, headers=JSON)
    assert a.status_code < 500 and (a.status_code, a.json()) == (b.status_code, b.json())


def test_only_application_json_types_are_json_in_both_lanes(actors):
    lane, plain = _lanes(actors, actors.service_key)
    for ctype in ("text/plain+json", "text/json"):
        answers = []
        for i, client in enumerate((lane, plain)):
            body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
            r = client.post(
                "/api/billing/usage",
                content=json.dumps({**body, "idempotency_key": f"{ctype}{i}"}),
                headers={"Content-Type": ctype},
            )
            answers.append((r.status_code, r.json()["error"]["code"]))
        assert answers == [(415, "unsupported_media_type")] * 2, (ctype, answers)
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


def test_a_streamed_body_over_the_limit_is_the_same_413_in_both_lanes(actors):
    def chunks():
        yield b'{"user_id": 1, "metric": "tokens", "quantity": 1, "metadata": {"x": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}}'

    lane, plain = _lanes(actors, actors.service_key)
    a = lane.post("/api/billing/usage", content=chunks(), headers=JSON)
    b = plain.post("/api/billing/usage", content=chunks(), headers=JSON)
    assert a.status_code == b.status_code == 413
    assert a.json() == b.json() and a.json()["error"]["max_bytes"] == 1024 * 1024


def test_a_proxys_basic_auth_does_not_hide_the_session_cookie(actors):
    """A staging site behind a proxy's Basic auth: the browser sends that Authorization
    header on every call, and its session cookie still signs it in."""
    browser = actors.cookie_client(actors.a)
    browser.headers["Authorization"] = "Basic dXNlcjpwYXNz"
    me = browser.get("/api/auth/me")
    assert me.status_code == 200 and me.json()["email"] == "alice@example.com"
    assert browser.get("/api/billing/usage").status_code == 200
    # Without a cookie it is a plain 401; an empty Bearer is still refused as such.
    anon = TestClient(actors.api, base_url=ORIGIN, headers={"Authorization": "Basic eDp5"})
    assert anon.get("/api/billing/usage").status_code == 401
    empty = TestClient(actors.api, base_url=ORIGIN, headers={"Authorization": "Bearer "})
    r = empty.get("/api/billing/usage")
    assert r.status_code == 401 and "Bearer <API key>" in r.json()["error"]["message"]


@pytest.mark.parametrize("email", ["a\x00b@example.com", "ab@exa\x7fmple.com", "a\tb@example.com"])
def test_an_email_with_a_control_character_is_refused_on_either_database(actors, email):
    anon = TestClient(actors.api, base_url=ORIGIN, headers={"Origin": ORIGIN})
    r = anon.post("/api/auth/signup", json={"email": email, "password": "correct-horse-battery"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "email"


@pytest.mark.parametrize("where", ["idempotency_key", "metadata key", "metadata value"])
def test_a_nul_character_is_refused_naming_the_field_on_both_databases(actors, where):
    """PostgreSQL cannot store U+0000 (text or jsonb); SQLite stored it. Both refuse it now,
    naming the field, in the single and the batch endpoint."""
    event: dict = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    field = where.split()[0]
    if where == "idempotency_key":
        event["idempotency_key"] = "job\x007"
    elif where == "metadata key":
        event["metadata"] = {"a\x00b": 1}
    else:
        event["metadata"] = {"tags": ["ok", "x\x00"]}
    svc = actors.key_client(actors.service_key)
    single = svc.post("/api/billing/usage", json=event)
    assert single.status_code == 422, single.text
    assert single.json()["error"]["field"] == field
    assert "NUL" in single.json()["error"]["message"]
    batch = svc.post("/api/billing/usage/batch", json={"events": [event]})
    assert batch.status_code == 422, batch.text
    [bad] = batch.json()["error"]["events"]
    assert bad["index"] == 0 and bad["errors"][0]["field"] == field
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul(actors):
    svc = actors.key_client(actors.service_key)
    r = svc.post(
        "/api/billing/usage",
        json={
            "user_id": actors.a.id,
            "metric": "tokens",
            "quantity": 1,
            "metadata": {"path": "C:\\u0000"},
        },  # fmt: skip
    )
    assert r.status_code == 201, r.text
    assert r.json()["event"]["metadata"] == {"path": "C:\\u0000"}


def test_a_batch_key_that_would_repeat_an_events_own_key_is_refused(actors):
    """With `Idempotency-Key: job-7`, the second event's key would be `job-7#1`, which the
    first has as its own: it was taken for a duplicate of it and dropped with a 2xx."""
    svc = actors.key_client(actors.service_key)
    ev = {"user_id": actors.a.id, "metric": "tokens", "quantity": 5}
    r = svc.post(
        "/api/billing/usage/batch",
        json={"events": [{**ev, "idempotency_key": "job-7#1"}, ev]},
        headers={"Idempotency-Key": "job-7"},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "1 of 2 events are invalid; nothing was recorded."
    [clash] = error["events"]
    assert clash["index"] == 1 and clash["errors"][0]["field"] == "idempotency_key"
    assert "job-7#1" in clash["message"]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_sent_as_another_type_is_415_saying_so(actors, ctype):
    """`curl -d` without `-H Content-Type: application/json` sends a form's type: the
    answer was a 422 "body: Input should be a valid dictionary", naming no cause."""
    for client in _lanes(actors, actors.service_key):
        r = client.post(
            "/api/billing/usage",
            content=json.dumps({"user_id": actors.a.id, "metric": "tokens", "quantity": 1}),
            headers={"Content-Type": ctype},
        )
        assert r.status_code == 415, r.text
        assert r.json()["error"] == {
            "code": "unsupported_media_type",
            "message": "Send the body as JSON with Content-Type: application/json "
            f"(it came as {ctype}).",
        }


@pytest.mark.parametrize("header", ["Token {key}", "{key}", "ApiKey {key}"])
def test_an_api_key_under_another_scheme_is_told_the_scheme(actors, header):
    anon = TestClient(actors.api, base_url=ORIGIN)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    auth = {"Authorization": header.format(key=actors.service_key)}
    for path, method in [("/api/billing/usage", "post"), ("/api/billing/usage", "get")]:
        if method == "post":
            r = anon.post(path, json=body, headers=auth)
        else:
            r = anon.get(path, headers=auth)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["message"] == (
            "Send the API key as 'Authorization: Bearer <API key>'."
        )
        assert actors.service_key not in r.text
    plain = anon.get("/api/billing/usage", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert plain.json()["error"]["message"] == "Sign in or send an API key."


def _bad_indices(r) -> list[int]:
    assert r.status_code == 422, r.text
    return [e["index"] for e in r.json()["error"]["events"]]


def test_a_refused_batch_names_every_bad_event_whatever_refused_it(actors):
    """The schema (quantity 0, an unknown field), a rule (an unknown metric) and an
    unknown user, in one answer: it used to name only those of the first check that
    refused the batch, so finding every bad event took three round trips."""
    svc = actors.key_client(actors.service_key)
    a = actors.a.id
    events = [
        {"user_id": a, "metric": "api_call", "quantity": 1},  # rule: unknown metric
        {"user_id": a, "metric": "tokens", "quantity": 0},  # schema
        {"user_id": a, "metric": "tokens", "quantity": 1},  # good
        {"user_id": 999_999, "metric": "tokens", "quantity": 1},  # unknown user
        {"user_id": a, "metric": "tokens", "quantity": 1, "idempotencyKey": "x"},  # schema
    ]
    schema_first = svc.post("/api/billing/usage/batch", json={"events": events})
    assert _bad_indices(schema_first) == [0, 1, 3, 4]
    error = schema_first.json()["error"]
    assert error["message"] == "4 of 5 events are invalid; nothing was recorded."
    assert [e["code"] for e in error["events"]] == [
        "unknown_metric",
        "validation_error",
        "user_not_found",
        "validation_error",
    ]
    rules_first = svc.post(
        "/api/billing/usage/batch", json={"events": [events[0], events[2], events[3]]}
    )
    assert _bad_indices(rules_first) == [0, 2]
    unknown = rules_first.json()["error"]["events"][1]
    assert unknown["code"] == "user_not_found"
    assert unknown["errors"] == [
        {"field": "user_id", "code": "user_not_found", "message": "No user with id 999999."}
    ]
    with session_scope() as s:
        assert usage_totals(s, a, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_batch_the_schema_refuses_also_names_its_unknown_users(actors, lane):
    """A bad field in one event and an unknown user in another: the 422 named only the
    field, and the batch sent again with it fixed met a second 422 for the user."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    ok = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    events = [
        ok,
        {**ok, "quantity": -3},  # the schema's
        {**ok, "user_id": 987_654},  # unknown
        {"metric": "tokens", "quantity": 1},  # a service key must name the user
        {**ok, "user_id": 987_654, "metric": "gpus"},  # both the rule's and unknown
    ]
    r = svc.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"] == "4 of 5 events are invalid; nothing was recorded."
    named = [(e["index"], e["code"], [p["field"] for p in e["errors"]]) for e in error["events"]]
    assert named == [
        (1, "validation_error", ["quantity"]),
        (2, "user_not_found", ["user_id"]),
        (3, "validation_error", ["user_id"]),
        (4, "unknown_metric", ["metric", "user_id"]),
    ]
    assert error["events"][1]["errors"][0]["message"] == "No user with id 987654."
    assert [(f["field"], f["type"]) for f in error["fields"]] == [
        ("events.1.quantity", "greater_than"),
        ("events.2.user_id", "user_not_found"),
        ("events.3.user_id", "validation_error"),
        ("events.4.metric", "unknown_metric"),
        ("events.4.user_id", "user_not_found"),
    ]
    # Fixing what the answer named is enough: the next attempt is stored.
    fixed = [ok, ok, ok, ok, ok]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)
    assert svc.post("/api/billing/usage/batch", json={"events": fixed}).status_code == 201


def test_an_event_the_schema_refuses_is_also_checked_by_the_rules(actors):
    """One event with a quantity of 0, an unknown metric, a time in the future and an
    unknown user: the 422 named the quantity alone, then the metric, then the time, then
    the user; four attempts to find what one answer can say."""
    svc = actors.key_client(actors.service_key)
    ahead = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    event = {"user_id": 987_654, "metric": "gpus", "quantity": 0, "occurred_at": ahead}
    ok = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    for events in ([ok, event], [ok, {**event, "quantity": 1}]):  # the schema's, or not
        r = svc.post("/api/billing/usage/batch", json={"events": events})
        assert r.status_code == 422, r.text
        (bad,) = r.json()["error"]["events"]
        problems = [(p["field"], p["code"]) for p in bad["errors"]]
        schema = [("quantity", "validation_error")] if events[1]["quantity"] == 0 else []
        assert bad["index"] == 1 and problems == [
            *schema,
            ("metric", "unknown_metric"),
            ("occurred_at", "validation_error"),
            ("user_id", "user_not_found"),
        ], problems
        fields = [f["field"] for f in r.json()["error"]["fields"]]
        assert fields == [f"events.1.{field}" for field, _ in problems]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("path", ["/api/billing/usage", "/api/billing/usage/consume"])
def test_a_refused_write_names_every_bad_field_at_once(actors, lane, path):
    """`{"metric": "gpus", "quantity": 0}` was refused for its quantity; sent again with
    that fixed, for its metric: each 422 named one field of several."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    one = {"user_id": actors.a.id, "metric": "gpus", "quantity": 0, "idempotency_key": " "}
    r = svc.post(path, json=one)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [(f["field"], f["type"]) for f in error["fields"]] == [
        ("quantity", "greater_than"),
        ("metric", "unknown_metric"),
        ("idempotency_key", "validation_error"),
    ]
    assert error["message"] == "quantity must be greater than 0 (got 0)."
    r = svc.post(path, json={**one, "quantity": 1})  # the rules alone: both still named
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_metric"
    assert [(f["field"], f["type"]) for f in error["fields"]] == [
        ("metric", "unknown_metric"),
        ("idempotency_key", "validation_error"),
    ]
    check = svc.post(
        "/api/billing/quota/check", json={"user_id": actors.a.id, "metric": "gpus", "quantity": 0}
    )
    assert check.status_code == 422, check.text
    assert [f["field"] for f in check.json()["error"]["fields"]] == ["quantity", "metric"]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


def test_a_user_keys_refused_batch_does_not_say_which_users_exist(actors):
    """Whom a user's key may act for is the write's 403, whether or not that user
    exists: the schema's 422 names no unknown user for it."""
    mine = actors.key_client(actors.a_key)
    ok = {"metric": "tokens", "quantity": 1}
    events = [{**ok, "quantity": 0}, {**ok, "user_id": 987_654}]
    r = mine.post("/api/billing/usage/batch", json={"events": events})
    assert _bad_indices(r) == [0]
    events[0] = ok
    r = mine.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def _times(value: object) -> list[str]:
    """Every string in an answer that reads as a moment (date and time)."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _times(v)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v)]
    if isinstance(value, str) and len(value) > 16 and value[4] == "-" and value[10] == "T":
        return [value]
    return []


def test_every_answer_writes_its_times_one_way(actors):
    """Writes used to answer `+00:00` and reads `Z`: a client comparing the two as text,
    or parsing with a strict format, met both."""
    svc = actors.key_client(actors.service_key)
    one = {"user_id": actors.a.id, "metric": "api_calls"}
    answers = [
        svc.post("/api/billing/usage", json={**one, "quantity": 1, "idempotency_key": "t-1"}),
        svc.post("/api/billing/usage/batch", json={"events": [{**one, "quantity": 2}]}),
        svc.post("/api/billing/usage/consume", json={**one, "quantity": 3}),
        svc.post("/api/billing/usage/consume", json={**one, "quantity": 10_000}),  # refused
        svc.post("/api/billing/quota/check", json={**one, "quantity": 1}),
        svc.get(f"/api/billing/usage?user_id={actors.a.id}"),
        actors.cookie_client(actors.a).get("/api/auth/me"),
        actors.cookie_client(actors.admin).get("/api/billing/admin/users"),
    ]
    assert [r.status_code for r in answers] == [201, 201, 201, 403, 200, 200, 200, 200]
    for r in answers:
        times = _times(r.json())
        assert times, f"{r.request.url} answered no times: {r.text}"
        odd = [t for t in times if not t.endswith("Z")]
        assert not odd, f"{r.request.url}: {odd}"
        for t in times:
            assert datetime.fromisoformat(t).utcoffset() == timedelta(0)


OK = {"user_id": "A", "metric": "tokens", "quantity": 1}  # "A": alice's id


@pytest.mark.parametrize(
    ("path", "body", "headers", "fields"),
    [
        ("usage", {"metric": "tokens", "quantity": 1}, {}, [("user_id", "validation_error")]),
        ("usage", {**OK, "metric": "tokenz"}, {}, [("metric", "unknown_metric")]),
        ("usage", {**OK, "idempotency_key": " "}, {}, [("idempotency_key", "validation_error")]),
        (
            "batch",
            {"events": [OK, {**OK, "metric": "gpus"}, {**OK, "user_id": 2**31 - 1}]},
            {},
            [("events.1.metric", "unknown_metric"), ("events.2.user_id", "user_not_found")],
        ),
        (
            "batch",
            {"events": [{**OK, "quantity": "many"}, {**OK, "metric": "gpus"}]},
            {},
            [("events.0.quantity", "int_type"), ("events.1.metric", "unknown_metric")],
        ),
        (
            "batch",
            {"events": [{**OK, "idempotency_key": "b#1"}, OK]},
            {"Idempotency-Key": "b"},
            [("events.1.idempotency_key", "validation_error")],
        ),
    ],
    ids=["no user", "metric", "blank key", "batch rules", "batch both", "batch key clash"],
)
def test_a_rules_422_lists_its_fields_as_a_schemas_422_does(actors, path, body, headers, fields):
    """One shape for every 422: `fields` [{field, message, type}] (the client's
    ValidationError.fields read it), whether the schema or a rule refused the body. A
    batch's was missing when only rules refused it (an unknown metric or user, a batch
    key clash), and held only the schema's when both did."""
    a = actors.a.id
    body = json.loads(json.dumps(body).replace('"A"', str(a)))
    url = "/api/billing/usage" + ("/batch" if path == "batch" else "")
    r = actors.key_client(actors.service_key).post(url, json=body, headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [(f["field"], f["type"]) for f in error["fields"]] == fields
    if path == "batch":  # one entry per problem, in both lists
        named = [(e["index"], p["field"]) for e in error["events"] for p in e["errors"]]
        assert len(named) == len(fields), error
    else:  # the rule's own field, message and code
        assert error["fields"][0]["message"] == error["message"]
        assert (error["field"], error["code"]) == fields[0]
    with session_scope() as s:
        assert usage_totals(s, a, "tokens") == (0, 0, 0)


def test_the_openapi_error_shape_names_a_422s_fields_and_events(actors):
    """The schema said only {code, message} (more allowed): a client generated from it
    had no `fields` nor a batch's `events`, the two things a 422 is read for."""
    svc = actors.key_client(actors.service_key)
    components = svc.get("/api/openapi.json").json()["components"]["schemas"]
    body = components["ErrorBody"]["properties"]
    assert {"fields", "events"} <= body.keys()
    assert components["FieldErrorOut"]["required"] == ["field", "message", "type"]
    bad_event = components["BadEventOut"]
    assert bad_event["required"] == ["index", "code", "message", "errors"]
    assert components["EventProblemOut"]["required"] == ["field", "code", "message"]
    ok = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    r = svc.post("/api/billing/usage/batch", json={"events": [ok, {**ok, "metric": "gpus"}]})
    error = r.json()["error"]
    for f in error["fields"]:
        assert set(components["FieldErrorOut"]["required"]) == f.keys()
    for e in error["events"]:
        assert set(bad_event["required"]) <= e.keys()
        for p in e["errors"]:
            assert set(components["EventProblemOut"]["required"]) == p.keys()


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("header", [" ", "k" * 251])
@pytest.mark.parametrize("bad", [{"quantity": 0}, {"metric": "gpus"}], ids=["schema", "rules"])
def test_a_bad_batch_key_header_is_named_with_the_events_problems(actors, lane, header, bad):
    """A blank or too long Idempotency-Key and a bad event: the 422 named the event
    alone (the schema's) or the header alone (the rules'), and the batch sent again
    with that fixed met the other."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    ok = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    r = svc.post(
        "/api/billing/usage/batch",
        json={"events": [ok, {**ok, **bad}]},
        headers={"Idempotency-Key": header},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    said = (
        "The Idempotency-Key header is empty: send a key of 1 to 250 characters, or leave "
        "the header out."
        if not header.strip()
        else "A batch's Idempotency-Key must be 1 to 250 characters (each event's key is it "
        "followed by #<index>)."
    )
    assert error["message"] == f"{said} 1 of 2 events are invalid; nothing was recorded."
    [field] = bad
    assert [(f["field"], f["type"]) for f in error["fields"]][0] == (
        "idempotency_key",
        "validation_error",
    )
    assert [f["field"] for f in error["fields"]] == ["idempotency_key", f"events.1.{field}"]
    assert [(e["index"], e["errors"][0]["field"]) for e in error["events"]] == [(1, field)]
    # The header alone: the answer it always was.
    alone = svc.post(
        "/api/billing/usage/batch", json={"events": [ok]}, headers={"Idempotency-Key": header}
    )
    assert alone.status_code == 422, alone.text
    assert alone.json()["error"]["fields"] == error["fields"][:1]
    assert alone.json()["error"]["message"] == error["fields"][0]["message"]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("bad", [{"quantity": 0}, {"metric": "gpus"}], ids=["schema", "rules"])
def test_a_batch_key_clash_is_named_with_the_events_other_problems(actors, lane, bad):
    """`Idempotency-Key: b` makes event 1's key `b#1`, event 0's own: that clash was
    found only once the body's schema passed, and then alone."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    ok = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    events = [{**ok, "idempotency_key": "b#1"}, ok, {**ok, **bad}, {**ok, "user_id": 987_654}]
    r = svc.post(
        "/api/billing/usage/batch", json={"events": events}, headers={"Idempotency-Key": "b"}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "3 of 4 events are invalid; nothing was recorded."
    named = [(e["index"], e["errors"][0]["field"]) for e in error["events"]]
    assert named == [(1, "idempotency_key"), (2, next(iter(bad))), (3, "user_id")]
    assert "b#1" in error["events"][0]["message"]
    assert [f["field"] for f in error["fields"]] == [
        "events.1.idempotency_key",
        f"events.2.{next(iter(bad))}",
        "events.3.user_id",
    ]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


def test_a_refused_batch_with_a_key_of_any_json_type_and_a_batch_key_is_a_422(actors):
    """Guard: the header's clashes are now looked for in a body the schema refused,
    whose keys may be lists or objects (unhashable): a 422 naming them, never a 500."""
    svc = _lanes(actors, actors.service_key)[0]
    ok = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    events = [{**ok, "idempotency_key": ["b#1"]}, {**ok, "idempotency_key": {"k": 1}}, ok]
    r = svc.post(
        "/api/billing/usage/batch", json={"events": events}, headers={"Idempotency-Key": "b"}
    )
    assert r.status_code == 422, r.text
    assert [e["index"] for e in r.json()["error"]["events"]] == [0, 1]


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize(
    "path", ["/api/billing/usage", "/api/billing/usage/consume", "/api/billing/quota/check"]
)
def test_a_service_keys_body_without_user_id_is_named_with_its_other_problems(actors, lane, path):
    """A service key's `{"metric": "gpus", "quantity": 0}`: the 422 named the quantity
    and the metric, and the body sent again with those fixed met a 422 for user_id."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    r = svc.post(path, json={"metric": "gpus", "quantity": 0})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [(f["field"], f["type"]) for f in error["fields"]] == [
        ("quantity", "greater_than"),
        ("user_id", "validation_error"),
        ("metric", "unknown_metric"),
    ]
    assert error["fields"][1]["message"] == "user_id is required with a service key."
    r = svc.post(path, json={"metric": "gpus", "quantity": 1})  # the rules alone
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "user_id is required with a service key."
    assert [(f["field"], f["type"]) for f in error["fields"]] == [
        ("user_id", "validation_error"),
        ("metric", "unknown_metric"),
    ]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("path", ["/api/billing/usage", "/api/billing/usage/consume"])
def test_a_user_keys_write_is_not_told_about_user_id(actors, path):
    """Guard: a user's key acts for its own user; its 422 names no user_id, and naming
    another user (existing or not) stays the write's 403 once the fields are right."""
    mine = actors.key_client(actors.a_key)
    r = mine.post(path, json={"metric": "gpus", "quantity": 0})
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["error"]["fields"]] == ["quantity", "metric"]
    for other in (actors.b.id, 987_654):
        r = mine.post(path, json={"user_id": other, "metric": "gpus", "quantity": 0})
        assert [f["field"] for f in r.json()["error"]["fields"]] == ["quantity", "metric"]
        r = mine.post(path, json={"user_id": other, "metric": "tokens", "quantity": 1})
        assert r.status_code == 403, r.text


WRITES = ["/api/billing/usage", "/api/billing/usage/consume", "/api/billing/quota/check"]
CANCEL = "/api/billing/usage/cancel"
NO_USER = ("user_id", "user_not_found", "No user with id 987654.")


def _problems(r) -> list[tuple[str, str, str]]:
    assert r.status_code == 422, r.text
    return [(f["field"], f["type"], f["message"]) for f in r.json()["error"]["fields"]]


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("path", WRITES)
def test_a_service_keys_refused_write_names_its_unknown_user_too(actors, lane, path):
    """`{"user_id": 987654, "metric": "gpus", "quantity": 0}`: the 422 named the quantity
    and the metric, and the body sent again with those fixed met a 404 for the user. A
    batch named its unknown users in its 422 already."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    body = {"user_id": 987_654, "metric": "gpus", "quantity": 0}
    problems = _problems(svc.post(path, json=body))
    assert [(f, t) for f, t, _ in problems] == [
        ("quantity", "greater_than"),
        ("metric", "unknown_metric"),
        NO_USER[:2],
    ]
    assert problems[-1] == NO_USER
    r = svc.post(path, json={**body, "quantity": 1})  # the rules alone
    assert [(f, t) for f, t, _ in _problems(r)] == [("metric", "unknown_metric"), NO_USER[:2]]
    assert r.json()["error"]["code"] == "unknown_metric"
    assert r.json()["error"]["message"].startswith("Unknown metric 'gpus'")
    # The user alone: the 404 it always was.
    r = svc.post(path, json={**body, "quantity": 1, "metric": "tokens"})
    assert r.status_code == 404, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["message"]) == NO_USER[1:]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_service_keys_refused_cancel_names_its_unknown_user_too(actors, lane):
    """A cancel for an unknown user with no key (or a blank one): the 422 named the key,
    and the cancel sent again with a key met a 404 for the user."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    no_key = _problems(svc.post(CANCEL, json={"user_id": 987_654}))
    assert [(f, t) for f, t, _ in no_key] == [("idempotency_key", "validation_error"), NO_USER[:2]]
    assert no_key[-1] == NO_USER
    schema = _problems(svc.post(CANCEL, json={"user_id": 987_654, "idempotency_key": ""}))
    assert [(f, t) for f, t, _ in schema] == [("idempotency_key", "string_too_short"), NO_USER[:2]]
    blank = svc.post(CANCEL, json={"user_id": 987_654}, headers={"Idempotency-Key": " "})
    assert _problems(blank) == [
        (
            "idempotency_key",
            "validation_error",
            "The Idempotency-Key header is empty: send a key of 1 to 255 characters, or leave "
            "the header out.",
        ),
        NO_USER,
    ]
    r = svc.post(CANCEL, json={"user_id": 987_654, "idempotency_key": "job-1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "user_not_found", r.text


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_who_may_not_write_for_others_is_not_told_whether_a_user_exists(actors, lane):
    """Guard: a user's key acts for its own user, and a service key without the
    endpoint's scope may not act at all: their refusals name no unknown user, and read
    the same for an existing user as for one that does not exist."""
    with session_scope() as s:
        reader = api_keys.create_key(s, name="ro", service_name="r", scopes=["usage:read"])[1]
        writer = api_keys.create_key(s, name="wo", service_name="w", scopes=["usage:write"])[1]
    callers = [(actors.a_key, WRITES + [CANCEL]), (reader, WRITES[:2] + [CANCEL])]
    callers.append((writer, WRITES[2:]))
    for secret, paths in callers:
        client = _lanes(actors, secret)[0 if lane == "fast" else 1]
        for path in paths:
            answers = []
            for other in (actors.b.id, 987_654):
                for bad in ({"quantity": 0}, {"metric": "gpus"}, {"idempotency_key": ""}):
                    body = {"user_id": other, "metric": "tokens", "quantity": 1, **bad}
                    if path == CANCEL:
                        body = {"user_id": other, "idempotency_key": "k", **bad}
                    r = client.post(path, json=body)
                    assert "user_not_found" not in r.text, (path, r.text)
                    error = r.json()["error"]
                    answers.append((r.status_code, error["code"], error.get("fields")))
            assert answers[: len(answers) // 2] == answers[len(answers) // 2 :], (path, answers)


KEYS_DIFFER = "Idempotency-Key header and body idempotency_key differ."
DIFFER = ("idempotency_key", "validation_error", KEYS_DIFFER)


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("path", WRITES[:2])
def test_keys_that_differ_are_named_with_the_writes_other_problems(actors, lane, path):
    """Header `h`, body key `b` and a bad metric: the 422 said only that the keys
    differ (or, with a bad quantity too, not that at all), and the write sent again
    with the keys fixed met the rest."""
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    h = {"Idempotency-Key": "h"}
    body = {"user_id": actors.a.id, "metric": "gpus", "quantity": 1, "idempotency_key": "b"}
    r = svc.post(path, json=body, headers=h)
    assert _problems(r) == [DIFFER, ("metric", "unknown_metric", _problems(r)[1][2])]
    assert r.json()["error"]["message"] == KEYS_DIFFER  # the answer it always was
    schema = svc.post(path, json={**body, "quantity": 0}, headers=h)
    assert [(f, t) for f, t, _ in _problems(schema)] == [
        DIFFER[:2],
        ("quantity", "greater_than"),
        ("metric", "unknown_metric"),
    ]
    assert _problems(schema)[0] == DIFFER
    del body["user_id"]
    body["metric"] = "tokens"
    r = svc.post(path, json=body, headers=h)  # and a service key's missing user_id
    assert [(f, t) for f, t, _ in _problems(r)] == [DIFFER[:2], ("user_id", "validation_error")]
    r = svc.post(path, json={**body, "user_id": 987_654}, headers=h)
    assert _problems(r) == [DIFFER, NO_USER]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (0, 0, 0)


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_keys_that_differ_are_named_with_the_cancels_other_problems(actors, lane):
    svc = _lanes(actors, actors.service_key)[0 if lane == "fast" else 1]
    h = {"Idempotency-Key": "h"}
    r = svc.post(CANCEL, json={"idempotency_key": "b"}, headers=h)
    assert [(f, t) for f, t, _ in _problems(r)] == [DIFFER[:2], ("user_id", "validation_error")]
    assert r.json()["error"]["message"] == KEYS_DIFFER
    r = svc.post(CANCEL, json={"user_id": 987_654, "idempotency_key": "b"}, headers=h)
    assert _problems(r) == [DIFFER, NO_USER]
    r = svc.post(CANCEL, json={"user_id": actors.a.id, "idempotency_key": "b", "x": 1}, headers=h)
    assert [(f, t) for f, t, _ in _problems(r)] == [DIFFER[:2], ("x", "extra_forbidden")]
