"""Bad input against the production server: schemathesis over every operation of
/api/openapi.json, through the whole stack granian serves (Reflex's wrapper included),
as a service key, a user key, an admin key and with no credentials: zero 5xx.

Extends tests/api/test_schemathesis.py (in-process, admin key, schema conformance, 15
examples) with more examples, every kind of caller and the real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from bench import seed
from bench.servers import app_server
from tests.reliability.conftest import report

pytestmark = pytest.mark.reliability
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
_seen: dict[str, int] = {}


@pytest.fixture(scope="module")
def live(scratch_url: str) -> Iterator[dict[str, Any]]:
    eng = seed.engine_for(scratch_url)
    user, admin = seed.seed_users(eng, 1, plan="basic", prefix="fuzzu") + seed.seed_users(
        eng, 1, prefix="fuzza", role="admin"
    )
    eng.dispose()
    keys = {
        "service": seed.service_key(scratch_url, "fuzz"),
        "user": seed.user_key(scratch_url, user),
        "admin": seed.user_key(scratch_url, admin, name="fuzz-admin"),
        "none": None,
    }
    with app_server(scratch_url) as srv:
        yield {"url": srv.base_url, "keys": keys}
    report("live fuzz statuses", **{f"status_{k}": v for k, v in sorted(_seen.items())})


def test_no_5xx_for_any_input(live: dict[str, Any]) -> None:
    # Programmatic loop over the operations (schemathesis' pytest fixture loader does not
    # run under this pytest); one hypothesis run per operation.
    schema = schemathesis.openapi.from_url(live["url"] + "/api/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            for key in live["keys"].values():  # service, user, admin, no credentials
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                if case.path == "/api/billing/webhook":
                    headers["Stripe-Signature"] = "t=1,v1=00"  # a bad signature: 4xx too
                response = case.call(base_url=live["url"], headers=headers, timeout=30)
                code = response.status_code
                _seen[str(code)] = _seen.get(str(code), 0) + 1
                if code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {code}: {response.text[:200]}"
                    )
                case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except Exception as err:  # keep going: report every operation that fails
            failures.append(f"{op.method.upper()} {op.path}: {str(err)[:300]}")
    report("live fuzz", operations=operations, server_errors=len(failures))
    assert not failures, "\n".join(failures[:20])
