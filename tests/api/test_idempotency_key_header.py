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

from billing_app.api import service_routes
from billing_app.api.app import create_api
from billing_app.db import session_scope
from billing_app.models import UsageEvent
from billing_app.services import auth
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


def _stored_keys() -> list[str]:
    with session_scope() as s:
        return list(s.exec(sa.select(UsageEvent.idempotency_key)).scalars())


def _caller_client(live_server, actors, lane: str) -> httpx.Client:
    """User A over real HTTP: by its key (the fast lane answers) or by its session with
    our Origin (FastAPI's routes answer)."""
    if lane == "fast":
        return http(live_server, actors.a_key)
    with session_scope() as s:
        token = auth.new_session(s, actors.a.id)
    return httpx.Client(
        base_url=live_server.url,
        headers={"Origin": live_server.url, "Cookie": f"{auth.SESSION_COOKIE}={token}"},
        timeout=30,
    )


UTF8_KEY = "résumé-1"


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize("path", ["/api/billing/usage", "/api/billing/usage/consume"])
def test_a_utf8_idempotency_key_header_is_the_same_key_as_in_the_body(
    live_server, actors, monkeypatch, path, lane
):
    """The header's UTF-8 bytes were read as Latin-1: "résumé-1" was stored as
    "rÃ©sumÃ©-1", its retry with the key in the body counted twice, and the same key in
    both places was a 422 "keys differ". Bytes that are not UTF-8 stay Latin-1."""
    fastapi_calls: list[int] = []
    caller = service_routes._caller
    monkeypatch.setattr(service_routes, "_caller", lambda r: fastapi_calls.append(1) or caller(r))
    body = {"metric": "tokens", "quantity": 2}
    with _caller_client(live_server, actors, lane) as c:
        first = c.post(path, json=body, headers={"Idempotency-Key": UTF8_KEY.encode()})
        assert first.status_code == 201, first.text
        assert first.json()["event"]["idempotency_key"] == UTF8_KEY
        event_id = first.json()["event"]["id"]
        for tag, headers, key in (
            ("body only", {}, UTF8_KEY),
            ("header and body", {"Idempotency-Key": UTF8_KEY.encode()}, UTF8_KEY),
            ("header only", {"Idempotency-Key": UTF8_KEY.encode()}, None),
        ):
            sent = body if key is None else {**body, "idempotency_key": key}
            r = c.post(path, json=sent, headers=headers)
            assert r.status_code == 200, (tag, r.text)
            assert r.json()["duplicate"] and r.json()["event"]["id"] == event_id, tag
        # "café" in Latin-1 is not UTF-8: read as Latin-1, as before.
        latin = c.post(path, json=body, headers={"Idempotency-Key": "café".encode("latin-1")})
        assert latin.status_code == 201, latin.text
        again = c.post(path, json={**body, "idempotency_key": "café"})
        assert (again.status_code, again.json()["event"]["id"]) == (
            200,
            latin.json()["event"]["id"],
        )
        differ = c.post(
            path,
            json={**body, "idempotency_key": "resume-1"},
            headers={"Idempotency-Key": UTF8_KEY.encode()},
        )
        assert differ.status_code == 422, differ.text
        # a body the schema refuses: the same header and body key are not "keys differ"
        bad = {**body, "quantity": "2", "idempotency_key": UTF8_KEY}
        r = c.post(path, json=bad, headers={"Idempotency-Key": UTF8_KEY.encode()})
        assert r.status_code == 422, r.text
        assert [f["field"] for f in r.json()["error"]["fields"]] == ["quantity"], r.text
    assert sorted(_stored_keys()) == sorted([UTF8_KEY, "café"])
    with http(live_server, actors.service_key) as svc:
        r = svc.get("/api/billing/usage", params={"user_id": actors.a.id})
        assert next(m for m in r.json()["metrics"] if m["metric"] == "tokens")["used"] == 4
    assert bool(fastapi_calls) == (lane == "fastapi")


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_utf8_idempotency_key_header_cancels_the_event_it_names(live_server, actors, lane):
    with _caller_client(live_server, actors, lane) as c:
        wrote = c.post(
            "/api/billing/usage",
            json={"metric": "tokens", "quantity": 3, "idempotency_key": UTF8_KEY},
        )
        assert wrote.status_code == 201, wrote.text
        header = {"Idempotency-Key": UTF8_KEY.encode()}
        r = c.post("/api/billing/usage/cancel", json={}, headers=header)
        assert r.status_code == 200, r.text
        assert r.json()["event"]["id"] == wrote.json()["event"]["id"]
        assert not r.json()["already_canceled"]
        r = c.post("/api/billing/usage/cancel", json={"idempotency_key": UTF8_KEY}, headers=header)
        assert r.status_code == 200 and r.json()["already_canceled"], r.text


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
def test_a_utf8_batch_idempotency_key_header_keys_its_events(live_server, actors, lane):
    events = [{"metric": "tokens", "quantity": 1}, {"metric": "tokens", "quantity": 2}]
    header = {"Idempotency-Key": "lot-é".encode()}
    with _caller_client(live_server, actors, lane) as c:
        r = c.post("/api/billing/usage/batch", json={"events": events}, headers=header)
        assert r.status_code == 201, r.text
        assert [x["event"]["idempotency_key"] for x in r.json()["results"]] == [
            "lot-é#0",
            "lot-é#1",
        ]
        # the same events, keyed in the body: all duplicates
        keyed = [{**e, "idempotency_key": f"lot-é#{i}"} for i, e in enumerate(events)]
        r = c.post("/api/billing/usage/batch", json={"events": keyed})
        assert r.status_code == 200 and r.json()["duplicates"] == 2, r.text
        # a refused batch names the header's key as sent (event 0's would be event 1's own)
        clash = [{"metric": "tokens", "quantity": 1}, {**events[1], "idempotency_key": "lot-é#0"}]
        r = c.post("/api/billing/usage/batch", json={"events": clash}, headers=header)
        assert r.status_code == 422 and "lot-é#0" in r.text, r.text
        assert [e["index"] for e in r.json()["error"]["events"]] == [0], r.text
        # so does one the schema refuses (event 2's quantity), with its other problems
        r = c.post(
            "/api/billing/usage/batch",
            json={"events": [*clash, {"metric": "tokens", "quantity": "x"}]},
            headers=header,
        )
        assert r.status_code == 422, r.text
        assert [e["index"] for e in r.json()["error"]["events"]] == [0, 2], r.text
        assert "lot-é#0" in r.json()["error"]["events"][0]["message"], r.text
    assert sorted(_stored_keys()) == ["lot-é#0", "lot-é#1"]
