"""The console's ready-to-paste request for a new key, run by bash and curl as an admin
pastes it, against the API over real HTTP: it bills the customer set in USER_ID, and
pasted before USER_ID is set it writes nothing (it used to name the admin's own id, so
trying the key billed the admin)."""

from __future__ import annotations

import re
import subprocess

from billing_app.db import session_scope
from billing_app.services import metering
from billing_app.states.admin import curl_example


def _run(script: str) -> tuple[int, str]:
    """What the shell prints: curl's answer and, last, its HTTP status."""
    done = subprocess.run(
        ["bash", "-c", script.replace("curl ", 'curl -s -w "\\n%{http_code}" ', 1)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def _tokens(user_id: int) -> int:
    with session_scope() as s:
        return next(m.used for m in metering.summary(s, user_id) if m.metric == "tokens")


def test_the_pasted_example_bills_the_customer_set_in_user_id(live_server, actors) -> None:
    example = curl_example(live_server.url, actors.service_key)
    # No user written in: only $USER_ID (the admin's own id was, as a number).
    assert "$USER_ID" in example and not re.search(r"user_id[^$\n]{0,4}\d", example)

    status, body = _run(example)  # pasted as it is shown: no user set
    assert 400 <= status < 500, body
    assert _tokens(actors.a.id) == 0 and _tokens(actors.admin.id) == 0

    status, body = _run(example.replace("USER_ID=", f"USER_ID={actors.a.id}", 1))
    assert status == 201, body
    assert _tokens(actors.a.id) == 500 and _tokens(actors.admin.id) == 0


def test_the_read_only_example_reads_the_customer_set_in_user_id(live_server, actors) -> None:
    example = curl_example(live_server.url, actors.service_key, can_write=False)
    status, body = _run(example.replace("USER_ID=", f"USER_ID={actors.a.id}", 1))
    assert status == 200, body
    assert '"metric":"tokens"' in body.replace(" ", "")
