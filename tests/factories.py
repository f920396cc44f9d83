"""Test factories: build real rows through the services."""

from __future__ import annotations

import itertools

from sqlmodel import Session, func, select

from billing_app.models import Subscription, UsageCounter, UsageDaily, UsageEvent, User
from billing_app.services import quotas, users
from billing_app.services.dto import UserDTO

_seq = itertools.count(1)


def make_user(
    session: Session,
    *,
    email: str | None = None,
    plan: str = "free",
    admin: bool = False,
    customer: str | None = None,
) -> UserDTO:
    """A user; `customer` links a Stripe customer id (as checkout would), for webhooks."""
    user = users.create_user(session, email or f"user{next(_seq)}@example.com", admin=admin)
    if plan != "free":
        quotas.apply_plan(session, user.id, plan)
        session.commit()
    if customer is not None:
        row = session.get(User, user.id)
        assert row is not None
        row.stripe_customer_id = customer
        session.add(row)
        session.commit()
    return user


def make_subscription(
    session: Session,
    user_id: int,
    *,
    plan: str = "pro",
    status: str = "active",
    sub_id: str | None = None,
    **fields: object,
) -> None:
    """A subscription row as the webhooks store it, and the plan's quotas."""
    session.add(
        Subscription(
            user_id=user_id,
            stripe_subscription_id=sub_id or f"sub_{user_id}_{plan}",
            plan=plan,
            status=status,
            **fields,
        )
    )
    quotas.apply_plan(session, user_id, plan)
    session.commit()


def usage_totals(s: Session, user_id: int, metric: str) -> tuple[int, int, int]:
    """(events not cancelled, sum of their quantities, counter total) for a user and
    metric; the days' rows (what the chart reads) must add up to the counters, whatever
    the test."""
    n, total = s.exec(
        select(func.count(), func.coalesce(func.sum(UsageEvent.quantity), 0)).where(
            UsageEvent.user_id == user_id,
            UsageEvent.metric == metric,
            UsageEvent.canceled_at.is_(None),  # type: ignore[union-attr]
        )
    ).one()
    counter = s.exec(
        select(func.coalesce(func.sum(UsageCounter.used), 0)).where(
            UsageCounter.user_id == user_id, UsageCounter.metric == metric
        )
    ).one()
    assert daily_total(s, user_id, metric) == counter, "usage_daily drifted from the counters"
    return n, total, counter


def daily_total(s: Session, user_id: int, metric: str) -> int:
    """What the daily chart adds up for a user and metric over every period: the closed
    days' usage_daily rows and the counters' latest day."""
    closed = s.exec(
        select(func.coalesce(func.sum(UsageDaily.quantity), 0)).where(
            UsageDaily.user_id == user_id, UsageDaily.metric == metric
        )
    ).one()
    latest = s.exec(
        select(func.coalesce(func.sum(UsageCounter.day_used), 0)).where(
            UsageCounter.user_id == user_id, UsageCounter.metric == metric
        )
    ).one()
    return closed + latest
