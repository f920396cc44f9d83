"""`billing-app apikey`: create, list and revoke API keys."""

from __future__ import annotations

import click

from billing_app.cli import ErrorGroup, _print, _resolve_user


@click.group("apikey", cls=ErrorGroup)
def group() -> None:
    """API keys for services and users (the secret is shown once)."""


@group.command("create")
@click.option("--service", "service_name", default=None, help="Service name (a service key)")
@click.option("--user", "user_ref", default=None, help="User email or id (a user key)")
@click.option("--name", default=None, help="Label (default: the service or user)")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["usage:write", "usage:read"]),
    help="Limit the key to this scope (repeatable; default: every scope)",
)
def create(
    service_name: str | None, user_ref: str | None, name: str | None, scopes: tuple[str, ...]
) -> None:
    """Create a key; prints it once with its secret."""
    from billing_app.db import session_scope
    from billing_app.services import api_keys

    if (service_name is None) == (user_ref is None):
        raise click.UsageError("Give exactly one of --service NAME or --user EMAIL.")
    with session_scope() as session:
        user_id = _resolve_user(session, user_ref) if user_ref else None
        key, secret = api_keys.create_key(
            session,
            name=name or service_name or user_ref or "key",
            user_id=user_id,
            service_name=service_name,
            scopes=list(scopes),
        )
        _print({**key.to_dict(), "kind": key.kind, "secret": secret})
    click.echo("Store the secret now: it is not shown again.", err=True)


@group.command("list")
@click.option("--user", "user_ref", default=None, help="Only this user's keys")
def list_(user_ref: str | None) -> None:
    """List keys (never their secrets)."""
    from billing_app.db import session_scope
    from billing_app.services import api_keys

    with session_scope() as session:
        user_id = _resolve_user(session, user_ref) if user_ref else None
        _print([{**k.to_dict(), "kind": k.kind} for k in api_keys.list_keys(session, user_id)])


@group.command("revoke")
@click.argument("key_id", type=int)
def revoke(key_id: int) -> None:
    """Revoke key KEY_ID (other processes stop accepting it within a few seconds)."""
    from billing_app.db import session_scope
    from billing_app.services import api_keys

    with session_scope() as session:
        key = api_keys.revoke_key(session, key_id)
        _print({**key.to_dict(), "kind": key.kind})
