"""`billing-app` command line: database, users and usage from a shell.

Feature groups (stripe, apikey, demo, ...) are modules in this package that
define a `group` click.Group; they are registered automatically.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click

from billing_app.clock import iso
from billing_app.errors import BillingError
from billing_app.settings import PROJECT_ROOT, ConfigError, get_settings


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(type(value))


def _print(data: Any) -> None:
    if hasattr(data, "__dataclass_fields__"):
        data = asdict(data)
    elif isinstance(data, list):
        data = [asdict(d) if hasattr(d, "__dataclass_fields__") else d for d in data]
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _database_where() -> str:
    """DATABASE_URL without its password, to say which database failed."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(get_settings().database_url)
        if "password" in url.query:  # libpq takes it as a query parameter too
            url = url.update_query_dict({"password": "***"})
        return url.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only decorates the message
        return "DATABASE_URL"


def _schema_problem(err: BaseException) -> str | None:
    """For a missing table or column: what the database lacks and the command that fixes
    it (the line /api/health answers), rather than the driver's "no such table"."""
    from billing_app import db

    if not db.missing_schema(err):
        return None
    try:
        return db.schema_problem()
    except Exception:  # noqa: BLE001 - the database went away meanwhile: the plain line
        return None


def error_line(err: BaseException) -> str | None:
    """The one line to print for an error an operator can fix (None: a bug, keep the
    traceback): domain and configuration errors, the database being unreachable or
    un-migrated, and Alembic refusing a revision."""
    if isinstance(err, (BillingError, ConfigError)):
        return f"error: {getattr(err, 'message', err)}"
    import sqlalchemy.exc as sa_exc

    if isinstance(err, sa_exc.DBAPIError):
        if (problem := _schema_problem(err)) is not None:
            return f"error: {_database_where()}: {problem}"
        # The driver's first line (PostgreSQL adds the statement with a caret under it).
        first = str(err.orig).strip().splitlines()[0] if str(err.orig).strip() else "failed"
        line = f"error: database error on {_database_where()}: {first}"
        if isinstance(err, (sa_exc.OperationalError, sa_exc.ProgrammingError)):
            # Unreachable, or no such table/column: a wrong URL or missing migrations.
            line += " (check DATABASE_URL and run `billing-app db upgrade`)"
        return line
    alembic_exc = sys.modules.get("alembic.util.exc")  # loaded only if alembic was used
    if alembic_exc is not None and isinstance(err, alembic_exc.CommandError):
        return f"error: alembic: {_one_line(err)}"
    return None


class ErrorGroup(click.Group):
    """Errors an operator can fix print one clear line and exit 2, not a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The callbacks run before a subcommand parses its `--help`: remember it here.
        if any(arg in ctx.help_option_names for arg in args):
            ctx.meta["billing_app.help"] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            line = error_line(err)
            if line is None:
                raise
            click.echo(line, err=True)
            sys.exit(2)


@click.group(cls=ErrorGroup)
def main() -> None:
    """Billing and usage metering over Stripe."""
    # Every command checks the whole configuration first (the plan catalog too), so a
    # malformed setting stops any command with its one line, as it stops the app.
    from billing_app.plans import get_catalog

    if click.get_current_context().meta.get("billing_app.help"):
        return  # `--help` needs no settings: it explains what to set
    get_settings()
    get_catalog()


# ------------------------------------------------------------------ db


@main.group(cls=ErrorGroup)
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations to DATABASE_URL."""
    from alembic.config import Config

    from alembic import command

    settings = get_settings()
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["url"] = settings.database_url
    command.upgrade(cfg, revision)
    # What the database is at now (upgrading to an older revision changes nothing).
    from alembic.runtime.migration import MigrationContext

    from billing_app.db import create_db_engine

    engine = create_db_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision() or "base"
    finally:
        engine.dispose()
    click.echo(f"database at {current}: {_database_where().split('@')[-1]}")


# ------------------------------------------------------------------ users


def _resolve_user(session: Any, user: str) -> int:
    from billing_app.errors import UserNotFound
    from billing_app.services import users

    if user.isdigit():
        return users.get_user(session, int(user)).id  # type: ignore[return-value]
    found = users.get_user_by_email(session, user)
    if found is None or found.id is None:
        raise UserNotFound(f"No user with email {user}.")
    return found.id


@main.group(cls=ErrorGroup)
def user() -> None:
    """Accounts and roles."""


def _read_password(label: str) -> str:
    """Asked twice at a terminal; from a pipe (a script, a secret store), its first line."""
    if sys.stdin.isatty():
        return str(click.prompt(label, hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\r\n")


@user.command("create")
@click.option("--email", required=True)
@click.option("--name", default="", help="Display name")
@click.option("--admin", is_flag=True, help="Give the admin role")
@click.option("--password", default=None, help="Password for local sign-in (prompted if -)")
def user_create(email: str, name: str, admin: bool, password: str | None) -> None:
    """Create a user on the free plan."""
    from billing_app.db import session_scope
    from billing_app.services import users

    password_hash = None
    if password is not None:
        if password == "-":
            password = _read_password("Password")
        from billing_app.services import passwords

        password_hash = passwords.hash_password(password)
    with session_scope() as session:
        _print(users.create_user(session, email, name, admin=admin, password_hash=password_hash))


@user.command("promote")
@click.argument("user")
def user_promote(user: str) -> None:
    """Make USER (email or id) an admin."""
    from billing_app.db import session_scope
    from billing_app.services import users

    with session_scope() as session:
        _print(users.set_role(session, _resolve_user(session, user), "admin"))


@user.command("show")
@click.argument("user")
def user_show(user: str) -> None:
    """Print USER (email or id): its `id` is the `user_id` the JSON API and the Python
    client name a user by; also its role and plan."""
    from billing_app.db import session_scope
    from billing_app.services import users
    from billing_app.services.subscriptions import current_subscription, plan_key_for

    with session_scope() as session:
        uid = _resolve_user(session, user)
        found = users.to_dto(users.get_user(session, uid))
        plan = plan_key_for(current_subscription(session, uid))
        _print({**found.to_dict(), "plan": plan})


@user.command("set-password")
@click.argument("user")
@click.option("--password", default="-", help="The new password (prompted if - or omitted)")
def user_set_password(user: str, password: str) -> None:
    """Reset USER's (email or id) password; their open sessions are signed out."""
    from billing_app.db import session_scope
    from billing_app.services import auth

    if password == "-":
        password = _read_password("New password")
    with session_scope() as session:
        _print(auth.set_password(session, _resolve_user(session, user), password))


# ------------------------------------------------------------------ usage


@main.group(cls=ErrorGroup)
def usage() -> None:
    """Record and inspect usage."""


@usage.command("record")
@click.option("--user", "user_ref", required=True, help="User email or id")
@click.option("--metric", required=True)
@click.option("--quantity", required=True, type=int)
@click.option("--key", "idempotency_key", default=None, help="Idempotency key")
def usage_record(user_ref: str, metric: str, quantity: int, idempotency_key: str | None) -> None:
    """Record usage for a user (allowed past the limit, reported as over). Prints what
    POST /api/billing/usage answers: the event, `duplicate`, `over_limit` and the metric's
    used, limit and remaining, flat."""
    from billing_app.api.service_routes import record_out
    from billing_app.db import session_scope
    from billing_app.services import metering

    with session_scope() as session:
        result = metering.record(
            session, _resolve_user(session, user_ref), metric, quantity, idempotency_key
        )
    _print(record_out(result))


@usage.command("cancel")
@click.option("--user", "user_ref", required=True, help="User email or id")
@click.option("--key", "idempotency_key", required=True, help="The event's idempotency key")
def usage_cancel(user_ref: str, idempotency_key: str) -> None:
    """Cancel a usage event by its idempotency key: its quantity leaves the counters.
    Prints what POST /api/billing/usage/cancel answers (`already_canceled` when it was)."""
    from billing_app.api.service_routes import cancel_out
    from billing_app.db import session_scope
    from billing_app.services import metering

    with session_scope() as session:
        result = metering.cancel(session, _resolve_user(session, user_ref), idempotency_key)
    _print(cancel_out(result))


@usage.command("summary")
@click.option("--user", "user_ref", required=True, help="User email or id")
def usage_summary(user_ref: str) -> None:
    """Used / limit / resets_at per metric for the current period."""
    from billing_app.db import session_scope
    from billing_app.services import metering

    with session_scope() as session:
        _print(metering.summary(session, _resolve_user(session, user_ref)))


def _register_subcommands() -> None:
    """Feature command groups live in their own modules beside this one."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            group = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "group", None)
            if isinstance(group, click.Group):
                main.add_command(group)


_register_subcommands()
