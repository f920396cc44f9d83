"""`billing-app stripe ...`: reconciliation with Stripe and replay of stored webhook events."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import click

from billing_app.cli import ErrorGroup, _print, _resolve_user
from billing_app.errors import ValidationFailed

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> datetime:
    """An ISO time (naive = UTC) or a duration back from now: 30m, 12h, 7d, 2w."""
    from billing_app.clock import as_utc, utcnow

    text = value.strip()
    if m := _DURATION.match(text.lower()):
        try:
            return utcnow() - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        except (OverflowError, ValueError):  # past datetime.min (year 1)
            raise ValidationFailed(
                f"--since {value!r} reaches back before year 1: give a shorter duration."
            ) from None
    try:
        return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise ValidationFailed(
            f"--since {value!r} is neither an ISO time (2026-11-25T12:00:00Z) "
            "nor a duration (30m, 12h, 7d, 2w)."
        ) from None


@click.group(name="stripe", cls=ErrorGroup)
def group() -> None:
    """Reconcile with Stripe."""


@group.command("sync")
@click.option("--user", "user_ref", default=None, help="Only this user (email or id)")
def sync(user_ref: str | None) -> None:
    """Pull customers, subscriptions and invoices from Stripe and repair local state."""
    from billing_app.db import session_scope
    from billing_app.services.stripe_sync import sync_from_stripe

    with session_scope() as session:
        user_id = _resolve_user(session, user_ref) if user_ref else None
        report = sync_from_stripe(session, user_id)
    _print(report)
    if report.errors:
        raise SystemExit(1)


@group.group("events", cls=ErrorGroup)
def events() -> None:
    """Stored webhook events."""


@events.command("replay")
@click.option("--since", required=True, help="ISO time or duration (30m, 12h, 7d)")
def replay(since: str) -> None:
    """Re-apply stored events created since SINCE (idempotent)."""
    from billing_app.db import session_scope
    from billing_app.services.stripe_sync import replay_events

    when = parse_since(since)
    with session_scope() as session:
        count = replay_events(session, when)
    _print({"since": when, "replayed": count})
