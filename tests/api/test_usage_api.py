"""Service endpoints: record, batch, check, consume; idempotency; limits; bad input."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import select
from starlette.testclient import TestClient

from billing_app.api.app import create_api
from billing_app.db import session_scope
from billing_app.models import ApiKey, UsageEvent
from billing_app.services import api_keys, quotas
from tests.api.conftest import ORIGIN, http
from tests.factories import usage_totals


def _totals(user_id: int, metric: str = "tokens") -> tuple[int, int, int]:
    """(events, sum of quantities, counter total) straight from the database."""
    with session_scope() as s:
        return usage_totals(s, user_id, metric)


def test_record_then_duplicate(actors):
    c = actors.key_client(actors.service_key)
    body = {
        "user_id": actors.a.id,
        "metric": "tokens",
        "quantity": 1500,
        "idempotency_key": "req-1",
        "metadata": {"model": "gpt-4"},
    }
    first = c.post("/api/billing/usage", json=body)
    assert first.status_code == 201, first.text
    data = first.json()
    assert data["duplicate"] is False and data["used"] == 1500
    assert data["limit"] == 100_000 and data["remaining"] == 98_500
    assert data["event"]["metadata"] == {"model": "gpt-4"}
    again = c.post("/api/billing/usage", json=body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["event"]["id"] == data["event"]["id"]
    assert _totals(actors.a.id) == (1, 1500, 1500)


def test_idempotency_key_header_and_conflicts(actors):
    c = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "api_calls", "quantity": 1}
    r1 = c.post("/api/billing/usage", json=body, headers={"Idempotency-Key": "h-1"})
    r2 = c.post("/api/billing/usage", json=body, headers={"Idempotency-Key": "h-1"})
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["event"]["idempotency_key"] == "h-1"
    differ = c.post(
        "/api/billing/usage",
        json={**body, "idempotency_key": "b"},
        headers={"Idempotency-Key": "h"},
    )
    assert differ.status_code == 422
    reused = c.post("/api/billing/usage", json={**body, "quantity": 7, "idempotency_key": "h-1"})
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert _totals(actors.a.id, "api_calls") == (1, 1, 1)


def _lane_and_routes(actors) -> list[TestClient]:
    """The fast lane (a bearer call's production path) and the bare FastAPI routes."""
    auth = {"Authorization": f"Bearer {actors.service_key}"}
    return [
        actors.key_client(actors.service_key),
        TestClient(create_api(), base_url=ORIGIN, headers=auth),
    ]


def test_a_repeated_key_with_other_metadata_is_refused_as_other_values_are(actors):
    """As Stripe refuses a key reused with other parameters: record, consume and batch,
    on both lanes, 409 idempotency_key_reused, nothing written, the first event kept."""
    meta = {"model": "gpt-4", "n": 1}
    for side, c in enumerate(_lane_and_routes(actors)):
        for path in ("/api/billing/usage", "/api/billing/usage/consume"):
            key = f"m-{side}-{path.rsplit('/', 1)[-1]}"
            body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 3,
                    "idempotency_key": key, "metadata": meta}  # fmt: skip
            assert c.post(path, json=body).status_code == 201
            for other in ({"model": "gpt-5", "n": 1}, {"model": "gpt-4", "n": True}, {}, None):
                r = c.post(path, json={**body, "metadata": other})
                assert r.status_code == 409, (path, other, r.text)
                assert r.json()["error"]["code"] == "idempotency_key_reused"
            r = c.post(path, json={k: v for k, v in body.items() if k != "metadata"})
            assert r.status_code == 409, (path, r.text)
            batch = [{**body, "idempotency_key": f"new-{key}"}, {**body, "metadata": {"n": 1}}]
            r = c.post("/api/billing/usage/batch", json={"events": batch})
            assert (r.status_code, r.json()["error"]["code"]) == (409, "idempotency_key_reused")
            assert r.json()["error"]["index"] == 1
    assert _totals(actors.a.id) == (4, 12, 12)
    with session_scope() as s:
        assert {e.meta["model"] for e in s.exec(select(UsageEvent))} == {"gpt-4"}


def test_a_reused_key_names_the_fields_that_differ(actors):
    """The 409 gave the first event's values ("3 tokens") but not which field differs:
    its message and `differing_fields` name each, for record and consume on both lanes,
    and for each event of a batch; `occurred_at` is not compared (a duplicate)."""
    a = actors.a.id
    cases = [  # (changes to the stored event, fields named, words in the message)
        ({"quantity": 4}, ["quantity"], "a different quantity (3 tokens)"),
        ({"metric": "api_calls"}, ["metric"], "a different metric (3 tokens)"),
        ({"metadata": {"m": 2}}, ["metadata"], "different metadata."),
        (
            {"metric": "api_calls", "quantity": 4, "metadata": None},
            ["metric", "quantity", "metadata"],
            "a different metric, quantity and metadata (3 tokens)",
        ),
    ]
    for side, c in enumerate(_lane_and_routes(actors)):
        for path in ("/api/billing/usage", "/api/billing/usage/consume"):
            key = f"h86-{side}-{path.rsplit('/', 1)[-1]}"
            stored = {"user_id": a, "metric": "tokens", "quantity": 3,
                      "idempotency_key": key, "metadata": {"m": 1}}  # fmt: skip
            assert c.post(path, json=stored).status_code == 201
            for change, named, said in cases:
                r = c.post(path, json={**stored, **change})
                assert r.status_code == 409, (path, change, r.text)
                error = r.json()["error"]
                assert error["differing_fields"] == named, (side, path, error)
                assert said in error["message"], (side, path, error)
        again = {**stored, "occurred_at": "2026-01-01T00:00:00Z"}
        assert c.post("/api/billing/usage", json=again).json()["duplicate"] is True
        events = [  # the record's key, a new one, the consume's key
            {**stored, "metric": "api_calls", "idempotency_key": f"h86-{side}-usage"},
            {**stored, "idempotency_key": f"h86-new-{side}"},
            {**stored, "quantity": 5, "metadata": {"m": 1, "n": 2}},
        ]
        r = c.post("/api/billing/usage/batch", json={"events": events})
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert (error["index"], error["differing_fields"]) == (0, ["metric"])
        assert "a different metric (3 tokens)" in error["message"]
        assert [(e["index"], e["differing_fields"]) for e in error["events"]] == [
            (0, ["metric"]),
            (2, ["quantity", "metadata"]),
        ]
        assert "a different quantity and metadata (3 tokens)" in error["events"][1]["message"]
    assert _totals(a) == (4, 12, 12)


def test_a_batch_repeating_a_key_with_other_metadata_is_refused_within_it(actors):
    c = actors.key_client(actors.service_key)
    ev = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1, "idempotency_key": "k"}
    events = [{**ev, "metadata": {"a": 1}}, {**ev, "metadata": {"a": 2}}]
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 422, r.text
    (bad,) = r.json()["error"]["events"]
    assert (bad["index"], bad["code"]) == (1, "idempotency_key_reused")
    assert _totals(actors.a.id) == (0, 0, 0)


def test_a_repeat_with_the_same_metadata_stays_a_duplicate(actors):
    """Guard: the same JSON is the same whatever its keys' order, absent is null (both
    stored as NULL), and numbers match after PostgreSQL's jsonb kept them as numeric
    (1.5e300 comes back as an integer of 301 digits)."""
    a = actors.a.id
    meta = {"a": 1, "b": {"x": [1.5, None, True], "y": "z"}, "big": 1.5e300, "e": 1e-7,
            "int": 12345678901234567890123}  # fmt: skip
    shuffled = {"int": meta["int"], "e": 1e-7, "big": 1.5e300,
                "b": {"y": "z", "x": [1.5, None, True]}, "a": 1}  # fmt: skip
    for side, c in enumerate(_lane_and_routes(actors)):
        for path in ("/api/billing/usage", "/api/billing/usage/consume"):
            body = {"user_id": a, "metric": "tokens", "quantity": 2,
                    "idempotency_key": f"same-{side}-{path}", "metadata": meta}  # fmt: skip
            assert c.post(path, json=body).status_code == 201
            for again in (body, {**body, "metadata": shuffled}):
                r = c.post(path, json=again)
                assert (r.status_code, r.json()["duplicate"]) == (200, True), r.text
            bare = {**body, "idempotency_key": f"bare-{side}-{path}"}
            del bare["metadata"]
            assert c.post(path, json=bare).status_code == 201
            r = c.post(path, json={**bare, "metadata": None})
            assert (r.status_code, r.json()["duplicate"]) == (200, True), r.text
            r = c.post("/api/billing/usage/batch", json={"events": [body, bare]})
            assert (r.status_code, r.json()["duplicates"]) == (200, 2), r.text
    assert _totals(a) == (8, 16, 16)


def test_concurrent_repeats_count_once_over_real_http(actors, live_server):
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 10, "idempotency_key": "same"}
    barrier = threading.Barrier(12)

    def post(_: int) -> tuple[int, bool]:
        with http(live_server, actors.service_key) as c:
            barrier.wait()
            r = c.post("/api/billing/usage", json=body)
            return r.status_code, r.json()["duplicate"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(post, range(12)))
    assert sorted(results) == [(200, True)] * 11 + [(201, False)]
    assert _totals(actors.a.id) == (1, 10, 10)


def test_concurrent_distinct_events_are_all_counted(actors, live_server):
    def post(i: int) -> int:
        with http(live_server, actors.service_key) as c:
            return c.post(
                "/api/billing/usage",
                json={
                    "user_id": actors.b.id,
                    "metric": "tokens",
                    "quantity": 3,
                    "idempotency_key": f"k{i}",
                },
            ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(post, range(40))) == {201}
    assert _totals(actors.b.id) == (40, 120, 120)


def test_user_key_acts_only_for_its_owner(actors):
    c = actors.key_client(actors.a_key)
    mine = c.post("/api/billing/usage", json={"metric": "tokens", "quantity": 2})
    assert mine.status_code == 201 and mine.json()["event"]["user_id"] == actors.a.id
    theirs = c.post(
        "/api/billing/usage", json={"user_id": actors.b.id, "metric": "tokens", "quantity": 2}
    )
    assert theirs.status_code == 403
    assert theirs.json()["error"]["message"] == "This key may only act for its own user."
    assert _totals(actors.b.id) == (0, 0, 0)
    svc = actors.key_client(actors.service_key)
    missing = svc.post("/api/billing/usage", json={"metric": "tokens", "quantity": 2})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "user_id"


def test_a_session_naming_another_user_is_refused_in_its_own_words(actors):
    """A signed-in person holds no key: the 403 speaks of their account (it said "This
    key ..."), on every write and in a batch; nothing is stored."""
    theirs = {"user_id": actors.b.id, "metric": "tokens", "quantity": 1}
    with actors.cookie_client(actors.a) as c:
        for path, body in (
            ("/api/billing/usage", theirs),
            ("/api/billing/usage/consume", theirs),
            ("/api/billing/quota/check", theirs),
            ("/api/billing/usage/cancel", {"user_id": actors.b.id, "idempotency_key": "k"}),
            ("/api/billing/usage/batch", {"events": [theirs]}),
        ):
            r = c.post(path, json=body)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"] == {
                "code": "forbidden",
                "message": "You may only act for your own account.",
                "user_id": actors.b.id,
            }, path
    assert _totals(actors.b.id) == (0, 0, 0)


def test_bad_input_is_a_clear_4xx_and_writes_nothing(actors):
    c = actors.key_client(actors.service_key)
    uid = actors.a.id
    cases = [
        ({"user_id": uid, "metric": "gpus", "quantity": 1}, 422, "unknown_metric"),
        ({"user_id": uid, "metric": "tokens", "quantity": 0}, 422, "validation_error"),
        ({"user_id": uid, "metric": "tokens", "quantity": -5}, 422, "validation_error"),
        ({"user_id": uid, "metric": "tokens", "quantity": 10**12}, 422, "validation_error"),
        ({"user_id": uid, "metric": "tokens", "quantity": "5"}, 422, "validation_error"),
        ({"user_id": uid, "metric": "tokens", "quantity": 1.5}, 422, "validation_error"),
        ({"user_id": uid, "metric": "tokens"}, 422, "validation_error"),
        ({"user_id": 999_999, "metric": "tokens", "quantity": 1}, 404, "user_not_found"),
        (
            {"user_id": uid, "metric": "tokens", "quantity": 1, "metadata": [1]},
            422,
            "validation_error",
        ),
        (
            {
                "user_id": uid,
                "metric": "tokens",
                "quantity": 1,
                "occurred_at": "2999-01-01T00:00:00Z",
            },
            422,
            "validation_error",
        ),
    ]
    for body, status, code in cases:
        r = c.post("/api/billing/usage", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code, (body, r.text)
        assert "message" in r.json()["error"]
    r = c.post("/api/billing/usage", json={"user_id": uid, "metric": "tokens", "quantity": "x"})
    assert r.json()["error"]["fields"][0]["field"] == "quantity"
    malformed = c.post(
        "/api/billing/usage",
        content=b'{"user_id": 1,',
        headers={"Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"
    assert _totals(uid) == (0, 0, 0)


def test_bodies_over_one_mib_are_413(actors):
    c = actors.key_client(actors.service_key)
    big = {
        "user_id": actors.a.id,
        "metric": "tokens",
        "quantity": 1,
        "metadata": {"x": "a" * (1 << 20)},
    }
    r = c.post("/api/billing/usage", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    # streamed without a Content-Length: counted as it arrives
    def chunks():
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    r = c.post("/api/billing/usage", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert _totals(actors.a.id) == (0, 0, 0)


def test_batch_stores_all_with_duplicates_marked(actors):
    c = actors.key_client(actors.service_key)
    c.post(
        "/api/billing/usage",
        json={"user_id": actors.a.id, "metric": "tokens", "quantity": 5, "idempotency_key": "old"},
    )
    events = [
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 10, "idempotency_key": "b1"},
        {"user_id": actors.b.id, "metric": "api_calls", "quantity": 2},
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 5, "idempotency_key": "old"},
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 10, "idempotency_key": "b1"},
        {
            "user_id": actors.a.id,
            "metric": "tokens",
            "quantity": 7,
            "occurred_at": "2026-01-15T10:00:00Z",
        },
    ]
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["recorded"] == 3 and data["duplicates"] == 2
    assert [x["duplicate"] for x in data["results"]] == [False, False, True, True, False]
    assert data["results"][3]["event"]["id"] == data["results"][0]["event"]["id"]
    assert data["results"][0]["used"] == 15
    assert _totals(actors.a.id) == (3, 22, 22)
    assert _totals(actors.b.id, "api_calls") == (1, 2, 2)
    again = c.post("/api/billing/usage/batch", json={"events": events[:1]})
    assert again.status_code == 200 and again.json()["duplicates"] == 1


def test_batch_minimal_answer_counts_and_stores_the_same(actors):
    """`Prefer: return=minimal`: the counts only, the same events and counters stored,
    the same all-or-nothing refusals."""
    c = actors.key_client(actors.service_key)
    minimal = {"Prefer": "respond-async, return=minimal"}
    a, b = actors.a.id, actors.b.id
    c.post("/api/billing/usage", json={"user_id": a, "metric": "tokens", "quantity": 5,
                                       "idempotency_key": "old"})  # fmt: skip
    events = [
        {"user_id": a, "metric": "tokens", "quantity": 10, "idempotency_key": "m1"},
        {"user_id": b, "metric": "api_calls", "quantity": 2},
        {"user_id": a, "metric": "tokens", "quantity": 5, "idempotency_key": "old"},
        {"user_id": a, "metric": "tokens", "quantity": 10, "idempotency_key": "m1"},
    ]
    r = c.post("/api/billing/usage/batch", json={"events": events}, headers=minimal)
    assert r.status_code == 201, r.text
    assert r.json() == {"recorded": 2, "duplicates": 2}
    assert r.headers["preference-applied"] == "return=minimal"
    assert _totals(a) == (2, 15, 15)
    assert _totals(b, "api_calls") == (1, 2, 2)
    again = c.post("/api/billing/usage/batch", json={"events": events[:1]}, headers=minimal)
    assert (again.status_code, again.json()) == (200, {"recorded": 0, "duplicates": 1})
    # refused as without the preference, nothing stored
    bad = [events[0] | {"idempotency_key": "m2"}, {**events[0], "quantity": 11}]
    r = c.post("/api/billing/usage/batch", json={"events": bad}, headers=minimal)
    assert r.status_code == 409 and r.json()["error"]["index"] == 1
    assert "preference-applied" not in r.headers
    assert _totals(a) == (2, 15, 15)
    # any other preference: the full answer
    full = c.post("/api/billing/usage/batch", json={"events": events[:1]},
                  headers={"Prefer": "return=representation"})  # fmt: skip
    assert full.json()["results"][0]["duplicate"] is True
    assert "preference-applied" not in full.headers


def test_keys_and_metadata_are_stored_as_sent_and_match_their_retries(actors):
    """Keys and metadata travel to PostgreSQL as binary arrays built by the app
    (billing_app/pg_arrays.py): any text comes back as sent, and its retry is a
    duplicate. A NUL, which PostgreSQL's text and JSONB cannot hold, makes the whole batch
    a 422 there, with nothing stored; SQLite stores it."""
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    keys = ["é€😀", 'quote " and \\ backslash', "{braces},comma", " spaced ", "NULL", "x" * 255]
    meta = {"note": 'naïve ✓ "quoted" {x}', "n": [1, None, "NULL"]}
    events = [
        {"user_id": a, "metric": "tokens", "quantity": i + 1, "idempotency_key": k,
         "metadata": meta if i % 2 else None}
        for i, k in enumerate(keys)
    ]  # fmt: skip
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 201, r.text
    assert [x["event"]["idempotency_key"] for x in r.json()["results"]] == keys
    one = {"user_id": a, "metric": "tokens", "quantity": 1, "idempotency_key": "ünï 'one'"}
    assert c.post("/api/billing/usage", json=one).status_code == 201
    assert (
        c.post("/api/billing/usage/consume", json={**one, "idempotency_key": "∑ c"}).status_code
        == 201
    )
    with session_scope() as s:
        stored = {
            e.idempotency_key: e.meta
            for e in s.exec(select(UsageEvent).where(UsageEvent.user_id == a))
        }
    assert stored == {
        **{e["idempotency_key"]: e["metadata"] for e in events},
        "ünï 'one'": None,
        "∑ c": None,
    }
    again = c.post("/api/billing/usage/batch", json={"events": events})
    assert (again.status_code, again.json()["duplicates"]) == (200, len(keys))
    assert c.post("/api/billing/usage", json=one).status_code == 200
    totals = _totals(a)
    for n, bad in enumerate(({"idempotency_key": "nul\0key"}, {"metadata": {"a": "\0"}})):
        batch = [
            {**events[0], "idempotency_key": f"ok{n}"},
            {**events[0], "idempotency_key": f"k{n}", **bad},
        ]
        r = c.post("/api/billing/usage/batch", json={"events": batch})
        # PostgreSQL's text and JSONB cannot hold a NUL: refused on both, naming the event
        assert r.status_code == 422, r.text
        assert [e["index"] for e in r.json()["error"]["events"]] == [1]
        assert _totals(a) == totals


def test_batch_is_all_or_nothing_naming_bad_events_by_index(actors):
    c = actors.key_client(actors.service_key)
    good = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    events = [
        good,
        {**good, "metric": "gpus"},
        good,
        {**good, "quantity": 0},
        {**good, "user_id": 424242},
    ]
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 422
    # The schema's, the rules' and the unknown users at once.
    err = r.json()["error"]["events"]
    assert [(e["index"], e["code"]) for e in err] == [
        (1, "unknown_metric"),
        (3, "validation_error"),
        (4, "user_not_found"),
    ]
    events[3] = good
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 422
    err = r.json()["error"]["events"]
    assert [(e["index"], e["code"]) for e in err] == [(1, "unknown_metric"), (4, "user_not_found")]
    events[1] = good
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 422
    err = r.json()["error"]["events"]
    assert [(e["index"], e["code"]) for e in err] == [(4, "user_not_found")]
    assert _totals(actors.a.id) == (0, 0, 0)


def test_a_batchs_bad_events_have_one_shape_whatever_refused_them(actors):
    """The JSON's shape (quantity 0), a rule of the service (an unknown metric, a key
    repeated with other values) or an unknown user: every bad event reads
    {index, code, message, errors: [{field, code, message}]}."""
    c = actors.key_client(actors.service_key)
    good = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    cases = [
        ([good, {**good, "quantity": 0}], "validation_error", "quantity"),
        ([good, {**good, "metric": "gpus"}], "unknown_metric", "metric"),
        ([good, {**good, "user_id": 424242}], "user_not_found", "user_id"),
        (
            [{**good, "idempotency_key": "k"}, {**good, "quantity": 2, "idempotency_key": "k"}],
            "idempotency_key_reused",
            "idempotency_key",
        ),
    ]
    for events, code, field in cases:
        r = c.post("/api/billing/usage/batch", json={"events": events})
        assert r.status_code == 422, r.text
        (bad,) = r.json()["error"]["events"]
        assert (bad["index"], bad["code"]) == (1, code), bad
        assert field in bad["message"] or bad["message"] == bad["errors"][0]["message"]
        assert [(e["field"], e["code"]) for e in bad["errors"]] == [(field, code)], bad
        assert all(isinstance(e["message"], str) and e["message"] for e in bad["errors"])
    assert _totals(actors.a.id) == (0, 0, 0)


def test_batch_conflicting_key_rolls_back_everything(actors):
    c = actors.key_client(actors.service_key)
    c.post(
        "/api/billing/usage",
        json={"user_id": actors.a.id, "metric": "tokens", "quantity": 5, "idempotency_key": "k"},
    )
    events = [
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 1},
        {"user_id": actors.a.id, "metric": "tokens", "quantity": 99, "idempotency_key": "k"},
    ]
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 409 and r.json()["error"]["index"] == 1
    assert _totals(actors.a.id) == (1, 5, 5)


def test_a_batch_reusing_stored_keys_names_every_such_event(actors):
    """Two events reusing stored keys with other values: the 409 named the first only,
    and an unknown user's 422 hid them both, so each took another attempt to find."""
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    for key in ("k1", "k2"):
        body = {"user_id": a, "metric": "tokens", "quantity": 5, "idempotency_key": key}
        assert c.post("/api/billing/usage", json=body).status_code == 201
    good = {"user_id": a, "metric": "tokens", "quantity": 1}
    events = [
        good,
        {**good, "quantity": 9, "idempotency_key": "k1"},
        good,
        {**good, "quantity": 9, "idempotency_key": "k2"},
    ]
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert (error["code"], error["index"], error["idempotency_key"]) == (
        "idempotency_key_reused",
        1,
        "k1",
    )
    assert (
        error["message"].startswith("Event 1: ") and "1 more event reuses a key" in error["message"]
    )
    assert [(e["index"], e["code"], e["errors"][0]["field"]) for e in error["events"]] == [
        (1, "idempotency_key_reused", "idempotency_key"),
        (3, "idempotency_key_reused", "idempotency_key"),
    ]
    events.append({**good, "user_id": 424242})
    r = c.post("/api/billing/usage/batch", json={"events": events})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "3 of 5 events are invalid; nothing was recorded."
    assert [(e["index"], e["code"]) for e in error["events"]] == [
        (1, "idempotency_key_reused"),
        (3, "idempotency_key_reused"),
        (4, "user_not_found"),
    ]
    assert _totals(a) == (2, 10, 10)


def test_batch_limits_and_user_keys(actors):
    c = actors.key_client(actors.service_key)
    ev = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/usage/batch", json={"events": []}).status_code == 422
    over = c.post("/api/billing/usage/batch", json={"events": [ev] * 1001})
    assert over.status_code == 422
    full = c.post("/api/billing/usage/batch", json={"events": [ev] * 1000})
    assert full.status_code == 201 and full.json()["recorded"] == 1000
    assert _totals(actors.a.id) == (1000, 1000, 1000)
    uk = actors.key_client(actors.a_key)
    r = uk.post(
        "/api/billing/usage/batch",
        json={
            "events": [
                {"metric": "tokens", "quantity": 1},
                {"user_id": actors.b.id, "metric": "tokens", "quantity": 1},
            ]
        },
    )
    assert r.status_code == 403
    assert _totals(actors.b.id) == (0, 0, 0)


def test_quota_check_reads_only(actors):
    c = actors.key_client(actors.service_key)
    r = c.post(
        "/api/billing/quota/check",
        json={"user_id": actors.a.id, "metric": "api_calls", "quantity": 1000},
    )
    assert r.status_code == 200
    assert r.json()["allowed"] is True and r.json()["remaining"] == 1000
    r = c.post(
        "/api/billing/quota/check",
        json={"user_id": actors.a.id, "metric": "api_calls", "quantity": 1001},
    )
    data = r.json()
    assert data["allowed"] is False and "remain" in data["reason"] and data["resets_at"]
    assert _totals(actors.a.id, "api_calls") == (0, 0, 0)


def test_a_check_answers_percent_and_period_start_as_the_summary_and_record_do(actors):
    """The check lacked `percent` and `period_start`, which the record answer and the
    usage summary carry for the same counter: on both lanes, the same values and format,
    an unlimited metric's percent 0.0 included."""
    a = actors.a.id  # basic: 1,000 API calls
    with session_scope() as s:
        quotas.set_override(s, a, "scraping_tasks", 0, reason="h86 unlimited")
    for side, c in enumerate(_lane_and_routes(actors)):
        body = {"user_id": a, "metric": "api_calls", "quantity": 333}
        rec = c.post("/api/billing/usage", json=body).json()
        summary = {
            m["metric"]: m
            for m in c.get("/api/billing/usage", params={"user_id": a}).json()["metrics"]
        }
        for metric, percent in (("api_calls", 33.3 * (side + 1)), ("scraping_tasks", 0.0)):
            r = c.post("/api/billing/quota/check", json={"user_id": a, "metric": metric})
            assert r.status_code == 200, r.text
            check = r.json()
            assert check["percent"] == summary[metric]["percent"] == percent, (side, check)
            assert check["period_start"] == summary[metric]["period_start"], (side, check)
            assert (
                check["period_start"].endswith("Z") and check["period_start"] < check["resets_at"]
            )
        assert check["unlimited"] is True
        assert rec["percent"] == summary["api_calls"]["percent"]


def test_consume_refuses_past_the_limit_and_records_nothing(actors):
    c = actors.key_client(actors.service_key)
    ok = c.post(
        "/api/billing/usage/consume",
        json={"user_id": actors.a.id, "metric": "api_calls", "quantity": 990},
    )
    assert ok.status_code == 201 and ok.json()["remaining"] == 10
    no = c.post(
        "/api/billing/usage/consume",
        json={"user_id": actors.a.id, "metric": "api_calls", "quantity": 11},
    )
    assert no.status_code == 403
    err = no.json()["error"]
    assert err["code"] == "quota_exceeded" and err["remaining"] == 10 and err["limit"] == 1000
    assert _totals(actors.a.id, "api_calls") == (1, 990, 990)


def test_concurrent_consume_never_passes_the_limit(actors, live_server):
    def consume(i: int) -> int:
        with http(live_server, actors.service_key) as c:
            return c.post(
                "/api/billing/usage/consume",
                json={
                    "user_id": actors.b.id,
                    "metric": "scraping_tasks",
                    "quantity": 7,
                    "idempotency_key": f"c{i}",
                },
            ).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(consume, range(30)))
    assert codes.count(201) == 14 and codes.count(403) == 16  # basic: 100 tasks, 14 * 7 = 98
    assert _totals(actors.b.id, "scraping_tasks") == (14, 98, 98)


def test_api_keys_revocation_and_last_used(actors):
    c = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/usage", json=body).status_code == 201
    with session_scope() as s:
        key = s.exec(select(ApiKey).where(ApiKey.service_name == "ingest")).one()
        assert key.last_used_at is not None and key.secret_hash != actors.service_key
        assert actors.service_key.startswith(f"bk_live_{key.prefix}_")
        api_keys.revoke_key(s, key.id)
    r = c.post("/api/billing/usage", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    for header in ("Bearer bk_live_nope", "Basic abc", "Bearer "):
        r = actors.anon().post("/api/billing/usage", json=body, headers={"Authorization": header})
        assert r.status_code == 401


def test_revocation_elsewhere_takes_effect_within_the_cache_ttl(actors):
    c = actors.key_client(actors.service_key)
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/usage", json=body).status_code == 201
    # another process revokes it: a direct UPDATE, so this process's cache is not told
    with session_scope() as s:
        key = s.exec(select(ApiKey).where(ApiKey.service_name == "ingest")).one()
        key.revoked_at = key.created_at
        s.add(key)
        s.commit()
    assert c.post("/api/billing/usage", json=body).status_code == 201  # cached
    for entry in api_keys._cache.values():  # CACHE_TTL seconds later
        entry.expires -= api_keys.CACHE_TTL + 0.1
    assert c.post("/api/billing/usage", json=body).status_code == 401


def test_unstorable_values_are_422_not_500(actors):
    c = actors.key_client(actors.service_key)
    r = c.post(
        "/api/billing/usage",
        json={"user_id": actors.a.id, "metric": "tokens", "quantity": 1, "metadata": {"a": "\0"}},
    )
    assert r.status_code == 422, r.text  # PostgreSQL's JSONB cannot store it: neither does SQLite
    huge = c.post("/api/billing/usage", json={"user_id": 2**40, "metric": "tokens", "quantity": 1})
    assert huge.status_code == 422
    assert (
        actors.cookie_client(actors.admin).get("/api/billing/admin/users/99999999999").status_code
        == 422
    )


def test_concurrent_overlapping_batches_count_each_event_once(actors, live_server):
    uid_a, uid_b = actors.a.id, actors.b.id

    def batch(i: int) -> int:
        # every batch repeats the shared keys (in a different order) plus one of its own
        shared = [
            {"user_id": uid, "metric": "tokens", "quantity": 2, "idempotency_key": f"s{k}"}
            for k in range(20)
            for uid in (uid_a, uid_b)
        ]
        if i % 2:
            shared.reverse()
        own = {"user_id": uid_a, "metric": "tokens", "quantity": 1, "idempotency_key": f"own{i}"}
        with http(live_server, actors.service_key) as c:
            return c.post("/api/billing/usage/batch", json={"events": [*shared, own]}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(batch, range(16))) == {201}
    assert _totals(uid_a) == (36, 56, 56)  # 20 shared x 2 + 16 own x 1
    assert _totals(uid_b) == (20, 40, 40)


def test_scoped_keys_only_do_what_they_name(actors):
    with session_scope() as s:
        read_only = api_keys.create_key(s, name="ro", service_name="ro", scopes=["usage:read"])[1]
    c = actors.key_client(read_only)
    check = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/quota/check", json=check).status_code == 200
    for path in ("/api/billing/usage", "/api/billing/usage/consume"):
        r = c.post(path, json=check)
        assert r.status_code == 403 and r.json()["error"]["scope"] == "usage:write"
    r = c.post("/api/billing/usage/batch", json={"events": [check]})
    assert r.status_code == 403
    assert _totals(actors.a.id) == (0, 0, 0)


def test_401_names_the_scheme(actors):
    r = actors.anon().post("/api/billing/usage", json={"metric": "tokens", "quantity": 1})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_an_occurred_at_without_an_offset_is_read_as_utc_as_the_docs_say(actors):
    """Guard for the behaviour (a single event's and a batch's), and the schema says it."""
    from datetime import UTC, datetime, timedelta

    c = actors.key_client(actors.service_key)
    when = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)
    naive = when.replace(tzinfo=None).isoformat()
    one = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1, "occurred_at": naive}
    r = c.post("/api/billing/usage", json=one)
    assert r.status_code == 201, r.text
    assert r.json()["event"]["occurred_at"] == when.isoformat().replace("+00:00", "Z")
    r = c.post("/api/billing/usage/batch", json={"events": [one]})
    assert r.status_code == 201, r.text
    assert r.json()["results"][0]["event"]["occurred_at"] == when.isoformat().replace("+00:00", "Z")

    schema = create_api().openapi()["components"]["schemas"]["UsageIn"]
    assert "without an offset is read as UTC" in schema["properties"]["occurred_at"]["description"]
