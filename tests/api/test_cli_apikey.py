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
    assert user_key["user_email"] == "alice@example.com"  # was null
    listed = json.loads(_run("apikey", "list").stdout)
    assert {k["name"] for k in listed} >= {"scraper", "laptop"}
    assert all("secret" not in k and "secret_hash" not in k for k in listed)
    mine = json.loads(_run("apikey", "list", "--user", "alice@example.com").stdout)
    assert {k["name"] for k in mine} == {"laptop", "alice key"}
    r = _run("apikey", "revoke", str(created["id"]))
    assert r.exit_code == 0 and json.loads(r.stdout)["revoked_at"]


def test_revoking_a_users_key_prints_its_owner(actors):
    """`apikey revoke` names the owner as `create` and `list` do (it printed null)."""
    created = json.loads(_run("apikey", "create", "--user", "alice@example.com").stdout)
    for attempt in ("revoke", "again"):  # a repeated revoke answers the same
        r = _run("apikey", "revoke", str(created["id"]))
        assert r.exit_code == 0, (attempt, r.output)
        revoked = json.loads(r.stdout)
        assert revoked["id"] == created["id"] and revoked["revoked_at"], attempt
        assert (revoked["user_id"], revoked["user_email"]) == (actors.a.id, "alice@example.com")
        assert revoked["kind"] == "user", attempt
    with session_scope() as s:
        assert api_keys.get_key(s, created["id"]).user_email == "alice@example.com"
    service = json.loads(_run("apikey", "create", "--service", "scraper").stdout)
    revoked = json.loads(_run("apikey", "revoke", str(service["id"])).stdout)
    assert (revoked["user_email"], revoked["kind"]) == (None, "service")


def test_errors_are_one_line(actors):
    r = CliRunner().invoke(main, ["apikey", "create", "--user", "nobody@example.com"])
    assert r.exit_code == 2 and "error: No user with email" in r.output
    r = CliRunner().invoke(main, ["apikey", "revoke", "99999"])
    assert r.exit_code == 2 and "error: No API key with id 99999" in r.output
    r = CliRunner().invoke(main, ["apikey", "create"])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_a_key_limited_to_a_scope(actors):
    """Least privilege from the command line: a service that only reports usage."""
    r = _run("apikey", "create", "--service", "reporter", "--scope", "usage:write")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["scopes"] == ["usage:write"]
    c = actors.key_client(created["secret"])
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert c.post("/api/billing/usage", json=body).status_code == 201
    denied = c.get(f"/api/billing/usage?user_id={actors.a.id}")
    assert denied.status_code == 403 and denied.json()["error"]["scope"] == "usage:read"
    bad = CliRunner().invoke(main, ["apikey", "create", "--service", "x", "--scope", "admin"])
    assert bad.exit_code == 2 and "Invalid value for '--scope'" in bad.output
