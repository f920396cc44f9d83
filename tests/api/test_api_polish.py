"""What an engineer wiring a service meets first: where the docs are, what a 422 says,
a batch repeating a key, and when to retry a 502."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from billing_app.api.app import create_api
from billing_app.db import session_scope
from tests.api.conftest import ORIGIN
from tests.factories import usage_totals

JSON = {"Content-Type": "application/json"}


def _lanes(actors, secret: str) -> list[TestClient]:
    """The production composition (the fast lane in front) and FastAPI alone."""
    auth = {"Authorization": f"Bearer {secret}"}
    return [
        TestClient(actors.api, base_url=ORIGIN, headers=auth),
        TestClient(create_api(), base_url=ORIGIN, headers=auth),
    ]


@pytest.mark.parametrize(
    ("path", "target"),
    [("/docs", "/api/docs"), ("/redoc", "/api/docs"), ("/openapi.json", "/api/openapi.json")],
)
def test_fastapis_default_docs_paths_lead_to_the_api_docs(client, path, target):
    """/docs was the pages' 404: FastAPI's default places send an engineer on."""
    for method in ("GET", "HEAD"):
        r = client.request(method, path, follow_redirects=False)
        assert r.status_code == 307, (method, r.status_code)
        assert r.headers["location"] == target
    assert client.get(path).status_code == 200


def test_a_batch_repeating_a_key_names_what_differs_and_which_event(actors):
    """Within one batch, a key repeated with other values was "repeats event 0 with
    different values": which values, the 409 for a stored key says; now this 422 too."""
    a = actors.a.id
    first = {"user_id": a, "metric": "tokens", "quantity": 5, "idempotency_key": "k"}
    events = [
        first,
        {"user_id": a, "metric": "tokens", "quantity": 1},
        {**first, "quantity": 6},
        {**first, "metric": "api_calls", "metadata": {"model": "x"}},
    ]
    for svc in _lanes(actors, actors.service_key):
        # Alone, and with an event the schema refuses: the same naming either way.
        for extra in ([], [{"user_id": a, "metric": "tokens", "quantity": "many"}]):
            r = svc.post("/api/billing/usage/batch", json={"events": events + extra})
            assert r.status_code == 422, r.text
            bad = {e["index"]: e for e in r.json()["error"]["events"]}
            assert (bad[2]["repeats_index"], bad[2]["differing_fields"]) == (0, ["quantity"])
            assert bad[2]["idempotency_key"] == "k"
            assert bad[2]["message"] == (
                "Idempotency key repeats event 0 with a different quantity (5 tokens)."
            )
            assert (bad[3]["repeats_index"], bad[3]["differing_fields"]) == (
                0,
                ["metric", "metadata"],
            )
            assert bad[3]["message"] == (
                "Idempotency key repeats event 0 with a different metric and metadata (5 tokens)."
            )
            fields = {f["field"]: f for f in r.json()["error"]["fields"]}
            assert fields["events.2.idempotency_key"]["message"] == bad[2]["message"]
    with session_scope() as s:
        assert usage_totals(s, a, "tokens") == (0, 0, 0)


MISTAKES = [
    ({"quantity": None, "metric": "tokens"}, "quantity", "missing", "quantity is required."),
    (
        {"quantity": "12"},
        "quantity",
        "int_type",
        'quantity must be a whole number (got "12").',
    ),
    ({"quantity": 1.5}, "quantity", "int_type", "quantity must be a whole number (got 1.5)."),
    ({"quantity": -3}, "quantity", "greater_than", "quantity must be greater than 0 (got -3)."),
    (
        {"quantity": 10**10},
        "quantity",
        "less_than_equal",
        "quantity must be at most 1,000,000,000 (got 10000000000).",
    ),
    ({"metric": 7}, "metric", "string_type", "metric must be a string (got 7)."),
    (
        {"metric": "gpus"},
        "metric",
        "unknown_metric",
        "Unknown metric 'gpus'; expected one of: tokens, api_calls, scraping_tasks.",
    ),
    (
        {"occurred_at": "yesterday"},
        "occurred_at",
        "datetime_from_date_parsing",
        'occurred_at must be an ISO 8601 time such as 2026-12-07T13:00:00Z (got "yesterday"):'
        " input is too short.",
    ),
    (
        {"occurred_at": "2026-13-01T00:00:00Z"},
        "occurred_at",
        "datetime_from_date_parsing",
        "occurred_at must be an ISO 8601 time such as 2026-12-07T13:00:00Z "
        '(got "2026-13-01T00:00:00Z"): month value is outside expected range of 1-12.',
    ),
    (
        {"idempotencyKey": "k"},
        "idempotencyKey",
        "extra_forbidden",
        "There is no field idempotencyKey here; check its spelling against /api/docs.",
    ),
    (
        {"idempotency_key": "k\ud800"},
        "idempotency_key",
        "string_unicode",
        "idempotency_key must be Unicode text (it holds a lone surrogate such as \\ud800).",
    ),
    (
        {"metadata": ["gpt-4"]},
        "metadata",
        "dict_type",
        "metadata must be a JSON object (got an array).",
    ),
]


@pytest.mark.parametrize(("change", "field", "kind", "message"), MISTAKES)
def test_a_422_says_in_words_what_is_wrong_with_which_field(actors, change, field, kind, message):
    """Pydantic's "Input should be a valid integer" named neither the field nor what came;
    each message now does (the entry's `type` stays the machine's)."""
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 5, **change}
    body = {k: v for k, v in body.items() if v is not None}
    for svc in _lanes(actors, actors.service_key):
        consume = [] if "occurred_at" in change else ["/api/billing/usage/consume"]
        for path in ["/api/billing/usage", *consume]:  # a consume has no occurred_at
            r = svc.post(path, content=json.dumps(body), headers=JSON)  # \ud800 as sent
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["message"] == message
            assert error["fields"] == [{"field": field, "message": message, "type": kind}]
        batch = svc.post(
            "/api/billing/usage/batch", content=json.dumps({"events": [body]}), headers=JSON
        )
        assert batch.status_code == 422, batch.text
        [bad] = batch.json()["error"]["events"]
        assert (bad["message"], bad["errors"][0]["field"]) == (message, field)
        assert batch.json()["error"]["fields"][0]["field"] == f"events.0.{field}"


def test_a_query_parameters_422_names_it_with_the_value_as_sent(actors):
    svc = actors.key_client(actors.service_key)
    r = svc.get("/api/billing/invoices", params={"user_id": actors.a.id, "page": "0"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "page must be at least 1 (got 0)."
    assert r.json()["error"]["fields"][0]["field"] == "query.page"
    r = svc.get("/api/billing/usage", params={"user_id": "alice"})
    assert r.json()["error"]["message"] == "user_id must be a whole number (got alice)."


def test_sign_ins_422_says_in_words_which_field(actors):
    r = actors.anon().post("/api/auth/login", json={"email": "a@example.com", "password": 5})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "password must be a string (got 5)."


def test_stripe_unreachable_says_when_to_retry(actors):
    """Checkout with Stripe unreachable (nothing listens in these tests): a 502 the client
    retries, and now says when, as every 503 does; /api/docs says so."""
    r = actors.cookie_client(actors.a).post("/api/billing/checkout", json={"plan": "pro"})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "payment_provider_error"
    assert r.headers["retry-after"] == "5"
    spec = actors.anon().get("/api/openapi.json").json()
    for path in ("/api/billing/checkout", "/api/billing/portal"):
        assert "Retry-After" in spec["paths"][path]["post"]["responses"]["502"]["headers"]
