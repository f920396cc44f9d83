"""GET /api/billing/admin/users?usage= and users.csv?usage=: who is over or near a limit,
or has a quota override; an unknown value is a 422 naming the allowed ones."""

from __future__ import annotations

import csv
import io

from billing_app.db import session_scope
from billing_app.services import metering, quotas
from tests.factories import make_user


def test_usage_filter_lists_and_exports_who_needs_attention(actors, frozen_clock):
    with session_scope() as s:
        over = make_user(s, email="over-h78@example.com")
        near = make_user(s, email="near-h78@example.com")
        lifted = make_user(s, email="lifted-h78@example.com")
        metering.record(s, over.id, "api_calls", 150)  # 150% of Free's 100
        metering.record(s, near.id, "tokens", 8_500)  # 85% of Free's 10,000
        metering.record(s, lifted.id, "tokens", 9_000)
        quotas.set_override(s, lifted.id, "tokens", 0, "pilot", actor_user_id=actors.admin.id)
        metering.record(s, actors.a.id, "tokens", 500)
    c = actors.cookie_client(actors.admin)

    def listed(**params: str) -> tuple[int, list[str]]:
        r = c.get("/api/billing/admin/users", params=params)
        assert r.status_code == 200, r.text
        return r.json()["total"], [u["email"] for u in r.json()["items"]]

    assert listed(usage="over") == (1, ["over-h78@example.com"])
    assert listed(usage="near", sort="-quota") == (
        2,
        ["over-h78@example.com", "near-h78@example.com"],
    )
    assert listed(usage="override") == (1, ["lifted-h78@example.com"])
    assert listed(usage="near", q="near") == (1, ["near-h78@example.com"])

    r = c.get("/api/billing/admin/users.csv", params={"usage": "near", "sort": "email"})
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    assert [row["email"] for row in rows] == ["near-h78@example.com", "over-h78@example.com"]

    for path in ("/api/billing/admin/users", "/api/billing/admin/users.csv"):
        r = c.get(path, params={"usage": "hot"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_error"
        assert error["message"] == "usage must be one of: over, near, override."


def test_usage_filter_is_documented_in_openapi(actors):
    spec = actors.cookie_client(actors.admin).get("/api/openapi.json").json()
    for path in ("/api/billing/admin/users", "/api/billing/admin/users.csv"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert "over" in params["usage"]["description"]
        assert "override" in params["usage"]["description"]
