"""Keeping local billing state in step with Stripe.

- `handle_webhook`: verify, then store the event id (exactly once) and apply it in one
  transaction; a failed apply is stored unprocessed with its error, for the retry. An
  object it needs from Stripe (a tie's, a checkout's subscription) is fetched with no
  transaction open, then the event is applied again.
- `apply_subscription` / `apply_invoice` / `apply_customer`: idempotent, order-independent
  upserts. An event older than what was last applied never overwrites newer state;
  terminal states (canceled subscription, paid/void invoice) are never undone by a stale
  event. Stamps are whole seconds, as Stripe's `created`; two different subscription (or
  customer balance) states of one second (whose delivery order means nothing) are settled
  by fetching the object. Every stamp is Stripe's clock: an event's `created`, an API
  answer's `Date` (`answered_at`), never the app's, which may be minutes off.
- `sync_from_stripe`: pull customers (balances), subscriptions and invoices from the API
  (missed webhooks).
- `replay_events`: re-apply stored events.
- `enforce_grace_periods`: past_due subscriptions fall back to free quotas after the grace
  (`grace_period_task` wakes at the earliest grace end to come, or when a commit in its
  process records an earlier one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from billing_app.clock import as_utc, utcnow
from billing_app.db import driver_rows, unavailable
from billing_app.errors import InvalidWebhook, UserNotFound
from billing_app.gateway import get_gateway
from billing_app.gateway.parsing import (
    DELETED_INVOICE_STATUS,
    INVOICE_STATUS_RANK,
    TERMINAL_INVOICE_STATUSES,
    EventData,
    InvoiceData,
    MalformedObject,
    SubscriptionData,
    parse_checkout_session,
    parse_customer,
    parse_event,
    parse_invoice,
    parse_subscription,
    served_at,
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
from billing_app.plans import get_catalog, plan_for_price, plan_price_ids
from billing_app.services import quotas
from billing_app.services.dto import SyncReport, WebhookResult
from billing_app.services.invoices import describe
from billing_app.services.subscriptions import (
    LIVE_STATUSES,
    effective_plan_key,
    pick_current,
    plan_key_for,
)
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
        "invoice.deleted",
    }
)
# The customer's balance: an admin's credit in Stripe changes it without an invoice.
CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated"})
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

# Hot paths use Core statements built once (no ORM flush or statement building per event);
# `_forget_loaded` keeps the session's identity map honest after such a write.
_EVENTS: sa.Table = StripeEvent.__table__  # type: ignore[attr-defined]
_SUBS: sa.Table = Subscription.__table__  # type: ignore[attr-defined]
_INVOICES: sa.Table = Invoice.__table__  # type: ignore[attr-defined]
_QUOTAS: sa.Table = Quota.__table__  # type: ignore[attr-defined]
_USERS: sa.Table = User.__table__  # type: ignore[attr-defined]

# The subscription and, in the same round trip, whether its user already has a customer.
_SUB_LOCK = (
    sa.select(_SUBS, _USERS.c.stripe_customer_id.label("user_customer_id"))
    .select_from(_SUBS.outerjoin(_USERS, _USERS.c.id == _SUBS.c.user_id))
    .where(_SUBS.c.stripe_subscription_id == sa.bindparam("key"))
    .with_for_update(of=_SUBS)
)
_SUB_UPDATE = sa.update(_SUBS).where(_SUBS.c.id == sa.bindparam("row_id"))
_INV_LOCK = (
    sa.select(_INVOICES)
    .where(_INVOICES.c.stripe_invoice_id == sa.bindparam("key"))
    .with_for_update()
)
_INV_UPDATE = sa.update(_INVOICES).where(_INVOICES.c.id == sa.bindparam("row_id"))
# What refreshing a user's quotas reads, in one round trip: their subscriptions (kind 0,
# newest first, named as plan_key_for reads them), then their quota rows (kind 1: metric,
# source, limit, plan_limit in the status, plan, limit, plan_limit columns).
_PLAN_INPUTS = sa.union_all(
    sa.select(
        sa.literal_column("0").label("kind"),
        _SUBS.c.id,
        _SUBS.c.status,
        _SUBS.c.plan,
        _SUBS.c.past_due_since,
        _SUBS.c.updated_at,
        _SUBS.c.created_at,
        sa.null().label("limit"),
        sa.null().label("plan_limit"),
    ).where(_SUBS.c.user_id == sa.bindparam("user_id")),
    sa.select(
        sa.literal_column("1"),
        _QUOTAS.c.id,
        _QUOTAS.c.metric,
        _QUOTAS.c.source,
        sa.null(),
        sa.null(),
        sa.null(),
        _QUOTAS.c.limit,
        _QUOTAS.c.plan_limit,
    ).where(_QUOTAS.c.user_id == sa.bindparam("user_id")),
).order_by(
    sa.literal_column("kind"),
    sa.literal_column("created_at").desc(),
    sa.literal_column("id").desc(),
)
_QUOTA_UPDATE = sa.update(_QUOTAS).where(_QUOTAS.c.id == sa.bindparam("row_id"))
# PostgreSQL: a plan change's quota rows in one statement, from arrays. psycopg's
# executemany (a pipeline) of the 3 rows cost 10 % of the worker's GIL time (py-spy).
# The limit follows the plan by the row's source as it is when written, not as it was
# read (unlocked): an admin's override or reset committed in between stays.
_PG_QUOTA_UPDATES = sa.text(
    "UPDATE quota SET \"limit\" = CASE WHEN quota.source = 'plan' THEN v.new_plan_limit "
    'ELSE quota."limit" END, plan_limit = v.new_plan_limit, '
    "updated_at = :updated_at FROM unnest(CAST(:row_id AS integer[]), "
    "CAST(:plan_limit AS bigint[])) AS v(id, new_plan_limit) WHERE quota.id = v.id"
)
_QUOTA_INSERT = sa.insert(_QUOTAS).inline()  # no RETURNING: an executemany
_EVENT_PROCESSED = sa.select(_EVENTS.c.processed_at).where(
    _EVENTS.c.stripe_event_id == sa.bindparam("key")
)
_EVENT_NOTE = sa.update(_EVENTS).where(_EVENTS.c.id == sa.bindparam("row_id"))
_USER_OF_CUSTOMER = sa.select(_USERS.c.id).where(_USERS.c.stripe_customer_id == sa.bindparam("key"))
_OWNER_OF_SUB = sa.select(_SUBS.c.user_id).where(
    _SUBS.c.stripe_subscription_id == sa.bindparam("key")
)


@lru_cache(maxsize=4)
def _event_claim(dialect: str) -> Any:
    """INSERT of an event row that does nothing when its id is stored; returns the new id."""
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_EVENTS)
    return ins.on_conflict_do_nothing(index_elements=["stripe_event_id"]).returning(_EVENTS.c.id)


@lru_cache(maxsize=8)
def _create_row(dialect: str, table: sa.Table, key: str) -> Any:
    """INSERT of a new object row returning its id (it is ours, and locked); nothing on
    conflict."""
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return ins.on_conflict_do_nothing(index_elements=[key]).returning(table.c.id)


def _first(conn: sa.Connection, stmt: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    found = driver_rows(conn, stmt, params)
    return found[0] if found else None


def _scalar(conn: sa.Connection, stmt: Any, params: dict[str, Any]) -> Any:
    found = _first(conn, stmt, params)
    return None if found is None else next(iter(found.values()))


def _forget_loaded(session: Session, model: Any, row_id: Any) -> None:
    """A Core write changed this row: a loaded ORM copy reloads on its next use."""
    obj = session.identity_map.get(identity_key(model, row_id))
    if obj is not None:
        session.expire(obj)


def _lock(session: Session, model: Any, key: str, value: str) -> Any:
    """The row whose unique `key` is `value`, locked for this transaction, freshly read."""
    return session.exec(
        select(model)
        .where(getattr(model, key) == value)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


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
    """Set the user's quotas from their effective plan (admin overrides stay). Caller commits.

    What `effective_plan_key` + `quotas.apply_plan` do, in Core: one read, and writes only
    for the rows that change.
    """
    session.flush()
    return _refresh_quotas(session, session.connection(), user_id)


def _refresh_quotas(session: Session, conn: sa.Connection, user_id: int) -> str:
    """refresh_quotas on the session's connection, its pending changes flushed."""
    subs: list[Any] = []
    rows: dict[str, tuple[int, str, int, int]] = {}  # metric: (id, source, limit, plan_limit)
    for r in driver_rows(conn, _PLAN_INPUTS, {"user_id": user_id}):
        if r["kind"] == 0:
            subs.append(SimpleNamespace(**r))  # as plan_key_for reads a Subscription
        else:
            rows[r["status"]] = (r["id"], r["plan"], r["limit"], r["plan_limit"])
    current = pick_current(subs)  # as subscriptions.current_subscription
    plan_key = plan_key_for(current)  # type: ignore[arg-type]  # reads the same columns
    plan = get_catalog()[plan_key]
    now = utcnow()
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for metric in METRICS:
        limit = plan.limit_for(metric)
        q = rows.get(metric)
        if q is None:
            inserts.append(
                {
                    "user_id": user_id,
                    "metric": metric,
                    "limit": limit,
                    "source": "plan",
                    "plan_limit": limit,
                    "updated_at": now,
                }
            )
            continue
        row_id, source, current_limit, plan_limit = q
        if plan_limit != limit or (source != "admin" and current_limit != limit):
            new_limit = limit if source == "plan" else current_limit
            updates.append(
                {"row_id": row_id, "plan_limit": limit, "limit": new_limit, "updated_at": now}
            )
    if updates:
        if conn.dialect.name == "postgresql":
            columns = {k: [u[k] for u in updates] for k in ("row_id", "plan_limit")}
            driver_rows(conn, _PG_QUOTA_UPDATES, {**columns, "updated_at": now})
        else:
            driver_rows(conn, _QUOTA_UPDATE, updates)
        for u in updates:
            _forget_loaded(session, Quota, u["row_id"])
    if inserts:
        driver_rows(conn, _QUOTA_INSERT, inserts)
    return plan_key


def _quotas_follow(session: Session, user_id: int, plan_key: str) -> bool:
    plan = get_catalog()[plan_key]
    rows = {
        q.metric: q.plan_limit
        for q in session.exec(select(Quota).where(Quota.user_id == user_id)).all()
    }
    return all(rows.get(m) == plan.limit_for(m) for m in METRICS)


# session.info key: what a webhook delivery fetched from Stripe before its transaction,
# by (kind, id). Present only during a delivery.
_FETCHED = "billing_app.stripe_fetched"
# Fetches one delivery may need: its checkout's subscription, then a tie's object.
MAX_FETCHES = 3


class _NeedsFetch(Exception):
    """Applying a delivery needs an object from Stripe: the delivery rolls back, fetches it
    with no transaction open (on SQLite an open one holds the write lock, and every usage
    write and webhook would wait for Stripe's answer), then applies again."""

    def __init__(self, kind: str, obj_id: str) -> None:
        super().__init__(f"{kind} {obj_id} is needed from Stripe")
        self.key = (kind, obj_id)


def _retrieve(kind: str, obj_id: str) -> dict[str, Any]:
    gateway = get_gateway()
    if kind == "customer":
        return gateway.retrieve_customer(obj_id)
    return gateway.retrieve_subscription(obj_id)


def _fetch(session: Session, kind: str, obj_id: str) -> dict[str, Any]:
    """A Stripe object `kind` ("subscription", "customer") as the API answers it now. In a
    webhook delivery, one fetched before its transaction (else _NeedsFetch); elsewhere
    (sync, replay) asked at once."""
    fetched = session.info.get(_FETCHED)
    if fetched is None:
        return _retrieve(kind, obj_id)
    if (kind, obj_id) not in fetched:
        raise _NeedsFetch(kind, obj_id)
    return fetched[(kind, obj_id)]


# ---------------------------------------------------------------- subscriptions


def _subscription_user(
    session: Session, conn: sa.Connection, data: SubscriptionData
) -> tuple[int, bool]:
    """The owner of a subscription not stored yet (its customer's user, else metadata's), and
    whether that user already holds the customer."""
    if data.customer_id:
        user_id = _scalar(conn, _USER_OF_CUSTOMER, {"key": data.customer_id})
        if user_id is not None:
            return user_id, True
    if _user_exists(session, data.user_id):
        assert data.user_id is not None
        return data.user_id, False
    raise UnmappedObject(
        f"subscription {data.id}: no local user for customer {data.customer_id} "
        f"(metadata.user_id={data.user_id})"
    )


# `_subscription_verdict`'s answers.
NEWER, STALE, TIE = "newer", "stale", "tie"


def _subscription_verdict(
    sub: Any, data: SubscriptionData, at: datetime | None, force: bool = False
) -> str:
    """May `data` (as of `at`) overwrite the stored row? NEWER: yes; STALE: no (never older
    over newer); TIE: same second, neither terminal, so the order is unknown.

    `force` (an API answer, `at` its Stripe moment): wins a tie and the terminal rule, but
    not over an event created after it was served (a sync's list applied after that)."""
    stored_at = sub["updated_from_stripe_at"]
    if stored_at is None:
        return NEWER
    if force:
        return STALE if at is not None and at < stored_at else NEWER
    stored_terminal = sub["status"] in ("canceled", "incomplete_expired")
    if stored_terminal and not data.is_terminal:
        return STALE  # Stripe never revives a canceled subscription: this event is stale
    if at is None:
        return STALE
    if at != stored_at:
        return NEWER if at > stored_at else STALE
    # Same second: a deleted/canceled state wins. Otherwise `created` (whole seconds) and
    # the delivery order (not guaranteed) cannot tell which of the two came last.
    return NEWER if data.is_terminal else TIE


def answered_at(obj: dict[str, Any]) -> datetime:
    """The moment an API answer showed `obj`, on Stripe's clock (its `Date`), to order it
    against events' `created`. The app's clock only for an answer without one (a test's
    stand-in gateway): api.stripe.com and the sandbox date every answer."""
    return (served_at(obj) or utcnow()).replace(microsecond=0)


def apply_answer(session: Session, obj: dict[str, Any]) -> bool:
    """Write a subscription as Stripe's API answered it (the freshest state there is, unless
    an event created after the answer was applied meanwhile). Caller commits."""
    return apply_subscription(session, obj, answered_at(obj), force=True)


def _whole_second(at: datetime | None) -> datetime | None:
    """Stripe's `created` has 1 s resolution: a local stamp (an API answer, a fetch) with
    microseconds would make an event of that same second look older and be dropped."""
    return None if at is None else at.replace(microsecond=0)


def _state(row: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row[k] for k in keys)


_SUB_STATE = (
    "status",
    "plan",
    "stripe_price_id",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "cancel_at",
    "canceled_at",
    "past_due_since",
)


def _subscription_values(
    data: SubscriptionData, plan: Any, at: datetime | None, now: datetime, sub: Any
) -> dict[str, Any]:
    """The columns `data` (as of `at`) writes over the stored row `sub`."""
    stored_at = sub["updated_from_stripe_at"]
    past_due_since = None
    if data.status == "past_due":
        # The grace period counts from when Stripe moved it to past_due.
        past_due_since = sub["past_due_since"]
        previous_status = sub["status"] if stored_at is not None else None
        if previous_status != "past_due" or past_due_since is None:
            past_due_since = at or now
    values: dict[str, Any] = {
        "period_reset": _period_reset(data, plan, sub, at),
        "stripe_customer_id": data.customer_id or sub["stripe_customer_id"],
        "stripe_price_id": data.price_id,
        "plan": plan.key if plan is not None else sub["plan"],
        "status": data.status,
        "current_period_start": data.current_period_start or sub["current_period_start"],
        "current_period_end": data.current_period_end or sub["current_period_end"],
        "billing_cycle_anchor": data.billing_cycle_anchor or sub["billing_cycle_anchor"],
        "cancel_at_period_end": data.cancel_at_period_end,
        # An ended subscription's: when it ended (Stripe's ended_at). A cancel now after a
        # scheduled one keeps cancel_at_period_end set and clears cancel_at, so neither
        # tells the day it ended (states/views.py reads this first).
        "cancel_at": data.ended_at if data.is_terminal and data.ended_at else data.cancel_at,
        "canceled_at": data.canceled_at,
        "past_due_since": past_due_since,
        "updated_at": now,
    }
    if at is not None:
        values["updated_from_stripe_at"] = at if stored_at is None else max(as_utc(stored_at), at)
    return values


# How long after a period's start Stripe's state showing the renewal can be stamped.
RENEWAL_SLACK = timedelta(hours=1)


def _period_reset(
    data: SubscriptionData, plan: Any, sub: Any, at: datetime | None = None
) -> str | None:
    """The reset rule of the period `data` is in: the plan's when the period begins (a
    new subscription, or a renewal: another period start), else the one stored.

    A state of a new period seen well after that period began (its renewal's webhook late
    or lost, `stripe sync`, the answer to the app's own plan change) may also carry a
    change made since: the period began on the plan stored before, not on this one."""
    stored_start = sub["current_period_start"]
    start = data.current_period_start or stored_start
    new_period = sub["updated_from_stripe_at"] is None or (
        start is not None and (stored_start is None or as_utc(stored_start) != as_utc(start))
    )
    if sub["period_reset"] is not None and not new_period:
        return str(sub["period_reset"])
    if not new_period:  # an older row: the rule of the plan it had until now
        plan = get_catalog().get(sub["plan"])
    elif (
        sub["updated_from_stripe_at"] is not None
        and at is not None
        and start is not None
        and at > as_utc(start) + RENEWAL_SLACK
    ):
        plan = get_catalog().get(sub["plan"]) or plan
    return None if plan is None else str(plan.reset)


def apply_subscription(
    session: Session,
    obj: dict[str, Any],
    at: datetime | None,
    *,
    force: bool = False,
) -> bool:
    """Upsert a Stripe subscription object seen as of `at`, then the user's quotas.

    `force` (reconciliation, an API response, `at` its moment on Stripe's clock) writes it
    unless what is stored came from an event created after that moment.
    Returns True when the stored state changed. Caller commits.
    """
    data = parse_subscription(obj, plan_price_ids())  # the plan's item, not an add-on's
    at = _whole_second(at)
    if data.status not in SUBSCRIPTION_STATUSES:
        raise MalformedObject(f"subscription {data.id} has unknown status {data.status!r}")
    session.flush()  # pending ORM changes first, as an ORM query would (autoflush)
    conn = session.connection()
    # Known subscription (the usual case): one locked read, which also tells whether its
    # user already has a customer (then there is nothing to link).
    row = _first(conn, _SUB_LOCK, {"key": data.id})
    if row is not None:
        user_id, linked = row["user_id"], row["user_customer_id"] is not None
    else:
        user_id, linked = _subscription_user(session, conn, data)
    plan = plan_for_price(data.price_id)
    if plan is None and data.status in LIVE_STATUSES + ("incomplete",):
        unknown_price = UnknownPrice(
            f"subscription {data.id} is on price {data.price_id}, which is not in the plan "
            "catalog (check STRIPE_PRICE_BASIC/PRO/ENTERPRISE)"
        )
    else:
        unknown_price = None
    now = utcnow()
    changed: bool | None = None
    if row is None:
        # New: insert it with its final values (insert-or-nothing: a concurrent delivery of
        # the same subscription never makes a second row; then we update theirs below).
        if unknown_price is not None:
            raise unknown_price
        blank = {
            "stripe_subscription_id": data.id,
            "user_id": user_id,
            "stripe_customer_id": data.customer_id,
            "status": data.status,
            "plan": "free",
            "stripe_price_id": None,
            "current_period_start": None,
            "current_period_end": None,
            "cancel_at_period_end": False,
            "cancel_at": None,
            "canceled_at": None,
            "past_due_since": None,
            "period_reset": None,
            "billing_cycle_anchor": None,
            "updated_from_stripe_at": None,
            "created_at": data.created or now,
            "updated_at": now,
        }
        values = _subscription_values(data, plan, at, now, blank)
        created = _first(
            conn,
            _create_row(conn.dialect.name, _SUBS, "stripe_subscription_id"),
            {**blank, **values},
        )
        if created is not None:
            changed = _state(values, _SUB_STATE) != _state(blank, _SUB_STATE)
            _note_grace_start(session, values, blank)
        else:
            row = _first(conn, _SUB_LOCK, {"key": data.id})
    if changed is None:
        assert row is not None  # the conflicting row is there and now locked
        sub = row
        verdict = _subscription_verdict(sub, data, at, force)
        if verdict == STALE:
            return False
        values = _subscription_values(data, plan, at, now, sub)
        if verdict == TIE and _state(values, _SUB_STATE) != _state(sub, _SUB_STATE):
            # Two states in the same second: ask Stripe which is current and apply that.
            # A failed fetch raises, so the delivery fails and Stripe retries it.
            return apply_answer(session, _fetch(session, "subscription", data.id))
        if unknown_price is not None:
            raise unknown_price
        driver_rows(conn, _SUB_UPDATE, {"row_id": sub["id"], **values})
        _forget_loaded(session, Subscription, sub["id"])
        changed = _state(values, _SUB_STATE) != _state(sub, _SUB_STATE)
        _note_grace_start(session, values, sub)
    if not linked:
        if data.status not in ("canceled", "incomplete_expired"):
            # An ended subscription does not bring back a customer: it may be a deleted
            # customer's, its customer.deleted applied first (their order is not given).
            _link_customer(session, user_id, data.customer_id)
        refresh_quotas(session, user_id)  # after the ORM's write, flushed
    else:
        _refresh_quotas(session, conn, user_id)
    return changed


# ---------------------------------------------------------------- invoices


def _invoice_user(session: Session, conn: sa.Connection, data: InvoiceData) -> int:
    """The owner of an invoice not stored yet: its subscription's, its customer's, metadata's."""
    if data.subscription_id:
        owner = _scalar(conn, _OWNER_OF_SUB, {"key": data.subscription_id})
        if owner is not None:
            return owner
    if data.customer_id:
        user_id = _scalar(conn, _USER_OF_CUSTOMER, {"key": data.customer_id})
        if user_id is not None:
            return user_id
    if _user_exists(session, data.user_id):
        assert data.user_id is not None
        return data.user_id
    raise UnmappedObject(f"invoice {data.id}: no local user for customer {data.customer_id}")


def _invoice_wins(inv: Any, data: InvoiceData, at: datetime | None, force: bool = False) -> bool:
    """`force` (a sync: what Stripe lists now) settles a missing stamp or a tie, but never
    reopens a paid or void invoice, nor overwrites what a newer event wrote meanwhile
    (the invoice paid between the list and its apply)."""
    stored_at = inv["updated_from_stripe_at"]
    if stored_at is None:
        return True
    if inv["status"] in TERMINAL_INVOICE_STATUSES and data.status not in TERMINAL_INVOICE_STATUSES:
        return False  # a paid or void invoice never reopens: the event is stale
    if inv["status"] == DELETED_INVOICE_STATUS and data.status != DELETED_INVOICE_STATUS:
        return False  # a deleted draft is gone for good
    if at is None:
        return force
    if at != stored_at:
        return at > stored_at
    # Same second: the more final status wins (paid over open/failed).
    return force or (
        INVOICE_STATUS_RANK.get(data.status, 0) >= INVOICE_STATUS_RANK.get(inv["status"], 0)
    )


_INVOICE_STATE = (
    "status",
    "amount_due",
    "amount_paid",
    "number",
    "hosted_invoice_url",
    "invoice_pdf",
    "period_start",
    "period_end",
    "attempt_count",
    "total",
    "amount_remaining",
    "starting_balance",
    "ending_balance",
    "description",
)


def _invoice_values(data: InvoiceData, at: datetime | None, inv: Any) -> dict[str, Any]:
    """The columns `data` (as of `at`) writes over the stored row `inv`."""
    stored_at = inv["updated_from_stripe_at"]
    values: dict[str, Any] = {
        "stripe_subscription_id": data.subscription_id or inv["stripe_subscription_id"],
        "number": data.number or inv["number"],
        "status": data.status,
        "amount_due": data.amount_due,
        "amount_paid": data.amount_paid,
        "currency": data.currency,
        "period_start": data.period_start,
        "period_end": data.period_end,
        "hosted_invoice_url": data.hosted_invoice_url or inv["hosted_invoice_url"],
        "invoice_pdf": data.invoice_pdf or inv["invoice_pdf"],
        # Stripe never lowers it: an event of the same second delivered late (finalized,
        # 0, after the payment_failed, 1) must not hide a failed payment.
        "attempt_count": max(data.attempt_count, inv["attempt_count"] or 0),
        "total": data.total,
        "amount_remaining": data.amount_remaining,
        "starting_balance": data.starting_balance,
        "ending_balance": data.ending_balance,
        # An event without lines (none embedded) keeps the words already stored.
        "description": describe(data.description, data.lines) or inv["description"],
    }
    if data.created is not None:
        values["created_at"] = data.created
    if at is not None:
        values["updated_from_stripe_at"] = at if stored_at is None else max(as_utc(stored_at), at)
    return values


def apply_invoice(
    session: Session, obj: dict[str, Any], at: datetime | None, *, force: bool = False
) -> bool:
    """Upsert a Stripe invoice object seen as of `at`. Returns True when it changed."""
    data = parse_invoice(obj)
    at = _whole_second(at)
    session.flush()  # pending ORM changes first, as an ORM query would (autoflush)
    conn = session.connection()
    row = _first(conn, _INV_LOCK, {"key": data.id})
    if row is None:
        # New: insert it with its final values (or, created concurrently, update theirs).
        blank = {
            "stripe_invoice_id": data.id,
            "user_id": _invoice_user(session, conn, data),
            "stripe_subscription_id": None,
            "number": None,
            "status": data.status,
            "amount_due": 0,
            "amount_paid": 0,
            "currency": data.currency,
            "period_start": None,
            "period_end": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "attempt_count": 0,
            "total": None,
            "amount_remaining": None,
            "starting_balance": None,
            "ending_balance": None,
            "description": None,
            "created_at": data.created or utcnow(),
            "updated_from_stripe_at": None,
        }
        created = _first(
            conn,
            _create_row(conn.dialect.name, _INVOICES, "stripe_invoice_id"),
            {**blank, **_invoice_values(data, at, blank)},
        )
        if created is not None:
            return True
        row = _first(conn, _INV_LOCK, {"key": data.id})
    assert row is not None  # the conflicting row is there and now locked
    inv = row
    if not _invoice_wins(inv, data, at, force):
        return False
    values = _invoice_values(data, at, inv)
    if any(values[k] != inv[k] for k in values):
        driver_rows(conn, _INV_UPDATE, {"row_id": inv["id"], **values})
        _forget_loaded(session, Invoice, inv["id"])
    stored_at = inv["updated_from_stripe_at"]
    return stored_at is None or _state(values, _INVOICE_STATE) != _state(inv, _INVOICE_STATE)


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
            apply_answer(session, _fetch(session, "subscription", data.subscription_id))
    return None


def apply_customer(
    session: Session, obj: dict[str, Any], at: datetime | None, *, force: bool = False
) -> bool:
    """Store a Stripe customer's balance seen as of `at` on its user (newest wins, as
    `_subscription_verdict`; two balances of one second are settled by fetching the
    customer). Returns True when it changed. Caller commits."""
    data = parse_customer(obj)
    at = _whole_second(at)
    user = _user_by_customer(session, data.id)
    if user is None:
        raise UnmappedObject(f"customer {data.id}: no local user")
    if data.balance is None:
        return False  # not a full customer object: nothing to go by
    session.refresh(user, with_for_update=True)  # concurrent deliveries: one at a time
    stored_at = None if user.stripe_balance_at is None else as_utc(user.stripe_balance_at)
    same = (user.stripe_balance, user.stripe_balance_currency) == (data.balance, data.currency)
    if stored_at is not None:
        if at is None or at < stored_at:
            return False
        if at == stored_at and not force:
            if same:
                return False
            if data.balance == user.stripe_balance and None in (
                data.currency,
                user.stripe_balance_currency,
            ):
                # Stripe sets a customer's currency once and never unsets it: the state
                # with one is the later. No need to ask.
                if data.currency is None:
                    return False
            else:
                # Same second, another balance: the delivery order means nothing; ask Stripe.
                fetched = _fetch(session, "customer", data.id)
                return apply_customer(session, fetched, answered_at(fetched), force=True)
    user.stripe_balance = data.balance
    user.stripe_balance_currency = data.currency
    if at is not None:
        user.stripe_balance_at = at
    session.add(user)
    session.flush()
    return not same


def forget_deleted_customer(session: Session, customer_id: Any, at: datetime | None) -> bool:
    """A customer deleted in Stripe (as of `at`): forget it, so the next checkout creates a
    new one, and its credit balance, which went with it (0, not unknown: the invoices'
    ending balance would show that credit again). A later event of the dead customer
    finds no user; an older one, should something link it again, is older than `at`.
    Returns True (it changed). Caller commits."""
    user = _user_by_customer(session, customer_id if isinstance(customer_id, str) else None)
    if user is None:
        raise UnmappedObject(f"customer {customer_id}: no local user")
    session.refresh(user, with_for_update=True)  # as apply_customer: one at a time
    user.stripe_customer_id = None
    user.stripe_balance = 0
    user.stripe_balance_currency = None
    at = _whole_second(at)
    if at is not None:
        stored_at = user.stripe_balance_at
        user.stripe_balance_at = at if stored_at is None else max(as_utc(stored_at), at)
    session.add(user)
    session.flush()
    return True


# ---------------------------------------------------------------- events


def apply_event(session: Session, payload: dict[str, Any]) -> str | None:
    """Apply one event's object. Returns a note when it was deliberately ignored."""
    event = parse_event(payload)
    try:
        if event.type in SUBSCRIPTION_EVENTS:
            apply_subscription(session, event.object, event.created)
        elif event.type == "invoice.deleted":
            # Only drafts are deleted: a tombstone, so no list shows it and no stale event
            # of the draft (delivered after this one) brings it back.
            obj = {**event.object, "status": DELETED_INVOICE_STATUS}
            apply_invoice(session, obj, event.created)
        elif event.type in INVOICE_EVENTS:
            apply_invoice(session, event.object, event.created)
        elif event.type in CHECKOUT_EVENTS:
            _apply_checkout(session, event.object, event.created)
        elif event.type in CUSTOMER_EVENTS:
            apply_customer(session, event.object, event.created)
        elif event.type == "customer.deleted":
            forget_deleted_customer(session, event.object.get("id"), event.created)
        else:
            return f"ignored: {event.type} is not handled"
    except UnmappedObject as err:
        # Not ours (or a customer deleted locally): acknowledge, keep the note for operators.
        log.info("stripe event %s ignored: %s", event.id, err)
        return f"ignored: {err}"
    return None


def _event_row(event: EventData, now: datetime, **state: Any) -> dict[str, Any]:
    """A new StripeEvent row's values, tried once; `state`: processed_at or error."""
    return {
        "stripe_event_id": event.id,
        "type": event.type,
        "created": event.created,
        "payload": event.payload,
        "received_at": now,
        "attempts": 1,
        **state,
    }


def _claim(session: Session, event: EventData, now: datetime) -> int | None:
    """Insert the event row, already marked processed, in a transaction left open for
    applying it: only a commit of both makes it visible. None when its id is stored."""
    conn = session.connection()
    try:
        return _scalar(
            conn, _event_claim(conn.dialect.name), _event_row(event, now, processed_at=now)
        )
    except BaseException:
        session.rollback()
        raise


def _apply_new(session: Session, event: EventData, row_id: int, now: datetime) -> str:
    """Apply a just-claimed event in the claiming transaction, one commit for both.

    On failure nothing of it stays, so the row is stored again unprocessed with the error,
    as the retry path expects. Raises after that.
    """
    try:
        note = apply_event(session, event.payload)
        if note is not None:
            driver_rows(session.connection(), _EVENT_NOTE, {"row_id": row_id, "error": note})
        session.commit()
    except _NeedsFetch:
        session.rollback()  # the claim too: made again once the object is fetched
        raise
    except BaseException as err:
        session.rollback()
        log.warning("applying stripe event %s failed: %s", event.id, err)
        _store_failure(session, event, now, err)
        raise
    return "ignored" if note else "applied"


def _store_failure(session: Session, event: EventData, now: datetime, err: BaseException) -> None:
    text = f"{type(err).__name__}: {err}"[:MAX_ERROR_LENGTH]
    try:
        conn = session.connection()
        stored = _scalar(conn, _event_claim(conn.dialect.name), _event_row(event, now, error=text))
        session.commit()
    except Exception:  # the database itself is failing; the 500 still makes Stripe retry
        session.rollback()
        log.exception("could not record the failure of stripe event %s", event.id)
        return
    if stored is None:  # a concurrent delivery stored it meanwhile
        _record_failure(session, event.id, err)


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
    except _NeedsFetch:
        session.rollback()
        raise
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
    now = utcnow()
    fetched: dict[tuple[str, str], dict[str, Any]] = {}
    session.info[_FETCHED] = fetched
    try:
        for _ in range(MAX_FETCHES + 1):
            try:
                return _deliver(session, event, now)
            except _NeedsFetch as need:
                key = need.key
            try:  # no transaction open: _deliver rolled back
                fetched[key] = _retrieve(*key)
            except Exception as err:
                log.warning("applying stripe event %s failed: %s", event.id, err)
                _store_failure(session, event, now, err)
                return _failed(event, err)
        err = RuntimeError(f"needed more than {MAX_FETCHES} objects from Stripe")
        _store_failure(session, event, now, err)
        return _failed(event, err)
    finally:
        session.info.pop(_FETCHED, None)


def _failed(event: EventData, err: BaseException) -> WebhookResult:
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


def _deliver(session: Session, event: EventData, now: datetime) -> WebhookResult:
    """Claim and apply a verified event; raises _NeedsFetch (rolled back) when applying it
    needs an object from Stripe first."""
    row_id = _claim(session, event, now)  # raises (nothing stored) when the database fails
    if row_id is None:
        try:
            processed_at = _scalar(session.connection(), _EVENT_PROCESSED, {"key": event.id})
        finally:
            session.rollback()
        if processed_at is not None:
            return WebhookResult(200, {"received": True, "duplicate": True})
        # Stored but not processed: an earlier attempt failed: apply it under its lock.
    try:
        if row_id is not None:
            outcome = _apply_new(session, event, row_id, now)
        else:
            outcome = _process(session, event.id)
    except _NeedsFetch:
        raise
    except Exception as err:
        return _failed(event, err)
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


def _customers_to_sync(
    session: Session, user_id: int | None
) -> tuple[list[tuple[int, str, dict[str, Any] | None]], int]:
    """(user id, customer id, the customer as listed, None when not listed) to pull, and
    how many customers were newly linked."""
    gateway = get_gateway()
    linked = 0
    if user_id is not None:
        user = session.get(User, user_id)
        if user is None:
            raise UserNotFound.of(user_id)
        if user.stripe_customer_id:
            customer_id = user.stripe_customer_id
            session.rollback()  # no transaction (on SQLite, the write lock) across Stripe calls
            return [(user_id, customer_id, None)], 0
        # Lost the customer id (e.g. a failed commit after creating it): find it by email.
        for cus in gateway.iter_customers(email=user.email):
            meta = (cus.get("metadata") or {}).get("user_id")
            if str(meta) == str(user_id) and _link_customer(session, user_id, cus["id"]):
                session.commit()
                return [(user_id, cus["id"], cus)], 1
        return [], 0
    pairs: list[tuple[int, str, dict[str, Any] | None]] = []
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
            pairs.append((owner.id, cus["id"], cus))
    # Stripe's list leaves deleted customers out: a linked one it did not list is fetched
    # (a deleted one's canceled subscriptions and its forgetting follow, as for --user).
    listed = {cid for _, cid, _ in pairs}
    for uid, cid in session.exec(
        select(User.id, User.stripe_customer_id).where(col(User.stripe_customer_id).is_not(None))
    ).all():
        if uid is not None and cid and cid not in listed:
            pairs.append((uid, cid, None))
    session.rollback()
    return pairs, linked


def _sync_customer(session: Session, obj: dict[str, Any]) -> bool:
    """A customer as Stripe's API answered it: its balance (not over a newer event's: no
    `force`, so a tie with a stored event asks Stripe again), or its deletion."""
    if obj.get("deleted"):
        return forget_deleted_customer(session, obj.get("id"), answered_at(obj))
    return apply_customer(session, obj, answered_at(obj))


def sync_from_stripe(session: Session, user_id: int | None = None) -> SyncReport:
    """Pull customers (their balances), subscriptions and invoices from Stripe and repair
    local state.

    What Stripe listed wins over whatever webhooks did or did not deliver, but not over an
    event created after the list was served (applied meanwhile). Idempotent.
    """
    gateway = get_gateway()
    pairs, linked = _customers_to_sync(session, user_id)
    subs = subs_changed = invs = invs_changed = balances_changed = 0
    errors: list[str] = []
    for uid, customer_id, cus in pairs:
        try:
            if cus is None:
                cus = gateway.retrieve_customer(customer_id)
            sub_objs = list(gateway.iter_subscriptions(customer_id=customer_id))
            inv_objs = list(gateway.iter_invoices(customer_id=customer_id))
        except Exception as err:
            errors.append(f"customer {customer_id}: {err}")
            continue
        try:
            for obj in sub_objs:
                subs += 1
                subs_changed += apply_answer(session, obj)
            for obj in inv_objs:
                invs += 1
                invs_changed += apply_invoice(session, obj, answered_at(obj), force=True)
            balances_changed += _sync_customer(session, cus)
            refresh_quotas(session, uid)
            session.commit()
        except Exception as err:
            session.rollback()
            errors.append(f"customer {customer_id}: {type(err).__name__}: {err}")
    return SyncReport(
        users=len({uid for uid, _, _ in pairs}),
        customers_linked=linked,
        subscriptions=subs,
        subscriptions_changed=subs_changed,
        invoices=invs,
        invoices_changed=invs_changed,
        balances_changed=balances_changed,
        errors=tuple(errors),
    )


# ---------------------------------------------------------------- grace periods


def _grace_starts() -> Any:
    """When each subscription's grace began (Stripe's move to past_due; older rows: their
    last update), as `enforce_grace_periods` and `next_grace_end` read it."""
    return sa.func.coalesce(col(Subscription.past_due_since), col(Subscription.updated_at))


def enforce_grace_periods(session: Session) -> int:
    """Move users whose past_due grace period is over to free quotas (and back if paid).

    Run periodically (the app's lifespan task); returns how many users' quotas changed.
    """
    grace = timedelta(days=get_settings().past_due_grace_days)
    cutoff = utcnow() - grace
    user_ids = session.exec(
        select(Subscription.user_id)
        .where(Subscription.status == "past_due", _grace_starts() <= cutoff)
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


def next_grace_end(session: Session) -> datetime | None:
    """The earliest grace end still to come, None without one. Ends the read."""
    grace = timedelta(days=get_settings().past_due_grace_days)
    start = session.exec(
        select(sa.func.min(_grace_starts())).where(
            Subscription.status == "past_due", _grace_starts() > utcnow() - grace
        )
    ).one()
    session.rollback()
    return None if start is None else as_utc(start) + grace


def enforce_grace_periods_now() -> int:
    """One pass of `enforce_grace_periods` in its own session (for schedulers)."""
    from billing_app.db import session_scope

    with session_scope() as session:
        return enforce_grace_periods(session)


def _grace_pass() -> tuple[int, datetime | None]:
    """One pass, then the next grace end: what the lifespan task runs."""
    from billing_app.db import session_scope

    with session_scope() as session:
        return enforce_grace_periods(session), next_grace_end(session)


# Past the grace end before waking: a wall clock a little behind the sleep's does not wake
# the task a moment early, for nothing.
GRACE_WAKE_SLACK_SECONDS = 1.0


def grace_wait(next_end: datetime | None, interval_seconds: float) -> float:
    """Seconds until the next pass: just after the next grace end, at most the interval (a
    subscription that falls past_due meanwhile is seen by then)."""
    if next_end is None:
        return interval_seconds
    until = (next_end - utcnow()).total_seconds() + GRACE_WAKE_SLACK_SECONDS
    return min(interval_seconds, max(until, GRACE_WAKE_SLACK_SECONDS))


# session.info key: the grace ends a transaction recorded, to wake the pass after its commit.
_GRACE_ENDS = "billing_app.grace_ends"


def _note_grace_start(session: Session, values: dict[str, Any], stored: Any) -> None:
    """A subscription newly past_due (a new grace start) whose grace is still to end: the
    grace pass may sleep past that end, so wake it once this transaction commits. One
    already over is cut by the quotas refresh in this same transaction."""
    since = values["past_due_since"]
    if values["status"] != "past_due" or since is None or since == stored["past_due_since"]:
        return
    end = as_utc(since) + timedelta(days=get_settings().past_due_grace_days)
    if end > utcnow():
        session.info.setdefault(_GRACE_ENDS, []).append(end)


@sa.event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    ends = session.info.pop(_GRACE_ENDS, None)
    if ends:
        wake_grace_pass(min(ends))


@sa.event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_GRACE_ENDS, None)


class _GraceSleep:
    """The wait between a grace task's passes, cut short by a grace end before it ends."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.woken = asyncio.Event()
        self.until: datetime | None = None  # None during a pass: any new end counts

    def poke(self, end: datetime) -> None:
        """On `self.loop`."""
        if self.until is None or end < self.until:
            self.woken.set()

    async def sleep(self, seconds: float) -> None:
        self.until = utcnow() + timedelta(seconds=seconds)
        try:
            await asyncio.wait_for(self.woken.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self.until = None


# This process's grace tasks (one per worker; a test may run more).
_GRACE_SLEEPS: set[_GraceSleep] = set()
_GRACE_SLEEPS_LOCK = threading.Lock()


def wake_grace_pass(end: datetime) -> None:
    """A grace now ends at `end`: the grace tasks of this process that would sleep past it
    run a pass now (which then waits for that end). Safe from any thread.

    Every worker runs its own task, and a webhook is applied in the worker it reached, so
    waking that worker's task is enough; a change made by another process (`billing-app
    stripe sync`) is seen within the task's interval, as before."""
    with _GRACE_SLEEPS_LOCK:
        sleeps = list(_GRACE_SLEEPS)
    for s in sleeps:
        try:
            s.loop.call_soon_threadsafe(s.poke, end)
        except RuntimeError:  # its loop has closed
            pass


async def grace_period_task(
    interval_seconds: float = GRACE_CHECK_INTERVAL_SECONDS,
    *,
    sleep: Callable[[float], Awaitable[Any]] | None = None,
) -> None:
    """Run `enforce_grace_periods` forever, off the event loop, waking at the earliest grace
    end to come (at most `interval_seconds` apart), or at once when a subscription falls
    past_due in this process with an earlier end (`wake_grace_pass`). Register it as the
    app's lifespan task (Reflex: `app.register_lifespan_task(grace_period_task)`).
    `sleep`: tests' clock (no early wake then)."""
    waits = _GraceSleep()
    with _GRACE_SLEEPS_LOCK:
        _GRACE_SLEEPS.add(waits)
    try:
        while True:
            # Cleared before the pass reads: a wake during it makes the next sleep return.
            waits.woken.clear()
            next_end = None
            try:
                changed, next_end = await asyncio.to_thread(_grace_pass)
                if changed:
                    log.info("past_due grace over: %d user(s) moved to free quotas", changed)
            except Exception as err:  # keep the loop alive; the next pass retries
                down = unavailable(err)
                if down is None:
                    log.exception("enforcing past_due grace periods failed")
                else:  # an outage or an un-migrated database: one line, not a traceback
                    log.warning("enforcing past_due grace periods: %s", down.message)
            wait = grace_wait(next_end, interval_seconds)
            await (sleep or waits.sleep)(wait)
    finally:
        with _GRACE_SLEEPS_LOCK:
            _GRACE_SLEEPS.discard(waits)
