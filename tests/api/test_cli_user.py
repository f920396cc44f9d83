"""`billing-app user set-password`: an operator resets a user who forgot their password."""

from __future__ import annotations

import json

from click.testing import CliRunner

from billing_app.cli import main
from billing_app.services import auth
from tests.api.conftest import PASSWORD

NEW_PASSWORD = "a-new-password-9"


def _login(client, password: str) -> int:
    client.cookies.clear()
    r = client.post("/api/auth/login", json={"email": "new@example.com", "password": password})
    return r.status_code


def test_set_password_signs_out_everywhere_and_lifts_the_lockout(client):
    r = client.post(
        "/api/auth/signup",
        json={"email": "new@example.com", "password": PASSWORD, "display_name": "New"},
    )
    assert r.status_code == 201, r.text
    old_session = client.cookies.get(auth.SESSION_COOKIE)
    # The owner forgot the password and locked the account out trying.
    for _ in range(auth.MAX_FAILS_PER_ACCOUNT):
        assert _login(client, "not-the-password") == 401
    assert _login(client, PASSWORD) == 429

    r = CliRunner().invoke(
        main, ["user", "set-password", "New@Example.com", "--password", NEW_PASSWORD]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["email"] == "new@example.com"

    client.cookies.set(auth.SESSION_COOKIE, old_session)
    assert client.get("/api/auth/me").status_code == 401  # the old session is over
    assert _login(client, PASSWORD) == 401
    assert _login(client, NEW_PASSWORD) == 200
    assert client.get("/api/auth/me").json()["email"] == "new@example.com"


def test_set_password_prompts_twice_by_default(client, actors):
    r = CliRunner().invoke(
        main, ["user", "set-password", str(actors.a.id)], input=f"{NEW_PASSWORD}\n" * 2
    )
    assert r.exit_code == 0, r.output
    assert NEW_PASSWORD not in r.stdout  # the prompt hides it and the answer is the user
    client.cookies.clear()
    r = client.post("/api/auth/login", json={"email": actors.a.email, "password": NEW_PASSWORD})
    assert r.status_code == 200


def test_set_password_errors_are_one_line_and_change_nothing(client, actors):
    set_it = ["user", "set-password", actors.a.email, "--password", NEW_PASSWORD]
    assert CliRunner().invoke(main, set_it).exit_code == 0
    r = CliRunner().invoke(
        main, ["user", "set-password", "nobody@example.com", "--password", NEW_PASSWORD]
    )
    assert r.exit_code == 2 and "error: No user with email nobody@example.com" in r.output
    r = CliRunner().invoke(main, ["user", "set-password", actors.a.email, "--password", "short"])
    assert r.exit_code == 2 and "at least 8 characters" in r.output
    client.cookies.clear()
    r = client.post("/api/auth/login", json={"email": actors.a.email, "password": NEW_PASSWORD})
    assert r.status_code == 200


def test_a_password_piped_in_is_one_line(actors):
    """`echo "$PW" | billing-app user create --password -`: asked twice at a terminal, but
    a pipe gives one line (it used to need it twice, else "Aborted!")."""
    from billing_app.db import session_scope

    r = CliRunner().invoke(
        main,
        ["user", "create", "--email", "piped@example.com", "--password", "-"],
        input=f"{NEW_PASSWORD}\n",
    )
    assert r.exit_code == 0, r.output
    with session_scope() as s:
        user, _ = auth.login(s, "piped@example.com", NEW_PASSWORD, "198.51.100.1")
    assert user.email == "piped@example.com"


def test_show_prints_the_id_the_api_names_a_user_by(actors):
    """`user show` by email (any case) or id: the user's id, email, role and plan; an
    unknown one is one line and exit 2."""
    for ref in (actors.a.email.upper(), str(actors.a.id)):
        r = CliRunner().invoke(main, ["user", "show", ref])
        assert r.exit_code == 0, r.output
        shown = json.loads(r.stdout)
        assert (shown["id"], shown["email"], shown["plan"]) == (actors.a.id, actors.a.email, "free")
        assert shown["role"] == "user"
    r = CliRunner().invoke(main, ["user", "show", "nobody-h83@example.com"])
    assert r.exit_code == 2 and "No user with email nobody-h83@example.com." in r.stderr
