"""The usage answers byte for byte, in both lanes: new events, duplicates, a batch of
both, counts only, refusals, consumes granted and refused. How the answers are built
may change for speed; what a client reads may not, by one byte.

The clock is frozen and the tables start empty, so ids and times are known. Each step
runs on the fast lane (a bearer key in front of FastAPI) and on the bare FastAPI app."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from billing_app.api.app import create_api
from billing_app.api.fast_lane import fast_lane
from billing_app.db import session_scope
from billing_app.services import api_keys
from tests.api.conftest import ORIGIN
from tests.factories import make_user

USAGE, BATCH, CONSUME = (
    "/api/billing/usage",
    "/api/billing/usage/batch",
    "/api/billing/usage/consume",
)
MINIMAL = {"Prefer": "return=minimal"}


def _ev(user: int, metric: str, quantity: int, key: str | None = None, **more: Any) -> dict:
    out: dict[str, Any] = {"user_id": user, "metric": metric, "quantity": quantity}
    if key is not None:
        out["idempotency_key"] = key
    return {**out, **more}


# Users 1 (basic: 100,000 tokens), 2 (enterprise: unlimited), 3 (free: 100 API calls).
FIRST_BATCH = [
    _ev(1, "tokens", 5, "n1", metadata={"model": "gpt-4", "é": "ü\u2028"}),  # 99.9 %
    _ev(1, "tokens", 5, "n2"),  # at the limit: 100.0 %, nothing remaining
    _ev(1, "tokens", 1, "n3"),  # over it
    _ev(2, "api_calls", 7, "n4", occurred_at="2026-11-14T08:30:00Z"),  # unlimited, a day back
    _ev(3, "scraping_tasks", 3),  # keyed by the batch's header: hb#4
    _ev(1, "tokens", 2, "n6", occurred_at="2026-10-20T00:00:00+02:00"),  # last month's period
    _ev(1, "tokens", 99_990, "s1"),  # the single event's key: a duplicate
]
# (name, path, body, extra headers)
STEPS: list[tuple[str, str, Any, dict[str, str]]] = [
    ("usage new", USAGE, _ev(1, "tokens", 99_990, "s1"), {}),
    ("batch new", BATCH, {"events": FIRST_BATCH}, {"Idempotency-Key": "hb"}),
    ("batch again", BATCH, {"events": FIRST_BATCH}, {"Idempotency-Key": "hb"}),
    ("batch mixed", BATCH, {"events": [*FIRST_BATCH[:2], _ev(2, "tokens", 10, "m1")]}, {}),
    ("minimal new", BATCH, {"events": [_ev(3, "tokens", 1, "x1"), _ev(3, "tokens", 1, "x2")]},
     MINIMAL),
    ("minimal mixed", BATCH, {"events": [_ev(3, "tokens", 1, "x1"), _ev(3, "tokens", 1, "x3")]},
     MINIMAL),
    ("minimal duplicates", BATCH, {"events": [_ev(3, "tokens", 1, "x2")]}, MINIMAL),
    ("batch unknown user", BATCH, {"events": [_ev(1, "tokens", 1, "u1"), _ev(999, "tokens", 1)]},
     {}),
    ("batch conflict", BATCH, {"events": [_ev(1, "tokens", 6, "n1")]}, {}),
    ("batch invalid", BATCH, {"events": [_ev(1, "gpus", 1, "i1")]}, {}),
    ("consume granted", CONSUME, _ev(3, "api_calls", 60, "c1"), {}),
    ("consume refused", CONSUME, _ev(3, "api_calls", 50, "c2"), {}),
    ("consume repeated", CONSUME, _ev(3, "api_calls", 60, "c1"), {}),
    ("usage duplicate", USAGE, _ev(1, "tokens", 99_990, "s1"), {}),
]  # fmt: skip

# name -> (status, body) on SQLite (PostgreSQL's differences: POSTGRES below)
EXPECTED: dict[str, tuple[int, str]] = {
    "usage new": (
        201,
        (
            '{"event":{"id":1,"user_id":1,"metric":"tokens","quantity":99990,'
            '"occurred_at":"2026-11-15T12:00:00Z","recorded_at":"2026-11-15T12:00:00Z",'
            '"idempotency_key":"s1","metadata":null,"canceled_at":null},"duplicate":false,'
            '"over_limit":false,"metric":"tokens","used":99990,"limit":100000,'
            '"unlimited":false,"remaining":10,"percent":99.9,'
            '"resets_at":"2026-12-01T00:00:00Z"}'
        ),
    ),
    "batch new": (
        201,
        (
            '{"recorded":6,"duplicates":1,"results":[{"event":{"id":2,"user_id":1,'
            '"metric":"tokens","quantity":5,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n1",'
            '"metadata":{"model":"gpt-4","é":"ü\u2028"},"canceled_at":null},"duplicate":false,'
            '"over_limit":false,"metric":"tokens","used":99995,"limit":100000,'
            '"unlimited":false,"remaining":5,"percent":99.9,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":3,"user_id":1,'
            '"metric":"tokens","quantity":5,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n2","metadata":null,'
            '"canceled_at":null},"duplicate":false,"over_limit":false,"metric":"tokens",'
            '"used":100000,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":4,"user_id":1,'
            '"metric":"tokens","quantity":1,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n3","metadata":null,'
            '"canceled_at":null},"duplicate":false,"over_limit":true,"metric":"tokens",'
            '"used":100001,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":6,"user_id":2,'
            '"metric":"api_calls","quantity":7,"occurred_at":"2026-11-14T08:30:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n4","metadata":null,'
            '"canceled_at":null},"duplicate":false,"over_limit":false,"metric":"api_calls",'
            '"used":7,"limit":0,"unlimited":true,"remaining":null,"percent":0.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":7,"user_id":3,'
            '"metric":"scraping_tasks","quantity":3,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"hb#4","metadata":null,'
            '"canceled_at":null},"duplicate":false,"over_limit":false,'
            '"metric":"scraping_tasks","used":3,"limit":10,"unlimited":false,"remaining":7,'
            '"percent":30.0,"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":5,"user_id":1,'
            '"metric":"tokens","quantity":2,"occurred_at":"2026-10-19T22:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n6","metadata":null,'
            '"canceled_at":null},"duplicate":false,"over_limit":false,"metric":"tokens",'
            '"used":2,"limit":100000,"unlimited":false,"remaining":99998,"percent":0.0,'
            '"resets_at":"2026-11-01T00:00:00Z"},{"event":{"id":1,"user_id":1,'
            '"metric":"tokens","quantity":99990,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"s1","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":true,"metric":"tokens",'
            '"used":100001,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"}]}'
        ),
    ),
    "batch again": (
        200,
        (
            '{"recorded":0,"duplicates":7,"results":[{"event":{"id":2,"user_id":1,'
            '"metric":"tokens","quantity":5,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n1",'
            '"metadata":{"model":"gpt-4","é":"ü\u2028"},"canceled_at":null},"duplicate":true,'
            '"over_limit":true,"metric":"tokens","used":100001,"limit":100000,'
            '"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":3,"user_id":1,'
            '"metric":"tokens","quantity":5,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n2","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":true,"metric":"tokens",'
            '"used":100001,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":4,"user_id":1,'
            '"metric":"tokens","quantity":1,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n3","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":true,"metric":"tokens",'
            '"used":100001,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":6,"user_id":2,'
            '"metric":"api_calls","quantity":7,"occurred_at":"2026-11-14T08:30:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n4","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":false,"metric":"api_calls",'
            '"used":7,"limit":0,"unlimited":true,"remaining":null,"percent":0.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":7,"user_id":3,'
            '"metric":"scraping_tasks","quantity":3,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"hb#4","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":false,"metric":"scraping_tasks",'
            '"used":3,"limit":10,"unlimited":false,"remaining":7,"percent":30.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":5,"user_id":1,'
            '"metric":"tokens","quantity":2,"occurred_at":"2026-10-19T22:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n6","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":false,"metric":"tokens",'
            '"used":2,"limit":100000,"unlimited":false,"remaining":99998,"percent":0.0,'
            '"resets_at":"2026-11-01T00:00:00Z"},{"event":{"id":1,"user_id":1,'
            '"metric":"tokens","quantity":99990,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"s1","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":true,"metric":"tokens",'
            '"used":100001,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"}]}'
        ),
    ),
    "batch mixed": (
        201,
        (
            '{"recorded":1,"duplicates":2,"results":[{"event":{"id":2,"user_id":1,'
            '"metric":"tokens","quantity":5,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n1",'
            '"metadata":{"model":"gpt-4","é":"ü\u2028"},"canceled_at":null},"duplicate":true,'
            '"over_limit":true,"metric":"tokens","used":100001,"limit":100000,'
            '"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":3,"user_id":1,'
            '"metric":"tokens","quantity":5,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"n2","metadata":null,'
            '"canceled_at":null},"duplicate":true,"over_limit":true,"metric":"tokens",'
            '"used":100001,"limit":100000,"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"},{"event":{"id":8,"user_id":2,'
            '"metric":"tokens","quantity":10,"occurred_at":"2026-11-15T12:00:00Z",'
            '"recorded_at":"2026-11-15T12:00:00Z","idempotency_key":"m1","metadata":null,'
            '"canceled_at":null},"duplicate":false,"over_limit":false,"metric":"tokens",'
            '"used":10,"limit":0,"unlimited":true,"remaining":null,"percent":0.0,'
            '"resets_at":"2026-12-01T00:00:00Z"}]}'
        ),
    ),
    "minimal new": (201, ('{"recorded":2,"duplicates":0}')),
    "minimal mixed": (201, ('{"recorded":1,"duplicates":1}')),
    "minimal duplicates": (200, ('{"recorded":0,"duplicates":1}')),
    "batch unknown user": (
        422,
        (
            '{"error":{"code":"validation_error",'
            '"message":"1 of 2 events name an unknown user; nothing was recorded.",'
            '"events":[{"field":"user_id","index":1,"code":"user_not_found",'
            '"message":"No user with id 999.","errors":[{"field":"user_id",'
            '"code":"user_not_found","message":"No user with id 999."}]}],'
            '"fields":[{"field":"events.1.user_id","message":"No user with id 999.",'
            '"type":"user_not_found"}]}}'
        ),
    ),
    "batch conflict": (
        409,
        (
            '{"error":{"code":"idempotency_key_reused",'
            '"message":"Event 0: This idempotency key was already used for a usage event with a '
            'different quantity and metadata (5 tokens). Nothing was recorded.",'
            '"index":0,"events":[{"field":"idempotency_key","idempotency_key":"n1",'
            '"differing_fields":["quantity","metadata"],"index":0,'
            '"code":"idempotency_key_reused",'
            '"message":"This idempotency key was already used for a usage event with a different '
            'quantity and metadata (5 tokens).",'
            '"errors":[{"field":"idempotency_key","code":"idempotency_key_reused",'
            '"message":"This idempotency key was already used for a usage event with a different '
            'quantity and metadata (5 tokens)."}]}],'
            '"idempotency_key":"n1","differing_fields":["quantity","metadata"]}}'
        ),
    ),
    "batch invalid": (
        422,
        (
            '{"error":{"code":"validation_error",'
            '"message":"1 of 1 events are invalid; nothing was recorded.",'
            '"events":[{"field":"metric","metric":"gpus","index":0,"code":"unknown_metric",'
            '"message":"Unknown metric \'gpus\'; expected one of: tokens, api_calls,'
            ' scraping_tasks.","errors":[{"field":"metric","code":"unknown_metric",'
            '"message":"Unknown metric \'gpus\'; expected one of: tokens, api_calls,'
            ' scraping_tasks."}]}],"fields":[{"field":"events.0.metric",'
            '"message":"Unknown metric \'gpus\'; expected one of: tokens, api_calls,'
            ' scraping_tasks.","type":"unknown_metric"}]}}'
        ),
    ),
    "consume granted": (
        201,
        (
            '{"event":{"id":12,"user_id":3,"metric":"api_calls","quantity":60,'
            '"occurred_at":"2026-11-15T12:00:00Z","recorded_at":"2026-11-15T12:00:00Z",'
            '"idempotency_key":"c1","metadata":null,"canceled_at":null},"duplicate":false,'
            '"over_limit":false,"metric":"api_calls","used":60,"limit":100,"unlimited":false,'
            '"remaining":40,"percent":60.0,"resets_at":"2026-12-01T00:00:00Z"}'
        ),
    ),
    "consume refused": (
        403,
        (
            '{"error":{"code":"quota_exceeded",'
            '"message":"Requested 50 API calls but only 40 of the monthly API call limit of 100 '
            'remain; resets 2026-12-01.",'
            '"metric":"api_calls","requested":50,"used":60,"limit":100,"remaining":40,'
            '"resets_at":"2026-12-01T00:00:00Z"}}'
        ),
    ),
    "consume repeated": (
        200,
        (
            '{"event":{"id":12,"user_id":3,"metric":"api_calls","quantity":60,'
            '"occurred_at":"2026-11-15T12:00:00Z","recorded_at":"2026-11-15T12:00:00Z",'
            '"idempotency_key":"c1","metadata":null,"canceled_at":null},"duplicate":true,'
            '"over_limit":false,"metric":"api_calls","used":60,"limit":100,"unlimited":false,'
            '"remaining":40,"percent":60.0,"resets_at":"2026-12-01T00:00:00Z"}'
        ),
    ),
    "usage duplicate": (
        200,
        (
            '{"event":{"id":1,"user_id":1,"metric":"tokens","quantity":99990,'
            '"occurred_at":"2026-11-15T12:00:00Z","recorded_at":"2026-11-15T12:00:00Z",'
            '"idempotency_key":"s1","metadata":null,"canceled_at":null},"duplicate":true,'
            '"over_limit":true,"metric":"tokens","used":100001,"limit":100000,'
            '"unlimited":false,"remaining":0,"percent":100.0,'
            '"resets_at":"2026-12-01T00:00:00Z"}'
        ),
    ),
}

# PostgreSQL's own bytes: its sequence skips a value for each row an insert left out (a
# stored key) or rolled back, and jsonb keeps an object's keys shorter first.
_ID6, _ID7 = '{"event":{"id":6,"user_id":2,', '{"event":{"id":7,"user_id":3,'
_META = ('"metadata":{"model":"gpt-4","é":"ü\u2028"}', '"metadata":{"é":"ü\u2028","model":"gpt-4"}')
_IDS = [(_ID6, _ID6.replace("6", "7")), (_ID7, _ID7.replace("7", "8"))]
POSTGRES: dict[str, list[tuple[str, str]]] = {
    "batch new": _IDS,
    "batch again": [*_IDS, _META],
    "batch mixed": [_META, ('{"event":{"id":8,', '{"event":{"id":18,')],
    "consume granted": [('{"event":{"id":12,', '{"event":{"id":27,')],
    "consume repeated": [('{"event":{"id":12,', '{"event":{"id":27,')],
}


@pytest.mark.parametrize("lane", [True, False], ids=["fast lane", "fastapi"])
def test_usage_answers_are_byte_identical(
    lane: bool, app_settings, engine, frozen_clock, is_postgres
):
    with session_scope() as s:
        for plan in ("basic", "enterprise", "free"):
            make_user(s, plan=plan)
        secret = api_keys.create_key(s, name="ingest", service_name="ingest")[1]
    api = create_api()
    client = TestClient(fast_lane(api) if lane else api, base_url=ORIGIN,
                        headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    for name, path, body, headers in STEPS:
        r = client.post(path, json=body, headers=headers)
        status, expected = EXPECTED[name]
        for old, new in POSTGRES.get(name, []) if is_postgres else []:
            assert old in expected, name
            expected = expected.replace(old, new)
        assert (r.status_code, r.text) == (status, expected), name
        assert r.content == expected.encode(), name
        minimal = "return=minimal" if headers is MINIMAL else None
        assert r.headers.get("preference-applied") == minimal, name
        assert r.headers.get_list("cache-control") == ["no-store"], name
