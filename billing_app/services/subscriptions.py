"""Reading a user's subscription and effective plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, select

from billing_app.clock import as_utc, utcnow
from billing_app.models import Invoice, Subscription
from billing_app.services.dto import HeldDTO, SubscriptionDTO
from billing_app.settings import get_settings

# Statuses in which a subscription still grants its plan (past_due only within grace).
LIVE_STATUSES = ("active", "trialing", "past_due")
# Not live, yet not over: Stripe keeps an `incomplete` subscription's first invoice and an
# `unpaid` one's latest open, and paying it makes the subscription active again. A `paused`
# one creates no invoices until resumed; it holds one only when a failed payment paused it
# (that invoice stays collectible, and paying it may resume it), so only then does it count.
HELD_STATUSES = ("incomplete", "unpaid")

_Sub = TypeVar("_Sub")


def current_rank(status: str | None) -> int:
    """Which of a user's subscriptions is their current one, lowest first: a live one, then
    a held one (Checkout is refused beside it, so the page must show it rather than a newer
    canceled one), then any. current_table orders by the same rule in SQL."""
    if status in LIVE_STATUSES:
        return 0
    return 1 if status in HELD_STATUSES else 2


def pick_current(subs: Sequence[_Sub]) -> _Sub | None:
    """The current one of a user's subscriptions given newest first (rows with `status`)."""
    return min(subs, key=lambda s: current_rank(getattr(s, "status", None)), default=None)


def current_subscription(
    session: Session, user_id: int, *, ignore: tuple[str, ...] = ()
) -> Subscription | None:
    """The user's newest live subscription, else their newest held one, else their newest
    one (current_rank); those in an `ignore`d status are not considered at all."""
    query = select(Subscription).where(Subscription.user_id == user_id)
    if ignore:
        query = query.where(col(Subscription.status).not_in(ignore))
    subs = session.exec(
        query.order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    ).all()
    return pick_current(subs)


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


def ends_at(sub: Any) -> datetime | None:
    """When a subscription set to cancel ends, else None (it renews). One rule for every
    reader: Stripe's `cancel_at` when set (the customer portal, on flexible billing mode,
    schedules a cancel with it alone; the API may set a date before the period's end),
    else the period's end when `cancel_at_period_end`. Whatever the status: callers that
    show a live plan check that themselves."""
    if sub.cancel_at is not None:
        return as_utc(sub.cancel_at)
    if sub.cancel_at_period_end and sub.current_period_end is not None:
        return as_utc(sub.current_period_end)
    return None


def grace_ends_at(sub: Subscription) -> datetime | None:
    """When a past_due subscription stops granting its plan (None unless past_due)."""
    if sub.status != "past_due":
        return None
    since = sub.past_due_since or sub.updated_at
    return since + timedelta(days=get_settings().past_due_grace_days)


def to_subscription_dto(sub: Subscription) -> SubscriptionDTO:
    from billing_app.plans import get_catalog

    plan = get_catalog().get(sub.plan) or get_catalog()["free"]
    return SubscriptionDTO(
        plan=plan.key,
        plan_name=plan.name,
        status=sub.status,
        effective_plan=plan_key_for(sub),
        current_period_start=sub.current_period_start,
        current_period_end=sub.current_period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        past_due_since=sub.past_due_since,
        grace_ends_at=grace_ends_at(sub),
        stripe_subscription_id=sub.stripe_subscription_id,
        amount=plan.amount,
        currency=plan.currency,
        canceled_at=sub.canceled_at,
        cancel_at=sub.cancel_at,
        ends_at=ends_at(sub) if sub.status in LIVE_STATUSES else None,
    )


def get_subscription_dto(session: Session, user_id: int) -> SubscriptionDTO | None:
    """The user's current subscription for display; None when they never subscribed.

    Ends the read transaction (like metering.summary): on SQLite an open transaction holds
    the write lock that webhook deliveries need.
    """
    sub = current_subscription(session, user_id)
    dto = to_subscription_dto(sub) if sub is not None else None
    session.rollback()
    return dto


# What a held subscription waits for, and what paying its invoice does, in words (the
# checkout's 409 and the page say them alike).
_HELD_WORDS = {
    "incomplete": ("is waiting for its first payment", "start it"),
    "unpaid": ("is unpaid", "get your plan back"),
    # Paying may resume it (if Stripe is set to), or only settle it.
    "paused": ("is paused with a payment due", "settle it"),
}


def held_words(status: str | None) -> tuple[str, str]:
    """(why it is held, what paying does) for a held subscription's status."""
    return _HELD_WORDS.get(status or "", ("still has a payment due", "settle it"))


def held_subscription(session: Session, user_id: int) -> HeldDTO | None:
    """The user's newest subscription that grants nothing now but comes back, billed, once
    its open invoice is paid (HELD_STATUSES, or paused with such an invoice); None without
    one. Another subscription started beside it would be billed too. Ends the read."""
    subs = session.exec(
        select(Subscription)
        .where(
            Subscription.user_id == user_id,
            col(Subscription.status).in_((*HELD_STATUSES, "paused")),
        )
        .order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    ).all()
    held = None
    for sub in subs:
        inv = session.exec(
            select(Invoice)
            .where(
                Invoice.stripe_subscription_id == sub.stripe_subscription_id,
                Invoice.status == "open",
                # Owed: not a credit, something left to pay (NULL: a row from before 0013).
                sa.or_(col(Invoice.total).is_(None), col(Invoice.total) > 0),
                sa.or_(col(Invoice.amount_remaining).is_(None), col(Invoice.amount_remaining) > 0),
            )
            .order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc())
            .limit(1)
        ).first()
        if sub.status in HELD_STATUSES or inv is not None:
            held = _held_dto(sub, inv)
            break
    session.rollback()
    return held


def _held_dto(sub: Subscription, inv: Invoice | None) -> HeldDTO:
    from billing_app.plans import get_catalog

    plan = get_catalog().get(sub.plan)
    return HeldDTO(
        status=sub.status,
        plan=sub.plan,
        plan_name=plan.name if plan else sub.plan.title(),
        invoice_number=inv.number if inv else None,
        hosted_invoice_url=inv.hosted_invoice_url if inv else None,
        payment_attempted=inv is not None and (inv.attempt_count or 0) > 0,
        stripe_subscription_id=sub.stripe_subscription_id,
    )


# The past-due banner's bold first words, also a held subscription's whose payment failed.
PAYMENT_FAILED_TITLE = "Your last payment failed."
PAYMENT_FAILED_ACTION = "Fix payment"


@dataclass(frozen=True)
class HeldBanner:
    """The dashboard banner's words for a held subscription (the page shows them as is)."""

    title: str  # bold, first
    text: str
    action: str  # its button, which opens the customer portal


def awaits_first_payment(held: HeldDTO) -> bool:
    """An incomplete subscription whose first invoice Stripe never tried to charge (no
    payment method): nothing failed, it waits to be paid."""
    return held.status == "incomplete" and not held.payment_attempted


def held_banner(held: HeldDTO) -> HeldBanner:
    """What the banner says about a held subscription: a failed payment to pay, or (nothing
    tried yet) a first payment to make, by its invoice's link or in the portal."""
    name = held.plan_name
    if awaits_first_payment(held):
        how = (
            "Pay its invoice to start it"
            if held.hosted_invoice_url
            else "Add a payment method in Manage subscription to pay it and start it"
        )
        return HeldBanner(
            title=f"Your {name} subscription is waiting for its first payment.",
            text=f"Until it is paid you have the Free plan's limits. {how}, or cancel "
            "that subscription in Manage subscription.",
            action="Add payment method",
        )
    why, pays = held_words(held.status)
    return HeldBanner(
        title=PAYMENT_FAILED_TITLE,
        text=f"Your {name} subscription {why}, so you have the Free plan's limits. Pay the "
        f"invoice to {pays}, or cancel that subscription in Manage subscription.",
        action=PAYMENT_FAILED_ACTION,
    )


def current_table() -> Any:
    """Each user's current subscription as a derived table (rn = 1), one pass over the table.

    Same rule as current_subscription (current_rank): the newest live one, else the newest
    held one, else the newest.
    """
    rn = (
        sa.func.row_number()
        .over(
            partition_by=Subscription.user_id,
            order_by=(
                sa.case(
                    (col(Subscription.status).in_(LIVE_STATUSES), 0),
                    (col(Subscription.status).in_(HELD_STATUSES), 1),
                    else_=2,
                ),
                col(Subscription.created_at).desc(),
                col(Subscription.id).desc(),
            ),
        )
        .label("rn")
    )
    return select(
        Subscription.user_id,
        Subscription.status,
        Subscription.plan,
        Subscription.past_due_since,
        Subscription.updated_at,
        rn,
    ).subquery("cur")


def granted_plan(cur: Any) -> Any:
    """The plan the current subscription grants now (past_due only within the grace days)."""
    cutoff = utcnow() - timedelta(days=get_settings().past_due_grace_days)
    return sa.case(
        (cur.c.status.in_(("active", "trialing")), cur.c.plan),
        (
            sa.and_(
                cur.c.status == "past_due",
                sa.func.coalesce(cur.c.past_due_since, cur.c.updated_at) > cutoff,
            ),
            cur.c.plan,
        ),
        else_="free",
    )
