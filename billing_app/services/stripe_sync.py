"""Keeping local billing state in step with Stripe.

- `handle_webhook`: verify, store the event id first (exactly once), then apply it.
- `apply_subscription` / `apply_invoice`: idempotent, order-independent upserts. An event
  older than what was last applied never overwrites newer state; terminal states
  (canceled subscription, paid/void invoice) are never undone by a stale event.
- `sync_from_stripe`: pull customers, subscriptions and invoices from the API (missed webhooks).
- `replay_events`: re-apply stored events.
- `enforce_grace_periods`: past_due subscriptions fall back to free quotas after the grace.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from billing_app.clock import as_utc, utcnow
from billing_app.errors import InvalidWebhook, UserNotFound
from billing_app.gateway import get_gateway
from billing_app.gateway.parsing import (
    INVOICE_STATUS_RANK,
    TERMINAL_INVOICE_STATUSES,
    InvoiceData,
    MalformedObject,
    SubscriptionData,
    parse_checkout_session,
    parse_event,
    parse_invoice,
    parse_subscription,
)
from billing_app.metrics import METRICS
from billing_app.models import (
    SUBSCRIPTION_STATUSES,
    Invoice,
    Quota,
    StripeEvent,
    Subscription,
    User,
)
from billing_app.plans import get_catalog, plan_for_price
from billing_app.services import quotas
from billing_app.services.dto import SyncReport, WebhookResult
from billing_app.services.subscriptions import LIVE_STATUSES, effective_plan_key
from billing_app.settings import get_settings

log = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "customer.subscription.trial_will_end",
    }
)
INVOICE_EVENTS = frozenset(
    {
        "invoice.created",
        "invoice.finalized",
        "invoice.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "invoice.overdue",
    }
)
CHECKOUT_EVENTS = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
MAX_ERROR_LENGTH = 4000
# How often the lifespan task looks for past_due subscriptions whose grace is over.
GRACE_CHECK_INTERVAL_SECONDS = 600.0


class UnmappedObject(Exception):
    """A Stripe object that belongs to no local user (another app on the same account)."""


class UnknownPrice(Exception):
    """A live subscription on a price the plan catalog does not know: a configuration error,
    recorded on the event (and retried) rather than silently granting or removing quotas."""


# ---------------------------------------------------------------- helpers


def _insert(session: Session, table: sa.Table) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _lock(session: Session, model: Any, key: str, value: str) -> Any:
    """The row whose unique `key` is `value`, locked for this transaction, freshly read."""
    return session.exec(
        select(model)
        .where(getattr(model, key) == value)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _lock_or_create(session: Session, model: Any, key: str, value: str, **defaults: Any) -> Any:
    """Insert-or-nothing, then lock: concurrent deliveries of one object never make two rows."""
    session.execute(
        _insert(session, model.__table__)
        .values({key: value, **defaults})
        .on_conflict_do_nothing(index_elements=[key])
    )
    return _lock(session, model, key, value)


def _user_exists(session: Session, user_id: int | None) -> bool:
    return user_id is not None and session.get(User, user_id) is not None


def _user_by_customer(session: Session, customer_id: str | None) -> User | None:
    if not customer_id:
        return None
    return session.exec(select(User).where(User.stripe_customer_id == customer_id)).first()


def _link_customer(session: Session, user_id: int, customer_id: str | None) -> bool:
    """Record the user's Stripe customer if they have none and nobody else holds it."""
    if not customer_id:
        return False
    user = session.get(User, user_id)
    if user is None or user.stripe_customer_id is not None:
        return False
    if _user_by_customer(session, customer_id) is not None:
        return False
    user.stripe_customer_id = customer_id
    session.add(user)
    session.flush()
    return True


def refresh_quotas(session: Session, user_id: int) -> str:
    """Set the user's quotas from their effective plan (admin overrides stay). Caller commits."""
    plan = effective_plan_key(session, user_id)
    quotas.apply_plan(session, user_id, plan)
    return plan


def _quotas_follow(session: Session, user_id: int, plan_key: str) -> bool:
    plan = get_catalog()[plan_key]
    rows = {
        q.metric: q.plan_limit
        for q in session.exec(select(Quota).where(Quota.user_id == user_id)).all()
    }
    return all(rows.get(m) == plan.limit_for(m) for m in METRICS)


# ---------------------------------------------------------------- subscriptions


def _subscription_user(session: Session, data: SubscriptionData) -> int:
    existing = session.exec(
        select(Subscription.user_id).where(Subscription.stripe_subscription_id == data.id)
    ).first()
    if existing is not None:
        return existing
    user = _user_by_customer(session, data.customer_id)
    if user is not None and user.id is not None:
        return user.id
    if _user_exists(session, data.user_id):
        assert data.user_id is not None
        return data.user_id
    raise UnmappedObject(
        f"subscription {data.id}: no local user for customer {data.customer_id} "
        f"(metadata.user_id={data.user_id})"
    )


def _subscription_wins(sub: Subscription, data: SubscriptionData, at: datetime | None) -> bool:
    """Should `data` (as of `at`) overwrite the stored row? Never older over newer."""
    stored_at = sub.updated_from_stripe_at
    if stored_at is None:
        return True
    stored_terminal = sub.status in ("canceled", "incomplete_expired")
    if stored_terminal and not data.is_terminal:
        return False  # Stripe never revives a canceled subscription: this event is stale
    if at is None:
        return False
    if at != stored_at:
        return at > stored_at
    # Same second: a deleted/canceled state wins; otherwise the later delivery does.
    return data.is_terminal or not stored_terminal


def _state(sub: Subscription) -> tuple[Any, ...]:
    return (
        sub.status,
        sub.plan,
        sub.stripe_price_id,
        sub.current_period_start,
        sub.current_period_end,
        sub.cancel_at_period_end,
        sub.canceled_at,
        sub.past_due_since,
    )


def apply_subscription(
    session: Session,
    obj: dict[str, Any],
    at: datetime | None,
    *,
    force: bool = False,
) -> bool:
    """Upsert a Stripe subscription object seen as of `at`, then the user's quotas.

    `force` (reconciliation, an API response) writes it whatever was applied before.
    Returns True when the stored state changed. Caller commits.
    """
    data = parse_subscription(obj)
    if data.status not in SUBSCRIPTION_STATUSES:
        raise MalformedObject(f"subscription {data.id} has unknown status {data.status!r}")
    user_id = _subscription_user(session, data)
    plan = plan_for_price(data.price_id)
    now = utcnow()
    sub = _lock_or_create(
        session,
        Subscription,
        "stripe_subscription_id",
        data.id,
        user_id=user_id,
        stripe_customer_id=data.customer_id,
        status=data.status,
        plan="free",
        cancel_at_period_end=False,
        created_at=data.created or now,
        updated_at=now,
    )
    if not force and not _subscription_wins(sub, data, at):
        return False
    if plan is None and data.status in LIVE_STATUSES + ("incomplete",):
        raise UnknownPrice(
            f"subscription {data.id} is on price {data.price_id}, which is not in the plan "
            "catalog (check STRIPE_PRICE_BASIC/PRO/ENTERPRISE)"
        )
    before = _state(sub)
    previous_status = sub.status if sub.updated_from_stripe_at is not None else None
    sub.stripe_customer_id = data.customer_id or sub.stripe_customer_id
    sub.stripe_price_id = data.price_id
    sub.plan = plan.key if plan is not None else sub.plan
    sub.status = data.status
    sub.current_period_start = data.current_period_start or sub.current_period_start
    sub.current_period_end = data.current_period_end or sub.current_period_end
    sub.cancel_at_period_end = data.cancel_at_period_end
    sub.canceled_at = data.canceled_at
    if data.status == "past_due":
        # The grace period counts from when Stripe moved it to past_due.
        if previous_status != "past_due" or sub.past_due_since is None:
            sub.past_due_since = at or now
    else:
        sub.past_due_since = None
    if at is not None:
        stored = sub.updated_from_stripe_at
        sub.updated_from_stripe_at = at if stored is None else max(as_utc(stored), at)
    sub.updated_at = now
    session.add(sub)
    session.flush()
    _link_customer(session, user_id, data.customer_id)
    refresh_quotas(session, user_id)
    return _state(sub) != before


# ---------------------------------------------------------------- invoices


def _invoice_user(session: Session, data: InvoiceData) -> int:
    existing = session.exec(
        select(Invoice.user_id).where(Invoice.stripe_invoice_id == data.id)
    ).first()
    if existing is not None:
        return existing
    if data.subscription_id:
        owner = session.exec(
            select(Subscription.user_id).where(
                Subscription.stripe_subscription_id == data.subscription_id
            )
        ).first()
        if owner is not None:
            return owner
    user = _user_by_customer(session, data.customer_id)
    if user is not None and user.id is not None:
        return user.id
    if _user_exists(session, data.user_id):
        assert data.user_id is not None
        return data.user_id
    raise UnmappedObject(f"invoice {data.id}: no local user for customer {data.customer_id}")


def _invoice_wins(inv: Invoice, data: InvoiceData, at: datetime | None) -> bool:
    stored_at = inv.updated_from_stripe_at
    if stored_at is None:
        return True
    if inv.status in TERMINAL_INVOICE_STATUSES and data.status not in TERMINAL_INVOICE_STATUSES:
        return False  # a paid or void invoice never reopens: the event is stale
    if at is None:
        return False
    if at != stored_at:
        return at > stored_at
    # Same second: the more final status wins (paid over open/failed).
    return INVOICE_STATUS_RANK.get(data.status, 0) >= INVOICE_STATUS_RANK.get(inv.status, 0)


def _invoice_state(inv: Invoice) -> tuple[Any, ...]:
    return (
        inv.status,
        inv.amount_due,
        inv.amount_paid,
        inv.number,
        inv.hosted_invoice_url,
        inv.invoice_pdf,
        inv.period_start,
        inv.period_end,
    )


def apply_invoice(
    session: Session, obj: dict[str, Any], at: datetime | None, *, force: bool = False
) -> bool:
    """Upsert a Stripe invoice object seen as of `at`. Returns True when it changed."""
    data = parse_invoice(obj)
    user_id = _invoice_user(session, data)
    now = utcnow()
    inv = _lock_or_create(
        session,
        Invoice,
        "stripe_invoice_id",
        data.id,
        user_id=user_id,
        status=data.status,
        amount_due=0,
        amount_paid=0,
        currency=data.currency,
        created_at=data.created or now,
    )
    if not force and not _invoice_wins(inv, data, at):
        return False
    before = _invoice_state(inv)
    fresh = inv.updated_from_stripe_at is None
    inv.stripe_subscription_id = data.subscription_id or inv.stripe_subscription_id
    inv.number = data.number or inv.number
    inv.status = data.status
    inv.amount_due = data.amount_due
    inv.amount_paid = data.amount_paid
    inv.currency = data.currency
    inv.period_start = data.period_start
    inv.period_end = data.period_end
    inv.hosted_invoice_url = data.hosted_invoice_url or inv.hosted_invoice_url
    inv.invoice_pdf = data.invoice_pdf or inv.invoice_pdf
    if data.created is not None:
        inv.created_at = data.created
    if at is not None:
        stored = inv.updated_from_stripe_at
        inv.updated_from_stripe_at = at if stored is None else max(as_utc(stored), at)
    session.add(inv)
    session.flush()
    return fresh or _invoice_state(inv) != before


# ---------------------------------------------------------------- checkout


def _apply_checkout(session: Session, obj: dict[str, Any], at: datetime | None) -> str | None:
    data = parse_checkout_session(obj)
    user_id = data.user_id if _user_exists(session, data.user_id) else None
    if user_id is None:
        user = _user_by_customer(session, data.customer_id)
        user_id = user.id if user is not None else None
    if user_id is None:
        raise UnmappedObject(f"checkout session {data.id}: no local user")
    _link_customer(session, user_id, data.customer_id)
    if data.subscription_id:
        known = session.exec(
            select(Subscription.id).where(
                Subscription.stripe_subscription_id == data.subscription_id
            )
        ).first()
        if known is None:
            # customer.subscription.created may be late or lost: fetch the subscription now.
            obj = get_gateway().retrieve_subscription(data.subscription_id)
            apply_subscription(session, obj, at)
    return None


def _unlink_customer(session: Session, customer_id: Any) -> None:
    """A customer deleted in Stripe: forget it, so the next checkout creates a new one."""
    user = _user_by_customer(session, customer_id if isinstance(customer_id, str) else None)
    if user is None:
        raise UnmappedObject(f"customer {customer_id}: no local user")
    user.stripe_customer_id = None
    session.add(user)
    session.flush()


# ---------------------------------------------------------------- events


def apply_event(session: Session, payload: dict[str, Any]) -> str | None:
    """Apply one event's object. Returns a note when it was deliberately ignored."""
    event = parse_event(payload)
    try:
        if event.type in SUBSCRIPTION_EVENTS:
            apply_subscription(session, event.object, event.created)
        elif event.type in INVOICE_EVENTS:
            apply_invoice(session, event.object, event.created)
        elif event.type in CHECKOUT_EVENTS:
            _apply_checkout(session, event.object, event.created)
        elif event.type == "customer.deleted":
            _unlink_customer(session, event.object.get("id"))
        else:
            return f"ignored: {event.type} is not handled"
    except UnmappedObject as err:
        # Not ours (or a customer deleted locally): acknowledge, keep the note for operators.
        log.info("stripe event %s ignored: %s", event.id, err)
        return f"ignored: {err}"
    return None


def _store_event(session: Session, payload: dict[str, Any]) -> bool:
    """Insert the event row in its own transaction; False when its id is already stored."""
    event = parse_event(payload)
    table = StripeEvent.__table__  # type: ignore[attr-defined]
    try:
        inserted = session.execute(
            _insert(session, table)
            .values(
                stripe_event_id=event.id,
                type=event.type,
                created=event.created,
                payload=payload,
                received_at=utcnow(),
                attempts=0,
            )
            .on_conflict_do_nothing(index_elements=["stripe_event_id"])
            .returning(table.c.id)
        ).scalar()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return inserted is not None


def _record_failure(session: Session, stripe_event_id: str, err: BaseException) -> None:
    text = f"{type(err).__name__}: {err}"[:MAX_ERROR_LENGTH]
    try:
        row = _lock(session, StripeEvent, "stripe_event_id", stripe_event_id)
        row.error = text
        row.attempts = (row.attempts or 0) + 1
        session.add(row)
        session.commit()
    except Exception:  # the database itself is failing; the 500 still makes Stripe retry
        session.rollback()
        log.exception("could not record the failure of stripe event %s", stripe_event_id)


def _process(session: Session, stripe_event_id: str, *, reapply: bool = False) -> str:
    """Apply a stored event in one transaction holding its row lock.

    Returns "applied", "ignored" or "duplicate" (already processed by someone else, e.g. a
    concurrent copy of the delivery). Raises after recording the error on the row.
    """
    try:
        row = _lock(session, StripeEvent, "stripe_event_id", stripe_event_id)
        if row.processed_at is not None and not reapply:
            session.rollback()
            return "duplicate"
        note = apply_event(session, row.payload or {})
        row.processed_at = utcnow()
        row.error = note
        row.attempts = (row.attempts or 0) + 1
        session.add(row)
        session.commit()
    except BaseException as err:
        session.rollback()
        log.warning("applying stripe event %s failed: %s", stripe_event_id, err)
        _record_failure(session, stripe_event_id, err)
        raise
    return "ignored" if note else "applied"


def handle_webhook(session: Session, payload: bytes, signature_header: str | None) -> WebhookResult:
    """Verify, store first, apply. The route returns `status_code` and `body` as they are."""
    try:
        raw = get_gateway().verify_webhook(payload, signature_header)
        event = parse_event(raw)
    except InvalidWebhook as err:
        return WebhookResult(err.status_code, {"error": err.to_dict()})
    except MalformedObject as err:
        return WebhookResult(
            400, {"error": {"code": "invalid_payload", "message": f"Not a Stripe event: {err}"}}
        )
    if not _store_event(session, raw):
        processed_at = session.exec(
            select(StripeEvent.processed_at).where(StripeEvent.stripe_event_id == event.id)
        ).first()
        session.rollback()
        if processed_at is not None:
            return WebhookResult(200, {"received": True, "duplicate": True})
        # Stored but not processed: an earlier attempt failed (or is running): apply below.
    try:
        outcome = _process(session, event.id)
    except Exception as err:
        return WebhookResult(
            500,
            {
                "error": {
                    "code": "processing_failed",
                    "message": f"Event {event.id} could not be applied; Stripe will retry. "
                    f"({type(err).__name__}: {err})"[:1000],
                }
            },
        )
    body: dict[str, Any] = {"received": True}
    if outcome == "duplicate":
        body["duplicate"] = True
    elif outcome == "ignored":
        body["ignored"] = True
    return WebhookResult(200, body)


def replay_events(session: Session, since: datetime) -> int:
    """Re-apply every stored event created (or received) since `since`, oldest first.

    Safe to run any number of times: the ordering rules make re-applying an old event a
    no-op. Returns how many events were applied; failures are recorded on their rows.
    """
    since = as_utc(since)
    when = sa.func.coalesce(col(StripeEvent.created), col(StripeEvent.received_at))
    ids = session.exec(
        select(StripeEvent.stripe_event_id).where(when >= since).order_by(when, col(StripeEvent.id))
    ).all()
    session.rollback()
    applied = 0
    for event_id in ids:
        try:
            if _process(session, event_id, reapply=True) == "applied":
                applied += 1
        except Exception:
            continue  # recorded on the event row
    return applied


# ---------------------------------------------------------------- reconciliation


def _customers_to_sync(session: Session, user_id: int | None) -> tuple[list[tuple[int, str]], int]:
    """(user id, customer id) pairs to pull, and how many customers were newly linked."""
    gateway = get_gateway()
    linked = 0
    if user_id is not None:
        user = session.get(User, user_id)
        if user is None:
            raise UserNotFound(f"No user with id {user_id}.", user_id=user_id)
        if user.stripe_customer_id:
            return [(user_id, user.stripe_customer_id)], 0
        # Lost the customer id (e.g. a failed commit after creating it): find it by email.
        for cus in gateway.iter_customers(email=user.email):
            meta = (cus.get("metadata") or {}).get("user_id")
            if str(meta) == str(user_id) and _link_customer(session, user_id, cus["id"]):
                session.commit()
                return [(user_id, cus["id"])], 1
        return [], 0
    pairs: list[tuple[int, str]] = []
    for cus in gateway.iter_customers():
        owner = _user_by_customer(session, cus.get("id"))
        if owner is None:
            meta = (cus.get("metadata") or {}).get("user_id")
            candidate = int(meta) if isinstance(meta, str) and meta.isdigit() else None
            if candidate is not None and _link_customer(session, candidate, cus["id"]):
                session.commit()
                linked += 1
                owner = session.get(User, candidate)
        if owner is not None and owner.id is not None:
            pairs.append((owner.id, cus["id"]))
    session.rollback()
    return pairs, linked


def sync_from_stripe(session: Session, user_id: int | None = None) -> SyncReport:
    """Pull customers, subscriptions and invoices from Stripe and repair local state.

    What Stripe says now wins over whatever webhooks did or did not deliver. Idempotent.
    """
    gateway = get_gateway()
    pairs, linked = _customers_to_sync(session, user_id)
    subs = subs_changed = invs = invs_changed = 0
    errors: list[str] = []
    for uid, customer_id in pairs:
        fetched_at = utcnow()
        try:
            sub_objs = list(gateway.iter_subscriptions(customer_id=customer_id))
            inv_objs = list(gateway.iter_invoices(customer_id=customer_id))
        except Exception as err:
            errors.append(f"customer {customer_id}: {err}")
            continue
        try:
            for obj in sub_objs:
                subs += 1
                subs_changed += apply_subscription(session, obj, fetched_at, force=True)
            for obj in inv_objs:
                invs += 1
                invs_changed += apply_invoice(session, obj, fetched_at, force=True)
            refresh_quotas(session, uid)
            session.commit()
        except Exception as err:
            session.rollback()
            errors.append(f"customer {customer_id}: {type(err).__name__}: {err}")
    return SyncReport(
        users=len({uid for uid, _ in pairs}),
        customers_linked=linked,
        subscriptions=subs,
        subscriptions_changed=subs_changed,
        invoices=invs,
        invoices_changed=invs_changed,
        errors=tuple(errors),
    )


# ---------------------------------------------------------------- grace periods


def enforce_grace_periods(session: Session) -> int:
    """Move users whose past_due grace period is over to free quotas (and back if paid).

    Run periodically (the app's lifespan task); returns how many users' quotas changed.
    """
    grace = timedelta(days=get_settings().past_due_grace_days)
    cutoff = utcnow() - grace
    since = sa.func.coalesce(col(Subscription.past_due_since), col(Subscription.updated_at))
    user_ids = session.exec(
        select(Subscription.user_id)
        .where(Subscription.status == "past_due", since <= cutoff)
        .distinct()
    ).all()
    changed = 0
    for uid in user_ids:
        plan = effective_plan_key(session, uid)
        if not _quotas_follow(session, uid, plan):
            quotas.apply_plan(session, uid, plan)
            changed += 1
    session.commit()
    return changed


def enforce_grace_periods_now() -> int:
    """One pass of `enforce_grace_periods` in its own session (for schedulers)."""
    from billing_app.db import session_scope

    with session_scope() as session:
        return enforce_grace_periods(session)


async def grace_period_task(interval_seconds: float = GRACE_CHECK_INTERVAL_SECONDS) -> None:
    """Run `enforce_grace_periods` forever, off the event loop. Register it as the app's
    lifespan task (Reflex: `app.register_lifespan_task(grace_period_task)`)."""
    import asyncio

    while True:
        try:
            changed = await asyncio.to_thread(enforce_grace_periods_now)
            if changed:
                log.info("past_due grace over: %d user(s) moved to free quotas", changed)
        except Exception:  # keep the loop alive; the next pass retries
            log.exception("enforcing past_due grace periods failed")
        await asyncio.sleep(interval_seconds)
