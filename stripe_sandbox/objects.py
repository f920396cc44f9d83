"""Builders for Stripe objects. Every object starts as a deep copy of a template from
``fixtures/`` (trimmed from Stripe's own fixtures3.json), so the shapes match the current API."""

from __future__ import annotations

import calendar
import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from .cards import Card
from .config import Plan

FIXTURES = Path(__file__).parent / "fixtures"


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def template(name: str) -> dict[str, Any]:
    """A fresh, mutable copy of one fixture (e.g. ``"invoice"``, ``"checkout.session"``)."""
    return copy.deepcopy(_load(name))


def list_object(data: list[dict[str, Any]], url: str, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


# --- time helpers -------------------------------------------------------------------------


def add_interval(ts: int, interval: str, count: int = 1) -> int:
    """``ts`` moved by ``count`` billing intervals, clamping the day like Stripe (Jan 31 ->
    Feb 28 -> Mar 31 when counted from the same anchor)."""
    if interval == "day":
        return ts + 86400 * count
    if interval == "week":
        return ts + 7 * 86400 * count
    months = count * (12 if interval == "year" else 1)
    dt = datetime.fromtimestamp(ts, UTC)
    month_index = dt.month - 1 + months
    year, month = dt.year + month_index // 12, month_index % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


# Stripe's minor units are not always cents: none in these (1500 jpy is ¥1,500), three in
# these (12345 kwd is 12.345); as billing_app/services/money.py, which the sandbox does not import.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def money(amount: int, currency: str = "usd") -> str:
    symbols = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}
    sign = "-" if amount < 0 else ""
    cur = currency.lower()
    digits = 0 if cur in ZERO_DECIMAL else 3 if cur in THREE_DECIMAL else 2
    value = f"{Decimal(abs(amount)).scaleb(-digits):,.{digits}f}"
    symbol = symbols.get(currency.lower())
    return f"{sign}{symbol}{value}" if symbol else f"{sign}{value} {currency.upper()}"


def price_label(price: dict[str, Any]) -> str:
    """'$99.00 / month' (or '/ 3 months')."""
    text = money(price["unit_amount"] or 0, price["currency"])
    recurring = price.get("recurring")
    if not recurring:
        return text
    count = recurring.get("interval_count") or 1
    unit = recurring["interval"] if count == 1 else f"{count} {recurring['interval']}s"
    return f"{text} / {unit}"


# --- catalog ------------------------------------------------------------------------------


def product(
    product_id: str, name: str, created: int, *, default_price: str | None = None
) -> dict[str, Any]:
    obj = template("product")
    obj.update(id=product_id, name=name, created=created, updated=created)
    obj["default_price"] = default_price
    return obj


def price(
    price_id: str,
    product_id: str,
    unit_amount: int,
    currency: str,
    interval: str | None,
    created: int,
    *,
    lookup_key: str | None = None,
    nickname: str | None = None,
    interval_count: int = 1,
) -> dict[str, Any]:
    obj = template("price")
    obj.update(
        id=price_id,
        product=product_id,
        unit_amount=unit_amount,
        unit_amount_decimal=str(unit_amount),
        currency=currency,
        created=created,
        lookup_key=lookup_key,
        nickname=nickname,
    )
    if interval:
        obj["recurring"].update(interval=interval, interval_count=interval_count)
    else:
        obj.update(recurring=None, type="one_time")
    return obj


def plan_objects(plan: Plan, created: int) -> tuple[dict[str, Any], dict[str, Any]]:
    prod = product(plan.product_id, plan.product_name, created, default_price=plan.price_id)
    pr = price(
        plan.price_id,
        plan.product_id,
        plan.unit_amount,
        plan.currency,
        plan.interval,
        created,
        lookup_key=plan.lookup_key,
        nickname=plan.product_name,
    )
    return prod, pr


def legacy_plan(price_obj: dict[str, Any]) -> dict[str, Any]:
    """The deprecated ``plan`` view of a recurring price that subscription items still carry."""
    recurring = price_obj["recurring"] or {}
    return {
        "id": price_obj["id"],
        "object": "plan",
        "active": price_obj["active"],
        "amount": price_obj["unit_amount"],
        "amount_decimal": price_obj["unit_amount_decimal"],
        "billing_scheme": price_obj["billing_scheme"],
        "created": price_obj["created"],
        "currency": price_obj["currency"],
        "interval": recurring.get("interval"),
        "interval_count": recurring.get("interval_count", 1),
        "livemode": False,
        "metadata": price_obj["metadata"],
        "meter": None,
        "nickname": price_obj["nickname"],
        "product": price_obj["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": recurring.get("usage_type", "licensed"),
    }


# --- customers and cards ------------------------------------------------------------------


def customer(
    customer_id: str,
    created: int,
    *,
    email: str | None,
    name: str | None,
    metadata: dict[str, str],
    invoice_prefix: str,
    description: str | None = None,
    phone: str | None = None,
) -> dict[str, Any]:
    obj = template("customer")
    obj.update(
        id=customer_id,
        created=created,
        email=email,
        name=name,
        metadata=metadata,
        invoice_prefix=invoice_prefix,
        description=description,
        phone=phone,
    )
    return obj


def payment_method(
    pm_id: str, card: Card, created: int, customer_id: str | None, name: str | None = None
) -> dict[str, Any]:
    obj = template("payment_method")
    obj.update(id=pm_id, created=created, customer=customer_id)
    obj["billing_details"]["name"] = name
    obj["card"].update(
        brand=card.brand,
        display_brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        fingerprint=card.fingerprint,
        networks={"available": [card.brand], "preferred": None},
    )
    return obj


# --- checkout and portal ------------------------------------------------------------------


def checkout_session(session_id: str, created: int, url: str, **fields: Any) -> dict[str, Any]:
    obj = template("checkout.session")
    obj.update(
        id=session_id,
        created=created,
        expires_at=created + 24 * 3600,  # Stripe's default lifetime
        url=url,
        ui_mode="hosted",
        customer_creation="always" if fields.get("customer") is None else None,
    )
    obj.update(fields)
    return obj


def portal_session(
    session_id: str, created: int, customer_id: str, return_url: str | None, url: str
) -> dict[str, Any]:
    obj = template("billing_portal.session")
    obj.update(id=session_id, created=created, customer=customer_id, return_url=return_url, url=url)
    return obj


# --- subscriptions ------------------------------------------------------------------------


def subscription_item(
    item_id: str,
    sub_id: str,
    price_obj: dict[str, Any],
    quantity: int,
    created: int,
    period: tuple[int, int],
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    obj = template("subscription_item")
    obj.update(
        id=item_id,
        subscription=sub_id,
        price=copy.deepcopy(price_obj),
        plan=legacy_plan(price_obj),
        quantity=quantity,
        created=created,
        current_period_start=period[0],
        current_period_end=period[1],
        metadata=metadata or {},
    )
    return obj


def subscription(
    sub_id: str,
    customer_id: str,
    created: int,
    items: list[dict[str, Any]],
    *,
    metadata: dict[str, str],
    status: str,
    currency: str,
    default_payment_method: str | None = None,
    description: str | None = None,
    billing_mode: dict[str, Any] | None = None,
) -> dict[str, Any]:
    obj = template("subscription")
    if billing_mode is not None:
        obj["billing_mode"] = billing_mode
    obj.update(
        id=sub_id,
        customer=customer_id,
        created=created,
        start_date=created,
        billing_cycle_anchor=created,
        metadata=metadata,
        status=status,
        currency=currency,
        default_payment_method=default_payment_method,
        description=description,
    )
    obj["items"] = list_object(items, f"/v1/subscription_items?subscription={sub_id}")
    return obj


# --- invoices -----------------------------------------------------------------------------


def invoice_line(
    line_id: str,
    invoice_id: str,
    *,
    amount: int,
    currency: str,
    description: str,
    period: tuple[int, int],
    quantity: int,
    price_obj: dict[str, Any] | None,
    subscription_id: str | None,
    subscription_item_id: str | None,
    proration: bool = False,
    invoice_item_id: str | None = None,
) -> dict[str, Any]:
    obj = template("invoice_line_item")
    obj.update(
        id=line_id,
        invoice=invoice_id,
        amount=amount,
        subtotal=amount,
        currency=currency,
        description=description,
        period={"start": period[0], "end": period[1]},
        quantity=quantity,
        subscription=subscription_id,
    )
    details = {
        "invoice_item": invoice_item_id,
        "proration": proration,
        "proration_details": {"credited_items": None},
        "subscription": subscription_id,
    }
    if invoice_item_id:  # proration lines come from (pending) invoice items
        obj["parent"] = {
            "type": "invoice_item_details",
            "invoice_item_details": details,
            "subscription_item_details": None,
        }
    else:
        obj["parent"] = {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {**details, "subscription_item": subscription_item_id},
        }
    if price_obj is not None:
        obj["pricing"] = {
            "type": "price_details",
            "price_details": {"price": price_obj["id"], "product": price_obj["product"]},
            "unit_amount_decimal": str(price_obj["unit_amount"]),
        }
    return obj


def invoice(
    invoice_id: str,
    created: int,
    customer_obj: dict[str, Any],
    *,
    currency: str,
    billing_reason: str,
    period: tuple[int, int],
    subscription_id: str | None,
    subscription_metadata: dict[str, str] | None,
) -> dict[str, Any]:
    obj = template("invoice")
    obj.update(
        id=invoice_id,
        created=created,
        customer=customer_obj["id"],
        customer_email=customer_obj["email"],
        customer_name=customer_obj["name"],
        currency=currency,
        billing_reason=billing_reason,
        period_start=period[0],
        period_end=period[1],
    )
    obj["lines"]["url"] = f"/v1/invoices/{invoice_id}/lines"
    if subscription_id:
        obj["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": dict(subscription_metadata or {}),
                "subscription": subscription_id,
            },
        }
    return obj


def set_invoice_lines(inv: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    inv["lines"]["data"] = lines
    total = sum(line["amount"] for line in lines)
    due = max(total, 0)  # a net credit goes to the customer's balance, never a negative invoice
    inv.update(
        subtotal=total,
        subtotal_excluding_tax=total,
        total=total,
        total_excluding_tax=total,
        amount_due=due,
        amount_remaining=due - inv["amount_paid"],
    )


# --- events -------------------------------------------------------------------------------


def event(
    event_id: str,
    type_: str,
    created: int,
    obj: dict[str, Any],
    *,
    api_version: str,
    previous_attributes: dict[str, Any] | None,
    request_id: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    evt = template("event")
    evt.update(id=event_id, type=type_, created=created, api_version=api_version)
    evt["data"] = {"object": copy.deepcopy(obj)}
    if previous_attributes is not None:
        evt["data"]["previous_attributes"] = copy.deepcopy(previous_attributes)
    evt["request"] = {"id": request_id, "idempotency_key": idempotency_key}
    return evt


def previous_attributes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What Stripe puts in ``data.previous_attributes``: the old values of changed top-level
    fields; plain nested hashes (metadata, cancellation_details, ...) only list changed keys,
    while Stripe objects and lists (``items``) are given whole."""
    diff: dict[str, Any] = {}
    for key in after.keys() | before.keys():
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and "object" not in old:
            diff[key] = {k: old.get(k) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        else:
            diff[key] = copy.deepcopy(old)
    return diff
