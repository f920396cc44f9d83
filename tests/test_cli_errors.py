"""`billing-app` turns the errors an operator can fix (database unreachable or not
migrated, a bad --since, an unknown Alembic revision) into one line and exit code 2;
a bug still shows its traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import sqlalchemy as sa

from billing_app.cli import error_line
from billing_app.db import schema_head
from billing_app.settings import PROJECT_ROOT

HINT = "(check DATABASE_URL and run `billing-app db upgrade`)"


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("APP_URL", "API_URL")}
    return subprocess.run(
        [sys.executable, "-m", "billing_app.cli", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**env, "DATABASE_URL": database_url},
        timeout=120,
    )


def last_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, no traceback, and the error as the last line of stderr (Alembic's own INFO
    log lines may come before it)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize(
    "args",
    [
        ("usage", "summary", "--user", "1"),
        ("apikey", "list"),
        ("stripe", "events", "replay", "--since", "7d"),
    ],
)
def test_an_unmigrated_database_is_one_line_with_the_fix(empty_database_url, args):
    """Not the driver's "no such table: user" behind "database error": what the database
    lacks and the command that fixes it, as /api/health says it."""
    proc = cli(empty_database_url, *args)
    assert proc.stderr.count("\n") == 1
    where = sa.engine.make_url(empty_database_url).set(drivername=_driver(empty_database_url))
    assert last_line_error(proc) == (
        f"error: {where.render_as_string(hide_password=True)}: The database has no schema "
        f"yet: run `billing-app db upgrade` (to {schema_head()})."
    )


def _driver(url: str) -> str:
    """The driver name the app's engine (and so its error line) uses."""
    return "postgresql+psycopg" if url.startswith("postgresql") else "sqlite"


def test_a_database_behind_the_code_names_its_revision(migrated_database_url):
    """A database some migrations behind (a table or column of a later one missing)."""
    from tests.conftest import alembic

    alembic(migrated_database_url, "downgrade", "0012")
    proc = cli(migrated_database_url, "user", "show", "1")
    line = last_line_error(proc)
    assert line.endswith(
        f": The database schema is at 0012; this code needs {schema_head()}: "
        "run `billing-app db upgrade`."
    ), line


def test_a_refused_connection_is_one_line_and_hides_the_password():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql://ops:sekrit@127.0.0.1:{port}/billing"
    for args in (("db", "upgrade"), ("user", "promote", "ops@example.com")):
        line = last_line_error(cli(url, *args))
        assert line.startswith(
            f"error: database error on postgresql+psycopg://ops:***@127.0.0.1:{port}/billing: "
        )
        assert "Connection refused" in line and line.endswith(HINT)
        assert "sekrit" not in line


def test_a_password_given_in_the_query_is_hidden_too(empty_database_url):
    """libpq takes the password as a query parameter as well (usual with a socket
    `host=`): the error line and `db upgrade`'s own line printed it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    line = last_line_error(
        cli(
            f"postgresql://ops@127.0.0.1:{port}/billing?password=sekrit",
            "user",
            "promote",
            "ops@example.com",
        )
    )
    assert "Connection refused" in line and "sekrit" not in line, line
    if empty_database_url.startswith("postgresql"):  # SQLite takes no password
        proc = cli(empty_database_url + "?password=sekrit", "db", "upgrade")
        assert proc.returncode == 0, proc.stderr
        assert "database at " in proc.stdout and "sekrit" not in proc.stdout + proc.stderr


def test_a_since_before_year_one_is_one_line(migrated_database_url):
    proc = cli(migrated_database_url, "stripe", "events", "replay", "--since", "99999999d")
    assert proc.stderr == (
        "error: --since '99999999d' reaches back before year 1: give a shorter duration.\n"
    )
    assert proc.returncode == 2
    ok = cli(migrated_database_url, "stripe", "events", "replay", "--since", "7d")
    assert ok.returncode == 0 and '"replayed": 0' in ok.stdout


def test_an_unknown_revision_is_one_line(migrated_database_url):
    line = last_line_error(cli(migrated_database_url, "db", "upgrade", "--revision", "nonexistent"))
    assert line == "error: alembic: Can't locate revision identified by 'nonexistent'"


def test_a_bug_keeps_its_traceback():
    """Only errors with a fix the operator can make are shortened."""
    assert error_line(KeyError("x")) is None
    assert error_line(OverflowError("date value out of range")) is None


def test_settings_are_checked_before_any_command(migrated_database_url, monkeypatch):
    """A malformed setting stops every command with its one line (it stopped the app,
    but `db upgrade` and `apikey list` went on)."""
    for var, value, says in (
        ("BILLING_PLANS_JSON", "{bad", "BILLING_PLANS_JSON must be a JSON object"),
        ("REFLEX_REDIS_URL", "notaurl", "REFLEX_REDIS_URL must be a redis://"),
    ):
        monkeypatch.setenv(var, value)
        for args in (("db", "upgrade"), ("apikey", "list")):
            proc = cli(migrated_database_url, *args)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert says in proc.stderr, proc.stderr
        monkeypatch.delenv(var)


@pytest.mark.parametrize(
    "args", [("db", "upgrade"), ("stripe", "events", "replay"), ("sandbox", "run")]
)
def test_help_needs_no_settings(args):
    """`--help` explains what to set: a bad setting answered it with the setting's error."""
    proc = cli("mysql://db/billing", *args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ") and f"{' '.join(args)} [OPTIONS]" in proc.stdout
    # Without --help the same command still stops on the setting.
    proc = cli("mysql://db/billing", *args)
    assert proc.returncode == 2 and "DATABASE_URL must start with" in proc.stderr


def test_demo_run_is_refused_in_prod(empty_database_url):
    """It seeds admin@example.com with the password the README prints: in a production
    database, an admin anyone could sign in as."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "APP_", "API_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "billing_app.cli", "demo", "run", "--port", "8199"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={
            **env,
            "ENVIRONMENT": "prod",
            "DATABASE_URL": empty_database_url,
            "SESSION_SECRET": "0123456789abcdef" * 2,
            "STRIPE_SECRET_KEY": "sk_test_x",
            "STRIPE_WEBHOOK_SECRET": "whsec_x",
            "STRIPE_PRICE_BASIC": "price_1",
            "STRIPE_PRICE_PRO": "price_2",
            "STRIPE_PRICE_ENTERPRISE": "price_3",
        },
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: demo run is refused when ENVIRONMENT=prod: it creates admin@example.com with "
        "a public password (start production with `reflex run --env prod`, see README)"
    )
    engine = sa.create_engine(empty_database_url)
    assert sa.inspect(engine).get_table_names() == []  # refused before migrating
    engine.dispose()


def test_db_upgrade_says_where_the_database_is(migrated_database_url):
    """Asked for an older revision on a database at head, it says head (it echoed the
    revision asked for, which the database was not at)."""
    proc = cli(migrated_database_url, "db", "upgrade", "--revision", "0005")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"database at {schema_head()}:")


def test_demo_run_refuses_a_sandbox_port_another_process_holds(empty_database_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "billing_app.cli", "demo", "run", "--port", "8199"],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                "DATABASE_URL": empty_database_url,
                "STRIPE_SANDBOX_PORT": str(port),
            },  # fmt: skip
            timeout=120,
        )
    # A setting to fix: one line and exit 2, as the README says; checked before migrating.
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: port {port} (STRIPE_SANDBOX_PORT) is in use; "
        "stop what holds it or choose another port"
    )
    engine = sa.create_engine(empty_database_url)
    assert sa.inspect(engine).get_table_names() == []  # refused before migrating
    engine.dispose()


# `sandbox run` with uvicorn.run replaced, so it prints what it would serve and returns.
_SANDBOX_RUN = """
import uvicorn
uvicorn.run = lambda *args, **kwargs: None
from billing_app.cli import main
main(["sandbox", "run", "--port", "12999"])
"""


@pytest.mark.parametrize("api_base", [None, "http://127.0.0.1:12999"])
def test_sandbox_run_warns_of_a_real_key_only_when_the_app_talks_to_stripe(api_base):
    """The review's rehearsal (README, Production): a real-looking key with STRIPE_API_BASE
    on the sandbox was told "the app talks to Stripe, not to this sandbox"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "APP_URL"))}
    env |= {
        "STRIPE_SECRET_KEY": "sk_test_rehearsal",
        "STRIPE_WEBHOOK_SECRET": "whsec_rehearsal",
        "STRIPE_PRICE_BASIC": "price_sandbox_basic",
        "STRIPE_PRICE_PRO": "price_sandbox_pro",
        "STRIPE_PRICE_ENTERPRISE": "price_sandbox_enterprise",
    }
    if api_base is not None:
        env["STRIPE_API_BASE"] = api_base
    proc = subprocess.run(
        [sys.executable, "-c", _SANDBOX_RUN],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Stripe sandbox on http://127.0.0.1:12999" in proc.stderr
    assert ("the app talks to Stripe" in proc.stderr) is (api_base is None)


@pytest.mark.parametrize("option", [False, True])
def test_sandbox_run_refuses_a_port_another_process_holds(option):
    """As `demo run` does: one line and exit 2 (it printed its banner, then uvicorn's
    "address already in use" log line, and exited 3)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--port", str(port)] if option else []
        proc = subprocess.run(
            [sys.executable, "-m", "billing_app.cli", "sandbox", "run", *args],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, "STRIPE_SANDBOX_PORT": str(port)},
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    source = "--port" if option else "STRIPE_SANDBOX_PORT"
    assert proc.stderr.strip() == (
        f"error: port {port} ({source}) is in use; stop what holds it or choose another port"
    )
