"""`billing-app usage record`: an operator records usage by hand and reads the answer the
API gives a service for the same write."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from billing_app.cli import main
from billing_app.db import session_scope
from tests.factories import usage_totals


def _record(user: str, quantity: int, key: str) -> dict[str, Any]:
    r = CliRunner().invoke(
        main,
        ["usage", "record", "--user", user, "--metric", "tokens", "--quantity", str(quantity),
         "--key", key],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_usage_record_prints_the_apis_answer(actors):
    api = actors.key_client(actors.service_key).post(
        "/api/billing/usage",
        json={"user_id": actors.b.id, "metric": "tokens", "quantity": 300, "idempotency_key": "x"},
    )
    assert api.status_code == 201, api.text
    first = _record(actors.a.email, 300, "ops-1")
    again = _record(str(actors.a.id), 300, "ops-1")
    assert first.keys() == api.json().keys() and "status" not in first
    assert first["event"].keys() == api.json()["event"].keys()
    assert (first["duplicate"], first["over_limit"], first["metric"]) == (False, False, "tokens")
    assert (first["used"], first["limit"], first["remaining"]) == (300, 100_000, 99_700)
    assert first["resets_at"] == api.json()["resets_at"] and first["resets_at"].endswith("Z")
    assert first["event"]["idempotency_key"] == "ops-1"
    assert again["duplicate"] and again["event"]["id"] == first["event"]["id"]
    with session_scope() as s:
        assert usage_totals(s, actors.a.id, "tokens") == (1, 300, 300)
