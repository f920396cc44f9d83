"""Property-based run over /api/openapi.json: no 5xx and no response that breaks the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing_app.api.app import create_api
from billing_app.api.fast_lane import fast_lane
from stripe_sandbox import SandboxConfig, SandboxServer
from tests.conftest import _clear_caches

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def sandbox(monkeypatch, app_settings) -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig()) as server:
        monkeypatch.setenv("STRIPE_API_BASE", server.url)
        _clear_caches()
        yield server


# Built at import: the app reads its settings (database URL) per request, so the test
# database the fixtures configure is the one it uses. With the fast lane in front, as in
# production: the bearer-key calls to the usage endpoints are answered by the lane.
APP = fast_lane(create_api())
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case, actors, sandbox):
    # An admin's own API key reaches user, admin and (for itself) service endpoints.
    from billing_app.db import session_scope
    from billing_app.services import api_keys

    if not hasattr(actors, "admin_key"):
        with session_scope() as s:
            actors.admin_key = api_keys.create_key(s, name="fuzz", user_id=actors.admin.id)[1]
    case.call_and_validate(headers={"Authorization": f"Bearer {actors.admin_key}"}, checks=CHECKS)
