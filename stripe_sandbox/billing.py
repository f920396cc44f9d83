"""What Stripe Billing does: customers and cards, invoices and payments, subscriptions.
Checkout/portal sessions live in checkout.py, time-based behaviour in clock.py.

Every function expects to be called with ``st.lock`` held (the API layer does that) and emits
events in the order Stripe sends them. Each event carries a snapshot of the object at that
moment, so e.g. ``invoice.created`` shows a draft and ``invoice.paid`` a paid invoice.
"""

from __future__ import annotations

import copy
import secrets
from datetime import UTC, datetime
from typing import Any

from . import objects
from .cards import Card, attach_error
from .config import API_VERSION
from .errors import StripeError, card_declined, missing_param, no_such
from .params import apply_metadata, as_bool, as_dict, as_int, as_list
from .store import SandboxState

DAY = 86400
# Stripe's default retry schedule for failed subscription payments: attempts 2, 3 and 4 come
# 3, 5 and 7 days after the previous one; after the last failure the subscription is canceled.
RETRY_DELAYS = (3 * DAY, 5 * DAY, 7 * DAY)
INCOMPLETE_LIFETIME = 23 * 3600  # an unpaid first invoice expires the subscription after 23 h
LIVE_STATUSES = ("active", "past_due", "trialing", "unpaid")
PRORATION_BEHAVIORS = ("create_prorations", "none", "always_invoice")
PAYMENT_BEHAVIORS = (
    "allow_incomplete",
    "default_incomplete",
    "error_if_incomplete",
    "pending_if_incomplete",
)
BILLING_MODES = ("classic", "flexible")


def default_billing_mode(api_version: str) -> str:
    """Stripe makes new subscriptions flexible from API 2025-09-30.clover on (classic before)."""
    return "flexible" if api_version[:10] >= "2025-09-30" else "classic"


# For the version the sandbox reports (stripe-python's pin): flexible.
DEFAULT_BILLING_MODE = default_billing_mode(API_VERSION)
# cancel_at helpers (API 2025-07-30.basil): the earliest / latest item period end.
CANCEL_AT_ENUMS = ("min_period_end", "max_period_end")


def _date(ts: int) -> str:
    """As Stripe writes it in a proration line: "07 Dec 2026"."""
    return datetime.fromtimestamp(ts, UTC).strftime("%d %b %Y")


# --- customers and cards ------------------------------------------------------------------


def create_customer(st: SandboxState, params: dict[str, Any]) -> dict[str, Any]:
    cus = objects.customer(
        st.new_id("cus"),
        st.now(),
        email=params.get("email") or None,
        name=params.get("name") or None,
        description=params.get("description") or None,
        phone=params.get("phone") or None,
        metadata=apply_metadata({}, as_dict(params.get("metadata"), "metadata")),
        invoice_prefix=secrets.token_hex(4).upper(),
    )
    st.customers[cus["id"]] = cus
    st.emit("customer.created", cus)
    if pm_id := params.get("payment_method"):
        _attach_existing(st, cus, pm_id, "payment_method")
    return cus


def update_customer(st: SandboxState, cus_id: str, params: dict[str, Any]) -> dict[str, Any]:
    before = st.get(st.customers, cus_id, "customer")
    cus = copy.deepcopy(before)  # edit a copy: a validation error must not leave half an update
    for field in ("email", "name", "description", "phone"):
        if field in params:
            cus[field] = params[field] or None
    if "balance" in params:  # Stripe's own parameter: an admin's credit (negative) or debit
        cus["balance"] = as_int(params["balance"], "balance") or 0
    if "metadata" in params:
        raw = params["metadata"]
        cus["metadata"] = {} if raw == "" else apply_metadata(cus["metadata"], as_dict(raw, "m"))
    settings = as_dict(params.get("invoice_settings"), "invoice_settings")
    if "default_payment_method" in settings:
        pm_id = settings["default_payment_method"] or None
        if pm_id is not None:
            pm = st.get(
                st.payment_methods,
                pm_id,
                "PaymentMethod",
                param="invoice_settings[default_payment_method]",
                status=400,
            )
            if pm["customer"] != cus_id:
                raise StripeError(
                    "The customer does not have a payment method with the ID "
                    f"{pm_id}. The payment method must be attached to the customer.",
                    param="invoice_settings[default_payment_method]",
                    code="resource_missing",
                )
        cus["invoice_settings"]["default_payment_method"] = pm_id
    st.customers[cus_id] = cus
    if cus != before:
        st.emit("customer.updated", cus, objects.previous_attributes(before, cus))
    return cus


def delete_customer(st: SandboxState, cus_id: str) -> dict[str, Any]:
    cus = st.get(st.customers, cus_id, "customer")
    for sub in list(st.subscriptions.values()):
        if sub["customer"] == cus_id and sub["status"] not in ("canceled", "incomplete_expired"):
            cancel_subscription(st, sub["id"], {})
    del st.customers[cus_id]
    st.deleted_customers.add(cus_id)
    st.emit("customer.deleted", cus)
    return {"id": cus_id, "object": "customer", "deleted": True}


def attach_card(
    st: SandboxState,
    cus: dict[str, Any],
    card: Card,
    name: str | None = None,
    *,
    allow_declined: bool = False,
) -> dict[str, Any]:
    """Save a card as the customer's default payment method (payment_method.attached,
    customer.updated). Cards that Stripe declines even when saving raise a card_error, unless
    ``allow_declined`` (the test-only control endpoint)."""
    if not allow_declined and (error := attach_error(card)):
        raise error
    pm = objects.payment_method(st.new_id("pm"), card, st.now(), cus["id"], name)
    pm["billing_details"]["email"] = cus["email"]
    st.payment_methods[pm["id"]] = pm
    st.cards_internal[pm["id"]] = card
    st.emit("payment_method.attached", pm)
    set_default_pm(st, cus, pm["id"])
    return pm


def _attach_existing(st: SandboxState, cus: dict[str, Any], pm_id: str, param: str) -> None:
    pm = st.get(st.payment_methods, pm_id, "PaymentMethod", param=param, status=400)
    pm["customer"] = cus["id"]
    st.emit("payment_method.attached", pm)
    set_default_pm(st, cus, pm_id)


def set_default_pm(st: SandboxState, cus: dict[str, Any], pm_id: str) -> None:
    before = copy.deepcopy(cus)
    cus["invoice_settings"]["default_payment_method"] = pm_id
    if cus != before:
        st.emit("customer.updated", cus, objects.previous_attributes(before, cus))


def update_default_card(
    st: SandboxState,
    cus_id: str,
    card: Card,
    name: str | None = None,
    *,
    allow_declined: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """New default card (portal "Update card"), then, like Stripe, retry the open invoices of
    past_due / incomplete subscriptions. Returns the payment method and the retried invoices."""
    cus = st.get(st.customers, cus_id, "customer")
    pm = attach_card(st, cus, card, name, allow_declined=allow_declined)
    return pm, retry_open_invoices(st, cus_id)


def retry_open_invoices(st: SandboxState, cus_id: str) -> list[dict[str, Any]]:
    retried = []
    for inv in list(st.invoices.values()):
        sub = invoice_subscription(st, inv)
        if (
            inv["customer"] == cus_id
            and inv["status"] == "open"
            and sub is not None
            and sub["status"] in ("past_due", "incomplete", "unpaid")
        ):
            collect(st, inv)
            retried.append(inv)
    return retried


def payment_card(st: SandboxState, cus_id: str, sub: dict[str, Any] | None) -> Card | None:
    """The card a charge would use: the subscription's default, else the customer's."""
    pm_id = sub.get("default_payment_method") if sub else None
    if not pm_id and cus_id in st.customers:
        pm_id = st.customers[cus_id]["invoice_settings"]["default_payment_method"]
    return st.cards_internal.get(pm_id) if pm_id else None


# --- invoices -----------------------------------------------------------------------------


def invoice_subscription(st: SandboxState, inv: dict[str, Any]) -> dict[str, Any] | None:
    parent = inv.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return st.subscriptions.get(details.get("subscription") or "")


def new_invoice(
    st: SandboxState,
    sub: dict[str, Any],
    billing_reason: str,
    period: tuple[int, int],
    lines: list[dict[str, Any]],
) -> dict[str, Any]:
    """A draft subscription invoice (no event yet: callers emit in Stripe's order)."""
    cus = st.customers[sub["customer"]]
    inv = objects.invoice(
        st.new_id("in"),
        st.now(),
        cus,
        currency=sub["currency"],
        billing_reason=billing_reason,
        period=period,
        subscription_id=sub["id"],
        subscription_metadata=sub["metadata"],
    )
    built = [
        objects.invoice_line(
            st.new_id("il"),
            inv["id"],
            amount=spec["amount"],
            currency=sub["currency"],
            description=spec["description"],
            period=spec["period"],
            quantity=spec["quantity"],
            price_obj=spec["price"],
            subscription_id=sub["id"],
            subscription_item_id=spec.get("subscription_item"),
            proration=spec.get("proration", False),
            invoice_item_id=spec.get("invoice_item"),
        )
        for spec in lines
    ]
    objects.set_invoice_lines(inv, built)
    st.invoices[inv["id"]] = inv
    sub["latest_invoice"] = inv["id"]
    return inv


def finalize(st: SandboxState, inv: dict[str, Any]) -> None:
    """draft -> open: number, hosted URLs, customer credit applied (invoice.finalized)."""
    now = st.now()
    cus = st.customers.get(inv["customer"])
    before = None if cus is None else copy.deepcopy(cus)
    if cus is not None:
        inv["starting_balance"] = cus["balance"]
        if inv["total"] < 0:  # a net credit (e.g. a downgrade) goes to the customer balance
            cus["balance"] += inv["total"]
        elif cus["balance"] < 0:  # existing credit pays (part of) this invoice
            applied = min(-cus["balance"], inv["amount_due"])
            cus["balance"] += applied
            inv["amount_due"] -= applied
            inv["amount_remaining"] = inv["amount_due"]
        inv["ending_balance"] = cus["balance"]
        cus["next_invoice_sequence"] += 1
    inv.update(
        status="open",
        number=st.next_invoice_number(),
        hosted_invoice_url=st.url(f"/invoice/{inv['id']}"),
        invoice_pdf=st.url(f"/invoice/{inv['id']}/pdf"),
        effective_at=now,
    )
    inv["status_transitions"]["finalized_at"] = now
    st.emit("invoice.finalized", inv)
    if cus is not None and before is not None and cus["balance"] != before["balance"]:
        # Stripe tells a balance change (credit applied or added) with customer.updated.
        st.emit("customer.updated", cus, objects.previous_attributes(before, cus))


def open_invoice(st: SandboxState, inv: dict[str, Any]) -> None:
    st.emit("invoice.created", inv)
    finalize(st, inv)


def _mark_paid(st: SandboxState, inv: dict[str, Any], *, charged: bool) -> None:
    now = st.now()
    inv.update(
        status="paid",
        amount_paid=inv["amount_due"],
        amount_remaining=0,
        next_payment_attempt=None,
        attempted=inv["attempted"] or charged,
        attempt_count=inv["attempt_count"] + (1 if charged else 0),
    )
    inv["status_transitions"]["paid_at"] = now
    st.emit("invoice.paid", inv)
    st.emit("invoice.payment_succeeded", inv)


def collect(st: SandboxState, inv: dict[str, Any], card: Card | None = None) -> bool:
    """Charge an open invoice with the customer's card. Success: invoice.paid +
    invoice.payment_succeeded. Failure: invoice.payment_failed + invoice.updated, and a next
    retry is scheduled (subscription renewals only). Subscription status follows."""
    if inv["status"] != "open":
        return inv["status"] == "paid"
    sub = invoice_subscription(st, inv)
    if inv["amount_due"] == 0:
        _mark_paid(st, inv, charged=False)
        _after_payment(st, sub, inv, paid=True)
        return True
    card = card or payment_card(st, inv["customer"], sub)
    if card is not None and card.charge_error() is None:
        _mark_paid(st, inv, charged=True)
        _after_payment(st, sub, inv, paid=True)
        return True
    before = copy.deepcopy(inv)
    inv["attempted"] = True
    inv["attempt_count"] += 1
    retry_index = inv["attempt_count"] - 1
    if inv["billing_reason"] != "subscription_create" and retry_index < len(RETRY_DELAYS):
        inv["next_payment_attempt"] = st.now() + RETRY_DELAYS[retry_index]
    else:
        inv["next_payment_attempt"] = None
    st.emit("invoice.payment_failed", inv)
    st.emit("invoice.updated", inv, objects.previous_attributes(before, inv))
    _after_payment(st, sub, inv, paid=False)
    return False


def _after_payment(
    st: SandboxState, sub: dict[str, Any] | None, inv: dict[str, Any], *, paid: bool
) -> None:
    if sub is None:
        return
    cus = st.customers.get(sub["customer"])
    if paid:
        other_open = any(
            i["status"] == "open" and invoice_subscription(st, i) is sub
            for i in st.invoices.values()
        )
        if sub["status"] in ("past_due", "incomplete", "unpaid") and not other_open:
            _set_status(st, sub, "active")
        if cus is not None and cus["delinquent"] and not other_open:
            cus["delinquent"] = False
        return
    if cus is not None:
        cus["delinquent"] = True
    if sub["status"] == "active" and inv["billing_reason"] != "subscription_create":
        _set_status(st, sub, "past_due")
    elif (
        sub["status"] == "past_due"
        and inv["next_payment_attempt"] is None
        and inv["billing_reason"] != "subscription_create"
    ):
        # All retries failed: Stripe's default is to cancel the subscription.
        cancel_subscription(st, sub["id"], {}, reason="payment_failed")


def _set_status(st: SandboxState, sub: dict[str, Any], status: str) -> None:
    before = copy.deepcopy(sub)
    sub["status"] = status
    st.emit("customer.subscription.updated", sub, objects.previous_attributes(before, sub))


def pay_invoice(st: SandboxState, inv_id: str, params: dict[str, Any]) -> dict[str, Any]:
    inv = st.get(st.invoices, inv_id, "invoice")
    if inv["status"] == "paid":
        raise StripeError("Invoice is already paid", code="invoice_already_paid")
    if inv["status"] == "void":
        raise StripeError("You cannot pay a voided invoice.", code="invoice_not_editable")
    if inv["status"] == "draft":
        finalize(st, inv)
    if as_bool(params.get("paid_out_of_band"), "paid_out_of_band"):
        _mark_paid(st, inv, charged=False)
        _after_payment(st, invoice_subscription(st, inv), inv, paid=True)
        return inv
    card = None
    if pm_id := params.get("payment_method"):
        st.get(st.payment_methods, pm_id, "PaymentMethod", param="payment_method", status=400)
        card = st.cards_internal.get(pm_id)
    card = card or payment_card(st, inv["customer"], invoice_subscription(st, inv))
    if card is None and inv["amount_due"] > 0:
        raise StripeError(
            "This customer has no attached payment source or default payment method. "
            "Please consider adding a default payment method.",
            code="invoice_no_payment_method_types",
        )
    if not collect(st, inv, card):
        raise (card.charge_error() if card else None) or card_declined()
    return inv


def void_invoice(st: SandboxState, inv_id: str) -> dict[str, Any]:
    inv = st.get(st.invoices, inv_id, "invoice")
    if inv["status"] != "open":
        raise StripeError(
            f"You can only void open invoices. This invoice is {inv['status']}.",
            code="invoice_not_editable",
        )
    before = copy.deepcopy(inv)
    inv.update(status="void", amount_remaining=0, next_payment_attempt=None)
    inv["status_transitions"]["voided_at"] = st.now()
    st.emit("invoice.voided", inv)
    st.emit("invoice.updated", inv, objects.previous_attributes(before, inv))
    return inv


# --- subscriptions ------------------------------------------------------------------------


def _price(st: SandboxState, price_id: Any, param: str) -> dict[str, Any]:
    if not price_id:
        raise missing_param(param)
    price = st.get(st.prices, str(price_id), "price", param=param, status=400)
    if not price["active"]:
        raise StripeError(
            f"The price specified is inactive. This field only accepts active prices. ({param})",
            param=param,
        )
    if not price["recurring"]:
        raise StripeError(
            f"The price specified is set to `type=one_time` but this field only accepts prices "
            f"with `type=recurring`. ({param})",
            param=param,
        )
    return price


def item_specs(st: SandboxState, raw: Any, param: str) -> list[tuple[dict, int, dict]]:
    specs = []
    for i, item in enumerate(as_list(raw, param)):
        item = as_dict(item, f"{param}[{i}]")
        price = _price(st, item.get("price"), f"{param}[{i}][price]")
        quantity = as_int(item.get("quantity"), f"{param}[{i}][quantity]")
        quantity = 1 if quantity is None else quantity
        if quantity < 1:
            raise StripeError(
                "This value must be greater than or equal to 1.",
                param=f"{param}[{i}][quantity]",
            )
        specs.append((price, quantity, as_dict(item.get("metadata"), "metadata")))
    if not specs:
        raise missing_param(param)
    _check_same_interval([s[0] for s in specs], param)
    return specs


def _check_same_interval(prices: list[dict[str, Any]], param: str) -> None:
    keys = {
        (p["currency"], p["recurring"]["interval"], p["recurring"]["interval_count"])
        for p in prices
    }
    if len(keys) > 1:
        raise StripeError(
            "Currency and interval fields must match across all plans on this subscription.",
            param=param,
        )


def line_for_item(item: dict[str, Any], st: SandboxState) -> dict[str, Any]:
    price, qty = item["price"], item["quantity"]
    name = st.products.get(price["product"], {}).get("name", price["id"])
    return {
        "amount": price["unit_amount"] * qty,
        "description": f"{qty} × {name} (at {objects.price_label(price)})",
        "period": (item["current_period_start"], item["current_period_end"]),
        "quantity": qty,
        "price": price,
        "subscription_item": item["id"],
    }


def period_of(sub: dict[str, Any]) -> tuple[int, int]:
    item = sub["items"]["data"][0]
    return item["current_period_start"], item["current_period_end"]


def interval_of(sub: dict[str, Any]) -> tuple[str, int]:
    recurring = sub["items"]["data"][0]["price"]["recurring"]
    return recurring["interval"], recurring["interval_count"]


def create_subscription(
    st: SandboxState,
    cus_id: str,
    items: list[tuple[dict, int, dict]],
    *,
    metadata: dict[str, str],
    payment_behavior: str = "allow_incomplete",
    default_payment_method: str | None = None,
    description: str | None = None,
    cancel_at_period_end: bool = False,
    cancel_at: int | str | None = None,
    billing_mode: dict[str, Any] | None = None,
    customer_param: str = "customer",
) -> dict[str, Any]:
    """customer.subscription.created, then invoice.created / .finalized and the payment
    outcome (invoice.paid + invoice.payment_succeeded, or invoice.payment_failed)."""
    cus = st.get(st.customers, cus_id, "customer", param=customer_param, status=400)
    if default_payment_method:
        pm = st.get(
            st.payment_methods,
            default_payment_method,
            "PaymentMethod",
            param="default_payment_method",
            status=400,
        )
        if pm["customer"] != cus_id:
            raise StripeError(
                "The payment method must be attached to the customer.",
                param="default_payment_method",
            )
    now = st.now()
    sub_id = st.new_id("sub")
    card = payment_card(st, cus_id, {"default_payment_method": default_payment_method})
    will_pay = card is not None and card.charge_error() is None
    if payment_behavior == "error_if_incomplete" and not will_pay:
        if card is None:
            raise StripeError(
                "This customer has no attached payment source or default payment method.",
                code="resource_missing",
            )
        raise card.charge_error() or card_declined()
    interval, count = (
        items[0][0]["recurring"]["interval"],
        items[0][0]["recurring"]["interval_count"],
    )
    period = (now, objects.add_interval(now, interval, count))
    sub_items = [
        objects.subscription_item(st.new_id("si"), sub_id, price, qty, now, period, meta)
        for price, qty, meta in items
    ]
    incomplete = payment_behavior == "default_incomplete" or not will_pay
    sub = objects.subscription(
        sub_id,
        cus_id,
        now,
        sub_items,
        metadata=metadata,
        status="incomplete" if incomplete else "active",
        currency=items[0][0]["currency"],
        default_payment_method=default_payment_method,
        description=description,
        billing_mode=billing_mode or billing_mode_object(DEFAULT_BILLING_MODE, now),
    )
    if cancel_at_period_end:
        _schedule_cancel(sub, now)
    elif cancel_at is not None:
        _schedule_cancel_at(sub, _resolve_cancel_at(cancel_at, sub), now)
    st.subscriptions[sub_id] = sub
    st.subscription_internal[sub_id] = {"anchor": now, "cycle": 0, "pending": []}
    if cus["currency"] is None:
        # Stripe tells it, as any change to the customer, with customer.updated.
        before = copy.deepcopy(cus)
        cus["currency"] = sub["currency"]
        st.emit("customer.updated", cus, objects.previous_attributes(before, cus))
    inv = new_invoice(
        st, sub, "subscription_create", (now, now), [line_for_item(i, st) for i in sub_items]
    )
    st.emit("customer.subscription.created", sub)
    open_invoice(st, inv)
    if payment_behavior != "default_incomplete":
        collect(st, inv, card)
    return sub


def create_subscription_from_params(st: SandboxState, params: dict[str, Any]) -> dict[str, Any]:
    cus_id = params.get("customer")
    if not cus_id:
        raise missing_param("customer")
    behavior = params.get("payment_behavior") or "allow_incomplete"
    if behavior not in PAYMENT_BEHAVIORS:
        raise StripeError(f"Invalid payment_behavior: {behavior}", param="payment_behavior")
    if params.get("trial_period_days") or params.get("trial_end"):
        raise StripeError(
            "Trials are not supported by the Stripe sandbox.", param="trial_period_days"
        )
    cancel_at_period_end = bool(as_bool(params.get("cancel_at_period_end"), "c"))
    cancel_at = cancel_at_param(params, st.now(), cancel_at_period_end)
    return create_subscription(
        st,
        cus_id,
        item_specs(st, params.get("items"), "items"),
        metadata=apply_metadata({}, as_dict(params.get("metadata"), "metadata")),
        payment_behavior="allow_incomplete" if behavior == "pending_if_incomplete" else behavior,
        default_payment_method=params.get("default_payment_method") or None,
        description=params.get("description") or None,
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=None if cancel_at is _UNSET else cancel_at,
        billing_mode=billing_mode_param(params.get("billing_mode"), "billing_mode", st.now()),
    )


def billing_mode_object(
    mode: str, now: int, flexible: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A subscription's ``billing_mode`` as Stripe shows it; ``updated_at`` is when a flexible
    mode was adopted (here: at creation, the sandbox has no migrate endpoint)."""
    if mode == "classic":
        return {"flexible": None, "type": "classic"}
    options = {"proration_discounts": (flexible or {}).get("proration_discounts") or "included"}
    return {"flexible": options, "type": "flexible", "updated_at": now}


def billing_mode_param(raw: Any, param: str, now: int) -> dict[str, Any] | None:
    """``billing_mode[type]`` (+ ``[flexible][proration_discounts]``) of a create request;
    None when not given (the default applies)."""
    if raw is None:
        return None
    spec = as_dict(raw, param)
    mode = spec.get("type")
    if not mode:
        raise missing_param(f"{param}[type]")
    if mode not in BILLING_MODES:
        raise StripeError(
            f"Invalid {param}[type]: must be one of {', '.join(BILLING_MODES)}",
            param=f"{param}[type]",
        )
    flexible = as_dict(spec.get("flexible"), f"{param}[flexible]")
    discounts = flexible.get("proration_discounts")
    if discounts not in (None, "", "included", "itemized"):
        raise StripeError(
            f"Invalid {param}[flexible][proration_discounts]: must be one of included, itemized",
            param=f"{param}[flexible][proration_discounts]",
        )
    return billing_mode_object(mode, now, flexible)


_UNSET: Any = object()


def cancel_at_param(params: dict[str, Any], now: int, cancel_at_period_end: bool | None) -> Any:
    """The ``cancel_at`` parameter, validated: _UNSET when absent, None for "" (clear it), an
    enum name (resolved once the periods are known) or a Unix timestamp in the future."""
    raw = params.get("cancel_at", _UNSET)
    if raw is _UNSET or raw is None:
        return _UNSET
    if raw == "":
        return None
    if cancel_at_period_end:
        # Stripe: the cancel_at_period_end parameter is not compatible with cancel_at.
        raise StripeError(
            "You may only specify one of these parameters: cancel_at, cancel_at_period_end.",
            param="cancel_at",
        )
    if raw in CANCEL_AT_ENUMS:
        return raw
    if raw == "max_billed_until":
        raise StripeError(
            "cancel_at=max_billed_until (billing schedules) is not supported by the Stripe "
            "sandbox.",
            param="cancel_at",
        )
    try:
        ts = int(raw)
    except (TypeError, ValueError):
        raise StripeError(
            f"Invalid cancel_at: must be a Unix timestamp or one of {', '.join(CANCEL_AT_ENUMS)}",
            param="cancel_at",
        ) from None
    # The clock never runs behind a period start, so "in the future" also means "not before
    # the current period start", Stripe's other bound.
    if ts <= now:
        raise StripeError(
            "Invalid timestamp: must be an integer Unix timestamp in the future.",
            param="cancel_at",
        )
    return ts


def _resolve_cancel_at(value: int | str, sub: dict[str, Any]) -> int:
    if isinstance(value, int):
        return value
    ends = [item["current_period_end"] for item in sub["items"]["data"]]
    return min(ends) if value == "min_period_end" else max(ends)


def _schedule_cancel(sub: dict[str, Any], now: int) -> None:
    sub.update(cancel_at_period_end=True, cancel_at=period_of(sub)[1], canceled_at=now)
    sub["cancellation_details"]["reason"] = "cancellation_requested"


def _schedule_cancel_at(sub: dict[str, Any], cancel_at: int, now: int) -> None:
    """A cancellation at a fixed time: cancel_at set, cancel_at_period_end false (Stripe clears
    one when the other is set). canceled_at is when it was requested."""
    if (sub["cancel_at"], sub["cancel_at_period_end"]) != (cancel_at, False):
        sub.update(cancel_at_period_end=False, cancel_at=cancel_at, canceled_at=now)
    sub["cancellation_details"]["reason"] = "cancellation_requested"


def _unschedule_cancel(sub: dict[str, Any]) -> None:
    sub.update(cancel_at_period_end=False, cancel_at=None, canceled_at=None)
    sub["cancellation_details"]["reason"] = None


def _proration_lines(
    st: SandboxState,
    item: dict[str, Any],
    old: tuple[dict[str, Any], int] | None,
    new: tuple[dict[str, Any], int] | None,
    now: int,
) -> list[dict[str, Any]]:
    """Credit for the unused time of ``old`` and a charge for the rest of the period on ``new``
    (each as Stripe describes them: "Remaining time on Pro after 07 Dec 2026", a quantity
    other than 1 written "2 × Pro"), pro rata to the second."""
    start, end = item["current_period_start"], item["current_period_end"]
    if end <= start or now >= end:
        return []
    fraction = (end - max(now, start)) / (end - start)
    lines = []
    for sign, label, pair in ((-1, "Unused time on", old), (1, "Remaining time on", new)):
        if pair is None:
            continue
        price, qty = pair
        name = st.products.get(price["product"], {}).get("name", price["id"])
        what = name if qty == 1 else f"{qty} × {name}"
        lines.append(
            {
                "amount": sign * round(price["unit_amount"] * qty * fraction),
                "description": f"{label} {what} after {_date(now)}",
                "period": (now, end),
                "quantity": qty,
                "price": price,
                "subscription_item": item["id"],
                "proration": True,
                "invoice_item": st.new_id("ii"),
            }
        )
    return lines


def _raise_unless_paid_now(st: SandboxState, sub: dict[str, Any], lines: list[dict]) -> None:
    """payment_behavior=error_if_incomplete: the card error (402) when the invoice these
    lines make would have an amount due that the customer's card does not pay."""
    total = sum(line["amount"] for line in lines)
    cus = st.customers.get(sub["customer"])
    credit = -min(cus["balance"], 0) if cus is not None else 0  # applied first, as finalize
    if max(total, 0) - min(credit, max(total, 0)) <= 0:
        return
    card = payment_card(st, sub["customer"], sub)
    if card is None:
        raise StripeError(
            "This customer has no attached payment source or default payment method.",
            code="resource_missing",
        )
    if (error := card.charge_error()) is not None:
        raise error


def update_subscription(st: SandboxState, sub_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Plan/quantity changes (with prorations), scheduled cancellation (cancel_at_period_end or
    cancel_at: a timestamp, min/max_period_end, or "" to clear), metadata, default card.
    Emits customer.subscription.updated with previous_attributes, then any invoice events.

    payment_behavior, for an invoice the update makes now: allow_incomplete (default) charges
    it and the subscription goes past_due when that fails; error_if_incomplete raises the
    card error instead and changes nothing; default_incomplete leaves it open (past_due until
    paid). pending_if_incomplete (pending updates) is refused: the sandbox has none.
    """
    sub = st.get(st.subscriptions, sub_id, "subscription")
    allowed_when_ended = {"metadata", "cancellation_details", "expand"}
    if sub["status"] in ("canceled", "incomplete_expired") and set(params) - allowed_when_ended:
        raise StripeError(
            "A canceled subscription can only update its cancellation_details and metadata.",
        )
    behavior = params.get("proration_behavior") or "create_prorations"
    if behavior not in PRORATION_BEHAVIORS:
        raise StripeError(
            f"Invalid proration_behavior: must be one of {', '.join(PRORATION_BEHAVIORS)}",
            param="proration_behavior",
        )
    payment_behavior = params.get("payment_behavior") or "allow_incomplete"
    if payment_behavior not in PAYMENT_BEHAVIORS:
        raise StripeError(
            f"Invalid payment_behavior: must be one of {', '.join(PAYMENT_BEHAVIORS)}",
            param="payment_behavior",
        )
    if payment_behavior == "pending_if_incomplete":
        raise StripeError(
            "payment_behavior=pending_if_incomplete (pending updates) is not supported by the "
            "Stripe sandbox.",
            param="payment_behavior",
        )
    now = st.now()
    before, sub = sub, copy.deepcopy(sub)  # edit a copy; committed once everything validated
    internal = st.subscription_internal[sub_id]
    prorations: list[dict[str, Any]] = []
    items = sub["items"]["data"]
    old_interval = interval_of(sub)

    for i, spec in enumerate(as_list(params.get("items"), "items")):
        spec = as_dict(spec, f"items[{i}]")
        if item_id := spec.get("id"):
            item = next((it for it in items if it["id"] == item_id), None)
            if item is None:
                raise no_such("subscription_item", item_id, param=f"items[{i}][id]", status=400)
            old = (item["price"], item["quantity"])
            if as_bool(spec.get("deleted"), f"items[{i}][deleted]"):
                if len(items) == 1:
                    raise StripeError(
                        "A subscription must have at least one active plan. To cancel a "
                        "subscription, send a DELETE request to /v1/subscriptions/{id}.",
                        param=f"items[{i}][deleted]",
                    )
                prorations += _proration_lines(st, item, old, None, now)
                items.remove(item)
                continue
            price = _price(st, spec["price"], f"items[{i}][price]") if spec.get("price") else old[0]
            qty = as_int(spec.get("quantity"), f"items[{i}][quantity]") or old[1]
            if (price["id"], qty) != (old[0]["id"], old[1]):
                prorations += _proration_lines(st, item, old, (price, qty), now)
                item.update(
                    price=copy.deepcopy(price), plan=objects.legacy_plan(price), quantity=qty
                )
            if "metadata" in spec:
                item["metadata"] = apply_metadata(item["metadata"], as_dict(spec["metadata"], "m"))
        else:
            price = _price(st, spec.get("price"), f"items[{i}][price]")
            if any(it["price"]["id"] == price["id"] for it in items):
                raise StripeError(
                    f"Cannot add multiple subscription items with the same price: {price['id']}",
                    param=f"items[{i}][price]",
                )
            qty = as_int(spec.get("quantity"), f"items[{i}][quantity]") or 1
            start, end = period_of(sub)
            item = objects.subscription_item(
                st.new_id("si"),
                sub_id,
                price,
                qty,
                now,
                (start, end),
                as_dict(spec.get("metadata"), "metadata"),
            )
            items.append(item)
            prorations += _proration_lines(st, item, None, (price, qty), now)
    if params.get("items") is not None:
        _check_same_interval([it["price"] for it in items], "items")

    if "metadata" in params:
        raw = params["metadata"]
        sub["metadata"] = {} if raw == "" else apply_metadata(sub["metadata"], as_dict(raw, "m"))
    if "description" in params:
        sub["description"] = params["description"] or None
    if "default_payment_method" in params:
        pm_id = params["default_payment_method"] or None
        if pm_id:
            st.get(
                st.payment_methods,
                pm_id,
                "PaymentMethod",
                param="default_payment_method",
                status=400,
            )
        sub["default_payment_method"] = pm_id
    details = as_dict(params.get("cancellation_details"), "cancellation_details")
    for key in ("comment", "feedback"):
        if key in details:
            sub["cancellation_details"][key] = details[key] or None
    cancel_flag = as_bool(params.get("cancel_at_period_end"), "cancel_at_period_end")
    cancel_at = cancel_at_param(params, now, cancel_flag)

    new_cycle = interval_of(sub) != old_interval
    lines: list[dict[str, Any]] | None = None  # an invoice made now
    if new_cycle:
        # A new interval restarts the billing cycle now and is invoiced at once (like Stripe):
        # credit for the old plan's unused time plus the first period of the new one.
        interval, count = interval_of(sub)
        period = (now, objects.add_interval(now, interval, count))
        for item in items:
            item.update(current_period_start=period[0], current_period_end=period[1])
        sub["billing_cycle_anchor"] = now
        credits = [line for line in prorations if line["amount"] < 0]
        lines = internal["pending"] + credits + [line_for_item(it, st) for it in items]
    elif prorations and behavior == "always_invoice":
        lines = internal["pending"] + prorations

    # After the items, so an enum cancel_at takes the period end this same request sets.
    if cancel_at is None and cancel_flag is not True and sub["cancel_at"] is not None:
        _unschedule_cancel(sub)  # cancel_at="" undoes either form
    if cancel_flag is True and not sub["cancel_at_period_end"]:
        _schedule_cancel(sub, now)  # also replaces a fixed cancel_at
    elif cancel_flag is False and sub["cancel_at_period_end"]:
        _unschedule_cancel(sub)
    if cancel_at is not _UNSET and cancel_at is not None:
        _schedule_cancel_at(sub, _resolve_cancel_at(cancel_at, sub), now)
    if sub["cancel_at_period_end"]:
        sub["cancel_at"] = period_of(sub)[1]  # follows a period that a new interval restarted
    if lines is not None and payment_behavior == "error_if_incomplete":
        _raise_unless_paid_now(st, sub, lines)  # before anything is stored or emitted

    st.subscriptions[sub_id] = sub
    invoice = None
    if lines is not None:
        if new_cycle:
            internal.update(anchor=now, cycle=0)
        internal["pending"] = []
        invoice = new_invoice(st, sub, "subscription_update", (now, now), lines)
    elif prorations and behavior == "create_prorations":
        internal["pending"] += prorations  # billed with the next renewal invoice

    if sub != before:
        st.emit("customer.subscription.updated", sub, objects.previous_attributes(before, sub))
    if invoice is not None:
        open_invoice(st, invoice)
        if payment_behavior != "default_incomplete":
            collect(st, invoice)
        elif invoice["amount_due"] > 0 and sub["status"] == "active":
            _set_status(st, sub, "past_due")  # awaits the customer's confirmation
        else:
            collect(st, invoice)  # nothing to pay: settled at once
    return sub


def cancel_subscription(
    st: SandboxState, sub_id: str, params: dict[str, Any], *, reason: str = "cancellation_requested"
) -> dict[str, Any]:
    """Immediate cancel (DELETE /v1/subscriptions/{id}): customer.subscription.deleted."""
    sub = st.get(st.subscriptions, sub_id, "subscription")
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise StripeError(
            f"This subscription has already ended (status {sub['status']}): '{sub_id}'",
        )
    now = st.now()
    details = as_dict(params.get("cancellation_details"), "cancellation_details")
    sub.update(status="canceled", canceled_at=now, ended_at=now, cancel_at=None)
    sub["cancellation_details"].update(
        reason=reason,
        comment=details.get("comment") or sub["cancellation_details"]["comment"],
        feedback=details.get("feedback") or sub["cancellation_details"]["feedback"],
    )
    st.subscription_internal[sub_id]["pending"] = []
    stop_retries(st, sub)
    st.emit("customer.subscription.deleted", sub)
    return sub


def stop_retries(st: SandboxState, sub: dict[str, Any]) -> None:
    """Automatic payment retries stop once the subscription has ended."""
    for inv in st.invoices.values():
        if inv["status"] == "open" and invoice_subscription(st, inv) is sub:
            inv["next_payment_attempt"] = None
