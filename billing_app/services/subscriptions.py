"""Reading a user's subscription and effective plan."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, select

from billing_app.clock import utcnow
from billing_app.models import Subscription
from billing_app.settings import get_settings

# Statuses in which a subscription still grants its plan (past_due only within grace).
LIVE_STATUSES = ("active", "trialing", "past_due")


def current_subscription(session: Session, user_id: int) -> Subscription | None:
    """The user's newest subscription that is not over, else their newest one."""
    subs = session.exec(
        select(Subscription)
        .where(Subscription.user_id == user_id)
        .order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    ).all()
    for sub in subs:
        if sub.status in LIVE_STATUSES:
            return sub
    return subs[0] if subs else None


def plan_key_for(sub: Subscription | None) -> str:
    """The plan a subscription grants now: past_due keeps it for the grace period."""
    if sub is None or sub.status not in LIVE_STATUSES:
        return "free"
    if sub.status == "past_due":
        grace = timedelta(days=get_settings().past_due_grace_days)
        since = sub.past_due_since or sub.updated_at
        if utcnow() >= since + grace:
            return "free"
    return sub.plan


def effective_plan_key(session: Session, user_id: int) -> str:
    return plan_key_for(current_subscription(session, user_id))
