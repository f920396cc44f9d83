"""Which usage period a moment belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from billing_app.clock import as_utc
from billing_app.plans import get_catalog


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


def calendar_month(at: datetime) -> Period:
    """The seed's rule: usage resets at the start of each calendar month, UTC."""
    at = as_utc(at)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return Period(start, end)


def per_user_periods() -> bool:
    """Whether periods can differ between users (a plan resets with its billing period)."""
    return any(p.reset == "billing_period" for p in get_catalog().values())


def period_for(db: Session | sa.Connection, user_id: int, at: datetime) -> Period:
    """Calendar month, unless the user's plan resets with its billing period. `db` is a
    session or a bare connection (then a session is opened on it only for the lookup)."""
    if not per_user_periods():
        return calendar_month(at)  # no lookup on the hot path in the default setup
    from billing_app.services.subscriptions import current_subscription

    if isinstance(db, Session):
        sub = current_subscription(db, user_id)
    else:
        with Session(bind=db) as session:
            sub = current_subscription(session, user_id)
    plan = get_catalog().get(sub.plan) if sub else None
    if (
        sub is not None
        and plan is not None
        and plan.reset == "billing_period"
        and sub.current_period_start is not None
        and sub.current_period_end is not None
        and sub.current_period_start <= as_utc(at) < sub.current_period_end
    ):
        return Period(sub.current_period_start, sub.current_period_end)
    return calendar_month(at)
