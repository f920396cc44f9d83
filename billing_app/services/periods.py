"""Which usage period a moment belongs to."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    return period_of(subscription_for_periods(db, user_id), at)


# A subscription whose first payment never went through: it never began, so it has no
# period to count in (its `current_period_*` are only what Stripe would have billed).
NEVER_STARTED = ("incomplete", "incomplete_expired")


def subscription_for_periods(db: Session | sa.Connection, user_id: int) -> Any:
    """The subscription `period_of` decides by: the user's current one among those that
    began (a failed new checkout does not replace a canceled one's period), or None."""
    from billing_app.services.subscriptions import current_subscription

    if isinstance(db, Session):
        return current_subscription(db, user_id, ignore=NEVER_STARTED)
    with Session(bind=db) as session:
        return current_subscription(session, user_id, ignore=NEVER_STARTED)


def period_of(sub: Any, at: datetime) -> Period:
    """The period `at` counts in for a user whose current subscription is `sub` (None:
    none). A user's periods overlap: the calendar month applies before the subscription
    began and after its period ended, its billing period in between; so the period of
    one moment says nothing about another's in the same month.

    The rule is the one the subscription's current period began with (`period_reset`),
    up to that period's end, whatever changed since: a downgrade to a calendar-month
    plan or a cancel mid-period keeps counting in the billing period (a fresh month's
    counter would hand out a fresh quota), and an upgrade to a billing-period plan
    starts its periods at the next renewal."""
    from billing_app.services.subscriptions import LIVE_STATUSES, ends_at

    if sub is None or sub.current_period_start is None or sub.current_period_end is None:
        return calendar_month(at)
    if sub.status in NEVER_STARTED:
        return calendar_month(at)
    rule = getattr(sub, "period_reset", None)
    if rule is None:
        plan = get_catalog().get(sub.plan)
        rule = plan.reset if plan is not None else None
    if rule != "billing_period":
        return calendar_month(at)
    known = Period(as_utc(sub.current_period_start), as_utc(sub.current_period_end))
    at = as_utc(at)
    if known.start <= at < known.end:
        return known
    if sub.status not in LIVE_STATUSES:
        return calendar_month(at)  # ended: no period after the last one
    end = ends_at(sub)
    if end is not None and at >= end:
        # The plan ends then (with its period, or at an earlier `cancel_at`): after it,
        # until the deletion's webhook lands, there is no billing period to count in.
        return calendar_month(at)
    if sub.created_at is not None and at < as_utc(sub.created_at):
        return calendar_month(at)  # before this subscription
    # Between the period's end and the renewal's webhook (or before the period, for a
    # backdated write): the period Stripe will bill, so usage in the gap counts once.
    anchor = getattr(sub, "billing_cycle_anchor", None)
    return billing_period_at(known, at, None if anchor is None else as_utc(anchor))


def _add_months(at: datetime, months: int, day: int) -> datetime:
    """`at` moved by whole months, on `day` or the month's last day (as Stripe does)."""
    index = at.year * 12 + at.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return at.replace(year=year, month=month, day=min(day, calendar.monthrange(year, month)[1]))


def _on_anchor_grid(s: datetime, e: datetime, months: int, anchor: datetime) -> bool:
    """Whether `s` -> `e` is one step of `months` on the anchor's monthly grid: a day or
    week period that merely crosses a month onto the anchor's day of the month is not."""
    steps = (s.year - anchor.year) * 12 + s.month - anchor.month
    return (
        steps % months == 0
        and _add_months(anchor, steps, anchor.day).date() == s.date()
        and _add_months(s, months, anchor.day) == e
    )


def billing_period_at(known: Period, at: datetime, anchor: datetime | None = None) -> Period:
    """The billing period holding `at`, stepping from `known` by its interval: whole
    months (anchored on Stripe's billing_cycle_anchor's day when known, else on the later
    day of its two ends, so Jan 31 -> Feb 28 -> Mar 31) when its ends are months apart,
    else its length (days, weeks)."""
    at = as_utc(at)
    s, e = known.start, known.end
    months = (e.year - s.year) * 12 + e.month - s.month
    day = max(s.day, e.day)
    if anchor is not None and months > 0 and _on_anchor_grid(s, e, months, anchor):
        day = anchor.day
    if months > 0 and _add_months(s, months, day) == e:
        n = 0
        if at >= e:
            # jump near the target, then settle: anchored month steps are monotonic
            n = max(0, ((at.year - e.year) * 12 + at.month - e.month) // months - 1)
            while _add_months(s, (n + 2) * months, day) <= at:
                n += 1
            n += 1
        else:
            n = -max(0, ((s.year - at.year) * 12 + s.month - at.month) // months - 1)
            while _add_months(s, n * months, day) > at:
                n -= 1
        return Period(_add_months(s, n * months, day), _add_months(s, (n + 1) * months, day))
    length = e - s
    n = (at - s) // length
    return Period(s + n * length, s + (n + 1) * length)
