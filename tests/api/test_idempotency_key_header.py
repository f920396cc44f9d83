"""The Idempotency-Key header on the four endpoints that take it (record, consume, cancel,
batch): sent empty it is a 422 naming the header, on both lanes (the fast lane for a
bearer key, FastAPI's routes), never read as no key; and its limits in /api/openapi.json
are the ones the server enforces."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from billing_app.api.app import create_api
from billing_app.db import session_scope
from billing_app.models import UsageEvent
from billing_app.services.metering import MAX_KEY_LENGTH
from billing_app.services.metering_batch import BATCH_KEY_MAX
from tests.api.conftest import ORIGIN, http

EMPTY = "The Idempotency-Key header is empty"
# path -> (the body, without a key of its own, and the longest header the server takes)
KEYED = {
    "/api/billing/usage": ({"metric": "tokens", "quantity": 1}, MAX_KEY_LENGTH),
    "/api/billing/usage/consume": ({"metric": "tokens", "quantity": 1}, MAX_KEY_LENGTH),
    "/api/billing/usage/cancel": ({}, MAX_KEY_LENGTH),
    "/api/billing/usage/batch": ({"events": [{"metric": "tokens", "quantity": 1}]}, BATCH_KEY_MAX),
}


def _events() -> int:
    with session_scope() as s:
        return s.exec(sa.select(sa.func.count()).select_from(UsageEvent)).one()[0]


def _for(user_id: int, body: dict[str, Any]) -> dict[str, Any]:
    if "events" in body:
        return {"events": [{**e, "user_id": user_id} for e in body["events"]]}
    return {**body, "user_id": user_id}


def _refused_as_empty(r: httpx.Response, where: str) -> None:
    assert r.status_code == 422, (where, r.text)
    err = r.json()["error"]
    assert err["code"] == "validation_error", where
    assert EMPTY in err["message"], (where, err["message"])
    assert err["fields"][0]["field"] == "idempotency_key", (where, err["fields"])
    assert err["fields"][0]["message"].startswith(EMPTY), (where, err["fields"])


@pytest.mark.parametrize("path", KEYED, ids=[p.rsplit("/", 1)[1] for p in KEYED])
def test_an_empty_idempotency_key_header_is_a_422_naming_it(live_server, actors, path):
    """Over real HTTP (a value of only spaces arrives empty: HTTP strips it), for a
    service's key and a user's session; with and without a key in the body; nothing
    stored. curl drops `-H "Idempotency-Key: "` before sending; `-H "Idempotency-Key;"`
    sends it empty, as here."""
    body, _ = KEYED[path]
    uid = actors.a.id
    with http(live_server, actors.service_key) as svc:
        # a key to cancel, so that only the header can be what is refused
        r = svc.post("/api/billing/usage", json=_for(uid, {**KEYED["/api/billing/usage"][0]}))
        assert r.status_code == 201, r.text
        stored = r.json()["event"]["idempotency_key"]
        before = _events()
        empty = {"Idempotency-Key": ""}
        _refused_as_empty(svc.post(path, json=_for(uid, body), headers=empty), "service")
        if "events" not in body:
            keyed = {**_for(uid, body), "idempotency_key": stored}
            _refused_as_empty(svc.post(path, json=keyed, headers=empty), "service, body key")
            bad = {**keyed, "user_id": 0}  # with a problem the schema names: the header first
            _refused_as_empty(svc.post(path, json=bad, headers=empty), "service, bad body")
    with actors.cookie_client(actors.a) as session:  # FastAPI's route
        _refused_as_empty(session.post(path, json=body, headers={"Idempotency-Key": ""}), "user")
        only_spaces = {"Idempotency-Key": "   "}  # as an ASGI server might pass it on
        _refused_as_empty(session.post(path, json=body, headers=only_spaces), "user, spaces")
    assert _events() == before
    with http(live_server, actors.service_key) as svc:  # the event was not cancelled
        r = svc.get("/api/billing/usage", params={"user_id": uid})
        assert next(m for m in r.json()["metrics"] if m["metric"] == "tokens")["used"] == 1


@pytest.mark.parametrize("path", KEYED, ids=[p.rsplit("/", 1)[1] for p in KEYED])
def test_the_idempotency_key_header_limits_are_documented_as_enforced(actors, path):
    body, longest = KEYED[path]
    spec = TestClient(create_api(), base_url=ORIGIN).get("/api/openapi.json").json()
    params = spec["paths"][path]["post"]["parameters"]
    header = next(p for p in params if p["name"].lower() == "idempotency-key")
    schema = header["schema"]
    assert (schema.get("minLength"), schema.get("maxLength")) == (1, longest)
    assert schema.get("pattern") == r"\S"  # not only whitespace
    assert f"1 to {longest} characters" in header["description"]
    assert "empty" in header["description"] and "422" in header["description"]

    body = _for(actors.a.id, body)
    lane = actors.key_client(actors.service_key)
    plain = TestClient(create_api(), base_url=ORIGIN, headers=lane.headers)
    for side, c in (("lane", lane), ("plain", plain)):
        fits = c.post(path, json=body, headers={"Idempotency-Key": side[0] * longest})
        # taken: cancel's is then an unknown key, a 404
        assert fits.status_code in (201, 404), (side, fits.text)
        over = c.post(path, json=body, headers={"Idempotency-Key": side[0] * (longest + 1)})
        assert over.status_code == 422, (side, over.text)
        assert over.json()["error"]["fields"][0]["field"] == "idempotency_key", over.text
