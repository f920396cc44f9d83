"""Values that parse as JSON but cannot be stored: a clear 422 on every write route, in
both lanes (the fast lane's own parser, and FastAPI's behind it), and nothing written."""

from __future__ import annotations

import pytest
from sqlmodel import func, select

from billing_app.db import session_scope
from billing_app.models import UsageEvent

DEEP = "[" * 40 + "]" * 40  # past MAX_METADATA_DEPTH, inside both parsers' own limits
HUGE_DEEP = "[" * 300 + "]" * 300  # the JSON columns' encoder refuses 255 levels
BAD = {
    "lone surrogate in metadata": (b'"metadata": {"a": "\\ud800"}', "metadata"),
    "lone surrogate as a metadata key": (b'"metadata": {"\\udfff": 1}', "metadata"),
    "metadata 40 levels deep": (b'"metadata": {"a": ' + DEEP.encode() + b"}", "metadata"),
    "metadata 300 levels deep": (b'"metadata": {"a": ' + HUGE_DEEP.encode() + b"}", None),
    "occurred_at before year 1 in UTC": (b'"occurred_at": "0001-01-01T00:30:00+01:00"', None),
}


def _events() -> int:
    with session_scope() as s:
        return s.exec(select(func.count()).select_from(UsageEvent)).one()


@pytest.mark.parametrize("lane", ["fast lane", "FastAPI"])
@pytest.mark.parametrize(
    ("route", "case"),
    [
        (route, case)
        for route in ("/api/billing/usage", "/usage/consume", "/usage/batch")
        for case in BAD
        if not (route == "/usage/consume" and "occurred_at" in case)  # consume is always now
    ],
)
def test_unstorable_values_are_4xx_and_write_nothing(actors, lane, case, route):
    fragment, field = BAD[case]
    path = route if route.startswith("/api") else "/api/billing" + route
    event = b'{"user_id": %d, "metric": "tokens", "quantity": 1, ' % actors.a.id + fragment + b"}"
    body = b'{"events": [' + event + b"]}" if route.endswith("batch") else event
    headers = {"Content-Type": "application/json"}
    if lane == "FastAPI":
        headers["Origin"] = "http://testserver"  # the fast lane passes such requests on
    r = actors.key_client(actors.service_key).post(path, content=body, headers=headers)
    assert r.status_code in (400, 422), (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and "Traceback" not in r.text
    if r.status_code == 422 and field is not None and not route.endswith("batch"):
        assert err.get("field") == field, err
    assert _events() == 0
