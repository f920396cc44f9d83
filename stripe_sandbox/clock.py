"""Time-based behaviour, run when the sandbox clock is advanced: renewals, scheduled
cancellations (``cancel_at_period_end`` or a ``cancel_at`` time, also mid-period), payment
retries, expiring incomplete subscriptions and checkout sessions."""

from __future__ import annotations

import copy
from typing import Any

from . import objects
from .billing import (
    INCOMPLETE_LIFETIME,
    LIVE_STATUSES,
    collect,
    interval_of,
    invoice_subscription,
    line_for_item,
    new_invoice,
    open_invoice,
    period_of,
    stop_retries,
    void_invoice,
)
from .checkout import expire_checkout_session
from .errors import StripeError
from .store import SandboxState


def _due_actions(st: SandboxState) -> list[tuple[int, int, str]]:
    """(when, priority, id) for everything that happens at a point in time."""
    due: list[tuple[int, int, str]] = []
    for inv in st.invoices.values():
        if inv["status"] == "open" and inv["next_payment_attempt"]:
            due.append((inv["next_payment_attempt"], 0, inv["id"]))
    for sub in st.subscriptions.values():
        if sub["status"] in LIVE_STATUSES:
            # A cancel_at before the period end comes first: no renewal after it.
            end = period_of(sub)[1]
            due.append((min(end, sub["cancel_at"] or end), 1, sub["id"]))
        elif sub["status"] == "incomplete":
            due.append((sub["created"] + INCOMPLETE_LIFETIME, 2, sub["id"]))
    for session in st.checkout_sessions.values():
        if session["status"] == "open":
            due.append((session["expires_at"], 3, session["id"]))
    return due


def advance_clock(st: SandboxState, target: int) -> int:
    """Move the clock to ``target``, running everything that falls due on the way, each at its
    own moment (so a 3-month jump makes 3 renewals, each dated at its period boundary)."""
    now = st.now()
    if target < now:
        raise StripeError(
            f"The clock can only move forward (now {now}, requested {target}).", param="to"
        )
    for _ in range(10_000):  # a runaway guard; each step consumes one due action
        due = [d for d in _due_actions(st) if d[0] <= target]
        if not due:
            break
        when, priority, obj_id = min(due)
        with st.clock.frozen_at(when):
            if priority == 0:
                collect(st, st.invoices[obj_id])
            elif priority == 1:
                _period_end(st, st.subscriptions[obj_id])
            elif priority == 2:
                _expire_incomplete(st, st.subscriptions[obj_id])
            else:
                expire_checkout_session(st, obj_id)
    return st.clock.advance_to(target)


def _period_end(st: SandboxState, sub: dict[str, Any]) -> None:
    """Renew (customer.subscription.updated, invoice events) or end a subscription: at its
    period end with cancel_at_period_end, or at its cancel_at (which may be mid-period)."""
    start, end = period_of(sub)
    internal = st.subscription_internal[sub["id"]]
    cancel_at = sub["cancel_at"]
    if sub["cancel_at_period_end"] or (cancel_at is not None and cancel_at <= end):
        ended = end if sub["cancel_at_period_end"] else cancel_at
        sub.update(status="canceled", ended_at=ended, cancel_at=ended)
        internal["pending"] = []
        stop_retries(st, sub)
        st.emit("customer.subscription.deleted", sub)
        return
    before = copy.deepcopy(sub)
    interval, count = interval_of(sub)
    internal["cycle"] += 1
    new_end = objects.add_interval(internal["anchor"], interval, count * (internal["cycle"] + 1))
    for item in sub["items"]["data"]:
        item.update(current_period_start=end, current_period_end=new_end)
    lines = internal["pending"] + [line_for_item(it, st) for it in sub["items"]["data"]]
    internal["pending"] = []
    # Stripe quirk kept on purpose: a renewal invoice's period_start/end is the period that
    # just ended; the lines carry the new service period.
    inv = new_invoice(st, sub, "subscription_cycle", (start, end), lines)
    st.emit("customer.subscription.updated", sub, objects.previous_attributes(before, sub))
    open_invoice(st, inv)
    collect(st, inv)


def _expire_incomplete(st: SandboxState, sub: dict[str, Any]) -> None:
    for inv in st.invoices.values():
        if inv["status"] == "open" and invoice_subscription(st, inv) is sub:
            void_invoice(st, inv["id"])
    sub.update(status="incomplete_expired", ended_at=st.now())
    st.emit("customer.subscription.deleted", sub)
