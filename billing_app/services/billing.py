"""Starting and changing subscriptions: Checkout, the customer portal, plan changes, cancel.

Stripe is the source of truth: these functions ask Stripe to act, then write what Stripe
answered (webhooks confirm the same state later, and the ordering rules make that a no-op).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from billing_app.clock import as_utc, utcnow
from billing_app.errors import (
    CardDeclined,
    Conflict,
    CustomerGone,
    NoBillingAccount,
    PaymentProviderError,
    ValidationFailed,
)
from billing_app.gateway import get_gateway
from billing_app.gateway.parsing import MalformedObject, parse_subscription, ref_id
from billing_app.models import Subscription, User
from billing_app.plans import PAID_PLAN_KEYS, Plan, get_catalog, plan_price_ids
from billing_app.services.dto import HeldDTO, SubscriptionDTO
from billing_app.services.stripe_sync import UnknownPrice, apply_answer
from billing_app.services.subscriptions import (
    HELD_STATUSES,
    LIVE_STATUSES,
    current_subscription,
    ends_at,
    held_subscription,
    held_words,
    to_subscription_dto,
)
from billing_app.services.users import get_user
from billing_app.settings import get_settings

log = logging.getLogger(__name__)

# Where Stripe sends the browser back to (the dashboard's billing page).
BILLING_PATH = "/billing"
NO_ACCOUNT_MESSAGE = "You have no billing account yet; choose a plan first."


def _paid_plan(plan_key: Any) -> Plan:
    catalog = get_catalog()
    if not isinstance(plan_key, str) or plan_key not in catalog:
        raise ValidationFailed(
            f"Unknown plan {plan_key!r}; choose one of: {', '.join(PAID_PLAN_KEYS)}.",
            field="plan",
        )
    plan = catalog[plan_key]
    if plan_key not in PAID_PLAN_KEYS or not plan.stripe_price_id:
        raise ValidationFailed(
            f"The {plan.name} plan cannot be bought; choose one of: {', '.join(PAID_PLAN_KEYS)}.",
            field="plan",
        )
    return plan


def _bucket(now: datetime, minutes: int = 10) -> str:
    """A time window for idempotency keys: repeats inside it replay, later ones are new."""
    return f"{now:%Y%m%d%H}{now.minute // minutes:02d}"


def _live(session: Session, user_id: int) -> Subscription | None:
    sub = current_subscription(session, user_id)
    return sub if sub is not None and sub.status in LIVE_STATUSES else None


def held_message(held: HeldDTO | None) -> str:
    """Why Checkout is refused beside a held subscription, and what to do instead."""
    if held is None:
        name, (why, pays), invoice = "", held_words(None), "its open invoice"
    else:
        name = held.plan_name + " "
        why, pays = held_words(held.status)
        invoice = "its open invoice" + (f" {held.invoice_number}" if held.invoice_number else "")
        if held.hosted_invoice_url:
            invoice += f" ({held.hosted_invoice_url})"
    return (
        f"Your {name}subscription {why}: a new subscription would be billed on top "
        f"of it. Pay {invoice} to {pays}, or cancel that subscription in Manage "
        "subscription (the Stripe customer portal), then choose a plan."
    )


def _refuse_if_live(session: Session, user_id: int) -> None:
    live = _live(session, user_id)
    if live is not None:
        current = get_catalog().get(live.plan)
        raise Conflict(
            f"You already subscribe to the {current.name if current else live.plan} plan. "
            "To change plans, use Manage subscription (the Stripe customer portal).",
            plan=live.plan,
        )


def _refuse_if_held(session: Session, user_id: int, *, confirm: bool = True) -> None:
    """Refuse beside a held subscription. `confirm`: ask Stripe first whether it still is
    (its webhook may be lost: Stripe expired an `incomplete` one, or it was paid), and go on
    as Stripe's state implies."""
    held = held_subscription(session, user_id)
    if held is not None and confirm:
        held = _still_held(session, user_id, held)
        if held is None:
            _refuse_if_live(session, user_id)  # e.g. paid meanwhile: active
    if held is not None:
        raise Conflict(held_message(held), plan=held.plan, status=held.status)


def _still_held(session: Session, user_id: int, held: HeldDTO) -> HeldDTO | None:
    """`held` as Stripe has it now: each held row Stripe says moved on is updated from
    Stripe's answer (as `stripe sync` would), then the next one is asked about; the first
    one Stripe still holds, else None. held_subscription ended its read: no transaction is
    open across the Stripe calls."""
    asked: set[str] = set()
    while held is not None and held.stripe_subscription_id not in asked | {""}:
        asked.add(held.stripe_subscription_id)
        try:
            obj = get_gateway().retrieve_subscription(held.stripe_subscription_id)
        except PaymentProviderError as err:
            log.warning("held %s not confirmed with Stripe: %s", held.stripe_subscription_id, err)
            return held  # refused on what this database says, as before
        if obj.get("status") == held.status:
            return held
        try:
            apply_answer(session, obj)
            session.commit()
        except (MalformedObject, UnknownPrice) as err:
            session.rollback()
            log.warning("held %s not updated from Stripe: %s", held.stripe_subscription_id, err)
            return held
        held = held_subscription(session, user_id)  # ends its read, too
    return held


def ensure_customer(session: Session, user: User, replaces: str | None = None) -> str:
    """The user's Stripe customer id, creating the customer (metadata user_id) if needed;
    `replaces`: the customer Stripe no longer has, which this one follows."""
    if user.stripe_customer_id:
        return user.stripe_customer_id
    assert user.id is not None
    customer = get_gateway().create_customer(
        user_id=user.id, email=user.email, name=user.display_name or None, replaces=replaces
    )
    user.stripe_customer_id = customer["id"]
    session.add(user)
    session.commit()
    return customer["id"]


def create_checkout_session(session: Session, user_id: int, plan_key: str) -> str:
    """Start Stripe Checkout for a paid plan; returns the URL to redirect the browser to."""
    plan = _paid_plan(plan_key)
    user = get_user(session, user_id)
    _refuse_if_live(session, user_id)
    _refuse_if_held(session, user_id)
    base = get_settings().app_url.rstrip("/") + BILLING_PATH
    assert plan.stripe_price_id is not None

    def checkout(customer_id: str) -> dict[str, Any]:
        return get_gateway().create_checkout_session(
            user_id=user_id,
            customer_id=customer_id,
            price_id=plan.stripe_price_id,
            plan_key=plan.key,
            success_url=base + "?checkout=success&session_id={CHECKOUT_SESSION_ID}",
            cancel_url=base + "?checkout=canceled",
            bucket=_bucket(utcnow()),
        )

    had_customer = bool(user.stripe_customer_id)
    customer_id = ensure_customer(session, user)
    if had_customer:
        _refuse_if_stripe_has_live(session, user_id, customer_id)
    try:
        started = checkout(customer_id)
    except CustomerGone:
        # Deleted in Stripe, and its customer.deleted event not applied (or undone by an
        # older event delivered after it): a new customer, as for a first checkout.
        forget_customer(session, user)
        customer_id = ensure_customer(session, user, replaces=customer_id)
        started = checkout(customer_id)
    session.rollback()
    try:
        get_gateway().expire_other_checkouts(customer_id=customer_id, keep=started["id"])
    except PaymentProviderError as err:
        # The new page works; an earlier one stays payable until Stripe expires it.
        log.warning("earlier checkouts of %s not expired: %s", customer_id, err)
    return started["url"]


def _refuse_if_stripe_has_live(session: Session, user_id: int, customer_id: str) -> None:
    """A paid Checkout whose webhook has not arrived yet: Stripe has the subscription, this
    database not yet. Another Checkout would be a second subscription, charged on top of the
    first: pull it in now and refuse. So too for one held by an open invoice (HELD_STATUSES),
    whose payment would bill it beside the new one."""
    session.rollback()  # nothing pending; no transaction (SQLite: its write lock) across the call
    try:
        found = [
            obj
            for obj in get_gateway().iter_subscriptions(customer_id=customer_id)
            if obj.get("status") in LIVE_STATUSES + HELD_STATUSES
        ]
    except CustomerGone:
        return  # the caller's checkout makes a new customer
    if not found:
        return
    from billing_app.services.stripe_sync import sync_from_stripe

    sync_from_stripe(session, user_id)
    if not any(obj.get("status") in LIVE_STATUSES for obj in found):
        _refuse_if_held(session, user_id, confirm=False)  # just synced from Stripe
        raise Conflict(held_message(None))  # not synced (a plan this app does not know)
    raise Conflict(
        "You already have an active subscription: your payment went through and shows on "
        "this page in a moment. To change plans, use Manage subscription."
    )


def forget_customer(session: Session, user: User) -> None:
    """Drop the user's Stripe customer, which Stripe no longer has, and its credit balance,
    which went with it (as stripe_sync.forget_deleted_customer)."""
    user.stripe_customer_id = None
    user.stripe_balance = 0
    user.stripe_balance_currency = None
    session.add(user)
    session.commit()


def create_portal_session(session: Session, user_id: int) -> str:
    """A Stripe customer portal URL (switch plan, cancel, update card, invoices)."""
    user = get_user(session, user_id)
    if not user.stripe_customer_id:
        raise NoBillingAccount(NO_ACCOUNT_MESSAGE)
    try:
        portal = get_gateway().create_portal_session(
            user_id=user_id,
            customer_id=user.stripe_customer_id,
            # Marked, so the page can say what changed there (states.billing).
            return_url=get_settings().app_url.rstrip("/") + BILLING_PATH + "?portal=return",
            bucket=_bucket(utcnow(), minutes=1),
        )
    except CustomerGone:
        forget_customer(session, user)
        raise NoBillingAccount(NO_ACCOUNT_MESSAGE) from None
    session.rollback()
    return portal["url"]


def _version(sub: Subscription) -> str:
    """Names the local state a change starts from (part of its idempotency key)."""
    stamp = sub.updated_from_stripe_at.isoformat() if sub.updated_from_stripe_at else "new"
    return f"{sub.stripe_price_id}@{stamp}"


def _refresh_from(session: Session, obj: dict[str, Any]) -> SubscriptionDTO:
    """Write what Stripe answered (the freshest state there is) and return it."""
    # Stamped with Stripe's moment of the answer, not the app's clock: an event of a later
    # second applies, an older one does not, however far the two clocks are apart.
    apply_answer(session, obj)
    session.commit()
    stored = session.exec(
        select(Subscription).where(
            Subscription.stripe_subscription_id == parse_subscription(obj).id
        )
    ).one()
    dto = to_subscription_dto(stored)
    session.rollback()
    return dto


def change_plan(session: Session, user_id: int, plan_key: str) -> SubscriptionDTO:
    """Move the user's live subscription to another paid plan, prorated; never a second one.

    Upgrades are invoiced at once and must be paid then: a declined card raises CardDeclined
    (402) and nothing changes. Downgrades credit the unused time on the next invoice.
    """
    plan = _paid_plan(plan_key)
    get_user(session, user_id)
    sub = _live(session, user_id)
    if sub is None:
        raise NoBillingAccount(
            "You have no active subscription to change; choose a plan to start one."
        )
    if sub.plan == plan.key:
        return to_subscription_dto(sub)
    gateway = get_gateway()
    remote = gateway.retrieve_subscription(sub.stripe_subscription_id)
    data = parse_subscription(remote, plan_price_ids())  # swap the plan's item, not an add-on
    if data.status not in LIVE_STATUSES or data.item_id is None:
        _refresh_from(session, remote)
        raise Conflict("Your subscription is no longer active; choose a plan to start a new one.")
    if data.price_id == plan.stripe_price_id:
        return _refresh_from(session, remote)
    stored_start = sub.current_period_start
    if data.current_period_start is not None and (
        stored_start is None or as_utc(stored_start) != data.current_period_start
    ):
        # A renewal whose webhook is still on its way: record the period as it began (on
        # the current plan) before the change, so the change is mid-period, not a new one's.
        apply_answer(session, remote)
    current = get_catalog().get(sub.plan)
    upgrade = current is None or plan.amount > current.amount
    assert plan.stripe_price_id is not None
    # A plan change undoes a scheduled cancel, the portal's (`cancel_at` alone) too.
    clear_cancel_at = data.cancel_at is not None and not data.cancel_at_period_end
    if not upgrade:
        updated = gateway.change_subscription_price(
            subscription_id=sub.stripe_subscription_id,
            item_id=data.item_id,
            price_id=plan.stripe_price_id,
            proration_behavior="create_prorations",
            version=_version(sub),
            clear_cancel_at=clear_cancel_at,
        )
        return _refresh_from(session, updated)
    # Stripe keeps a declined request's 402 under its idempotency key: naming the card that
    # pays and the minute lets a retry with a new card (or a minute later) really run.
    version = f"{_version(sub)}:{_payer(remote)}:{_bucket(utcnow(), minutes=1)}"
    try:
        # error_if_incomplete: an unpaid upgrade is refused (402) and nothing changes, rather
        # than moving to the new price as past_due (whose grace would grant the new plan).
        updated = gateway.change_subscription_price(
            subscription_id=sub.stripe_subscription_id,
            item_id=data.item_id,
            price_id=plan.stripe_price_id,
            proration_behavior="always_invoice",
            payment_behavior="error_if_incomplete",
            version=version,
            clear_cancel_at=clear_cancel_at,
        )
    except CardDeclined as err:
        session.rollback()
        name = current.name if current is not None else sub.plan
        raise CardDeclined(
            f"{err.message} Your plan is unchanged (still {name}); update your card in the "
            f"billing portal, then try the {plan.name} plan again.",
            **err.details,
        ) from err
    return _refresh_from(session, updated)


def _payer(remote: dict[str, Any]) -> str:
    """The payment method Stripe would charge for this subscription (its own, else its
    customer's default), or "none"."""
    own = ref_id(remote.get("default_payment_method"))
    if own:
        return own
    customer_id = ref_id(remote.get("customer"))
    if not customer_id:
        return "none"
    customer = get_gateway().retrieve_customer(customer_id)
    settings = customer.get("invoice_settings") or {}
    return ref_id(settings.get("default_payment_method")) or "none"


def cancel_subscription(
    session: Session, user_id: int, *, at_period_end: bool = True
) -> SubscriptionDTO:
    """Cancel the live subscription: at the period end (default, quotas stay until then) or
    now (quotas fall back to free at once)."""
    get_user(session, user_id)
    sub = _live(session, user_id)
    if sub is None:
        raise NoBillingAccount("You have no active subscription to cancel.")
    gateway = get_gateway()
    if at_period_end:
        end, period_end = ends_at(sub), sub.current_period_end
        if sub.cancel_at_period_end or (
            end is not None and (period_end is None or end <= as_utc(period_end))
        ):
            return to_subscription_dto(sub)  # already ends by then (flag or `cancel_at`)
        obj = gateway.set_cancel_at_period_end(
            subscription_id=sub.stripe_subscription_id, cancel=True, version=_version(sub)
        )
    else:
        obj = gateway.cancel_subscription_now(sub.stripe_subscription_id)
    return _refresh_from(session, obj)


def resume_subscription(session: Session, user_id: int) -> SubscriptionDTO:
    """Undo a scheduled cancel before it happens: one made with cancel_at_period_end (ours)
    or with only `cancel_at` (the customer portal's, or an API date)."""
    get_user(session, user_id)
    sub = _live(session, user_id)
    if sub is None:
        raise NoBillingAccount("You have no active subscription to resume.")
    gateway = get_gateway()
    if sub.cancel_at_period_end:
        # Clears Stripe's `cancel_at` (the period's end) along with the flag.
        obj = gateway.set_cancel_at_period_end(
            subscription_id=sub.stripe_subscription_id, cancel=False, version=_version(sub)
        )
    elif sub.cancel_at is not None:
        # The flag is already false: only unsetting `cancel_at` resumes it.
        obj = gateway.clear_cancel_at(
            subscription_id=sub.stripe_subscription_id, version=_version(sub)
        )
    else:
        return to_subscription_dto(sub)
    return _refresh_from(session, obj)
