"""`billing-app apikey create | list | revoke`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from billing_app.cli import main
from billing_app.db import session_scope
from billing_app.services import api_keys


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_create_list_revoke(actors):
    r = _run("apikey", "create", "--service", "scraper")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["secret"].startswith("bk_live_") and created["kind"] == "service"
    with session_scope() as s:
        assert api_keys.authenticate(s, created["secret"]).service_name == "scraper"
    r = _run("apikey", "create", "--user", "alice@example.com", "--name", "laptop")
    user_key = json.loads(r.stdout)
    assert user_key["user_id"] == actors.a.id and user_key["name"] == "laptop"
    listed = json.loads(_run("apikey", "list").stdout)
    assert {k["name"] for k in listed} >= {"scraper", "laptop"}
    assert all("secret" not in k and "secret_hash" not in k for k in listed)
    mine = json.loads(_run("apikey", "list", "--user", "alice@example.com").stdout)
    assert {k["name"] for k in mine} == {"laptop", "alice key"}
    r = _run("apikey", "revoke", str(created["id"]))
    assert r.exit_code == 0 and json.loads(r.stdout)["revoked_at"]


def test_errors_are_one_line(actors):
    r = CliRunner().invoke(main, ["apikey", "create", "--user", "nobody@example.com"])
    assert r.exit_code == 2 and "error: No user with email" in r.output
    r = CliRunner().invoke(main, ["apikey", "revoke", "99999"])
    assert r.exit_code == 2 and "error: No API key with id 99999" in r.output
    r = CliRunner().invoke(main, ["apikey", "create"])
    assert r.exit_code == 2 and "exactly one of" in r.output
