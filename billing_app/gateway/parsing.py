"""Reading Stripe objects (plain dicts) into small typed records.

Pure functions, no `stripe` import: webhook payloads, API responses and replayed events all
go through here. Both the current API shapes and the older ones are read:

- `current_period_start/end` live on `subscription.items.data[]` (current) or on the
  subscription itself (before 2025-03-31.basil);
- an invoice names its subscription under `parent.subscription_details.subscription`
  (current) or `invoice.subscription` (older).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Subscription statuses after which Stripe never changes the status again.
TERMINAL_SUBSCRIPTION_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Invoice statuses, by how final they are: a later state never goes back to an earlier one.
# "deleted": a draft Stripe deleted (invoice.deleted), kept as a tombstone that no list shows
# and no stale event of the draft brings back.
INVOICE_STATUS_RANK = {
    "draft": 0,
    "open": 1,
    "uncollectible": 2,
    "paid": 3,
    "void": 3,
    "deleted": 4,
}
TERMINAL_INVOICE_STATUSES = frozenset({"paid", "void", "deleted"})
DELETED_INVOICE_STATUS = "deleted"


class StripeAnswer(dict[str, Any]):
    """An object as Stripe's API answered it, with the moment it answered on Stripe's own
    clock (its `Date` header, whole seconds): what orders the answer against webhook
    events' `created`, which the app's clock (skewed by seconds or minutes) cannot."""

    def __init__(self, obj: dict[str, Any], served_at: datetime | None) -> None:
        super().__init__(obj)
        self.served_at = served_at


def served_at(obj: Any) -> datetime | None:
    """Stripe's moment of an API answer; None for a plain dict (no `Date` to go by)."""
    return getattr(obj, "served_at", None)


class MalformedObject(ValueError):
    """A Stripe object lacks a field the app needs (id, status, ...)."""


def ts(value: Any) -> datetime | None:
    """A Stripe unix timestamp as aware UTC; None for null/absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(int(value), UTC)
    if isinstance(value, str) and value.isdigit():
        return datetime.fromtimestamp(int(value), UTC)
    return None


def ref_id(value: Any) -> str | None:
    """An id field that may be a string or an expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def metadata_user_id(metadata: Any) -> int | None:
    """`metadata.user_id` as a positive int, else None (Stripe metadata values are strings)."""
    if not isinstance(metadata, dict):
        return None
    raw = metadata.get("user_id")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if raw > 0 else None
    if isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
        return value if value > 0 else None
    return None


def _require_str(obj: dict[str, Any], key: str, kind: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedObject(f"{kind} object has no {key!r}")
    return value


@dataclass(frozen=True)
class SubscriptionData:
    id: str
    customer_id: str | None
    status: str
    price_id: str | None
    item_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    # When Stripe will cancel it (null: not scheduled). The customer portal sets only this.
    cancel_at: datetime | None
    canceled_at: datetime | None
    ended_at: datetime | None
    created: datetime | None
    user_id: int | None  # from metadata.user_id
    amount: int | None
    currency: str | None
    # The moment its periods are stepped from (a month's day past its end clamps to the
    # last day, and the next period returns to the anchor's day).
    billing_cycle_anchor: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_SUBSCRIPTION_STATUSES


def _item_price(item: dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(item.get("price"), dict):
        return item["price"]
    if isinstance(item.get("plan"), dict):
        return item["plan"]  # very old shape: a legacy plan object
    return None


def _plan_item(items: Any, plan_prices: Collection[str]) -> dict[str, Any]:
    """The item on one of `plan_prices` (others are add-ons), else the first one."""
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    for item in items:
        if ref_id(_item_price(item)) in plan_prices:
            return item
    return items[0] if items else {}


def parse_subscription(obj: dict[str, Any], plan_prices: Collection[str] = ()) -> SubscriptionData:
    """`plan_prices`: the plan catalog's price ids; the item on one of them is the plan
    (the price, item id, amount and period read), whatever its position among the items."""
    if not isinstance(obj, dict):
        raise MalformedObject("subscription is not an object")
    sub_id = _require_str(obj, "id", "subscription")
    status = _require_str(obj, "status", "subscription")
    item = _plan_item((obj.get("items") or {}).get("data"), plan_prices)
    price = _item_price(item)
    if price is None and isinstance(obj.get("plan"), dict):
        price = obj["plan"]  # single-plan subscriptions before items existed
    # Current shape on the item; older one on the subscription.
    start = ts(item.get("current_period_start")) or ts(obj.get("current_period_start"))
    end = ts(item.get("current_period_end")) or ts(obj.get("current_period_end"))
    amount = None
    if price is not None:
        raw_amount = price.get("unit_amount", price.get("amount"))
        if isinstance(raw_amount, int) and not isinstance(raw_amount, bool):
            amount = raw_amount * int(item.get("quantity") or 1)
    return SubscriptionData(
        id=sub_id,
        customer_id=ref_id(obj.get("customer")),
        status=status,
        price_id=ref_id(price) if price is not None else None,
        item_id=item.get("id") if isinstance(item.get("id"), str) else None,
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        cancel_at=ts(obj.get("cancel_at")),
        canceled_at=ts(obj.get("canceled_at")),
        ended_at=ts(obj.get("ended_at")),
        created=ts(obj.get("created")),
        user_id=metadata_user_id(obj.get("metadata")),
        amount=amount,
        billing_cycle_anchor=ts(obj.get("billing_cycle_anchor")),
        currency=(price or {}).get("currency") or obj.get("currency"),
    )


@dataclass(frozen=True)
class InvoiceLineData:
    """One invoice line, as much as says what it bills for."""

    price_id: str | None
    amount: int
    proration: bool
    description: str | None


@dataclass(frozen=True)
class InvoiceData:
    id: str
    customer_id: str | None
    subscription_id: str | None
    number: str | None
    status: str
    amount_due: int
    amount_paid: int
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    created: datetime | None
    user_id: int | None  # from the subscription's metadata copied onto the invoice
    attempt_count: int = 0  # payment attempts made (failed ones while it stays open)
    # None when the object lacks them: a negative total is a credit to the balance.
    total: int | None = None
    amount_remaining: int | None = None
    starting_balance: int | None = None
    ending_balance: int | None = None
    # The invoice's own description (a memo: null on subscription invoices) and its lines
    # (the first page Stripe embeds), from which services name what it bills for.
    description: str | None = None
    lines: tuple[InvoiceLineData, ...] = ()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_proration(line: dict[str, Any]) -> bool:
    parent = line.get("parent") if isinstance(line.get("parent"), dict) else {}
    for key in ("subscription_item_details", "invoice_item_details"):
        details = parent.get(key)
        if isinstance(details, dict) and details.get("proration"):
            return True
    return bool(line.get("proration"))  # the older shape


def _line_price(line: dict[str, Any]) -> str | None:
    """The line's price: `pricing.price_details.price` (current), else `price` (older)."""
    pricing = line.get("pricing") if isinstance(line.get("pricing"), dict) else {}
    details = pricing.get("price_details")
    if isinstance(details, dict) and ref_id(details.get("price")):
        return ref_id(details.get("price"))
    return ref_id(line.get("price")) or ref_id(line.get("plan"))


def _lines(lines: Any) -> tuple[InvoiceLineData, ...]:
    data = lines.get("data") if isinstance(lines, dict) else None
    out = []
    for line in data if isinstance(data, list) else ():
        if not isinstance(line, dict):
            continue
        text = line.get("description")
        out.append(
            InvoiceLineData(
                price_id=_line_price(line),
                amount=_int(line.get("amount")),
                proration=_is_proration(line),
                description=text.strip() or None if isinstance(text, str) else None,
            )
        )
    return tuple(out)


def _lines_period(lines: Any) -> tuple[datetime, datetime] | None:
    """What an invoice bills for: its lines' periods, earliest start to latest end, the
    plan's own lines before prorations. The invoice's period_start/end is when its items
    were gathered (zero-length on a first or plan-change invoice, the month before on a
    renewal), not what it pays for."""
    data = lines.get("data") if isinstance(lines, dict) else None
    spans: dict[bool, list[tuple[datetime, datetime]]] = {False: [], True: []}
    for line in data if isinstance(data, list) else ():
        period = line.get("period") if isinstance(line, dict) else None
        if isinstance(period, dict):
            start, end = ts(period.get("start")), ts(period.get("end"))
            if start is not None and end is not None:
                spans[_is_proration(line)].append((start, end))
    chosen = spans[False] or spans[True]
    if not chosen:
        return None
    return min(s for s, _ in chosen), max(e for _, e in chosen)


def parse_invoice(obj: dict[str, Any]) -> InvoiceData:
    if not isinstance(obj, dict):
        raise MalformedObject("invoice is not an object")
    inv_id = _require_str(obj, "id", "invoice")
    status = _require_str(obj, "status", "invoice")
    parent = obj.get("parent") if isinstance(obj.get("parent"), dict) else {}
    details = parent.get("subscription_details")
    details = details if isinstance(details, dict) else {}
    sub_id = ref_id(details.get("subscription")) or ref_id(obj.get("subscription"))
    user_id = metadata_user_id(details.get("metadata")) or metadata_user_id(
        obj.get("subscription_details", {}).get("metadata")
        if isinstance(obj.get("subscription_details"), dict)
        else None
    )
    lines = _lines_period(obj.get("lines"))
    return InvoiceData(
        id=inv_id,
        customer_id=ref_id(obj.get("customer")),
        subscription_id=sub_id,
        number=obj.get("number") if isinstance(obj.get("number"), str) else None,
        status=status,
        amount_due=_int(obj.get("amount_due")),
        amount_paid=_int(obj.get("amount_paid")),
        currency=str(obj.get("currency") or "usd")[:3].lower(),
        period_start=lines[0] if lines else ts(obj.get("period_start")),
        period_end=lines[1] if lines else ts(obj.get("period_end")),
        hosted_invoice_url=obj.get("hosted_invoice_url") or None,
        invoice_pdf=obj.get("invoice_pdf") or None,
        created=ts(obj.get("created")),
        user_id=user_id,
        attempt_count=max(_int(obj.get("attempt_count")), 0),
        total=_opt_int(obj.get("total")),
        amount_remaining=_opt_int(obj.get("amount_remaining")),
        starting_balance=_opt_int(obj.get("starting_balance")),
        ending_balance=_opt_int(obj.get("ending_balance")),
        description=(
            obj["description"].strip() or None if isinstance(obj.get("description"), str) else None
        ),
        lines=_lines(obj.get("lines")),
    )


@dataclass(frozen=True)
class CheckoutSessionData:
    id: str
    customer_id: str | None
    subscription_id: str | None
    client_reference_id: str | None
    user_id: int | None
    status: str | None
    payment_status: str | None
    mode: str | None
    url: str | None


def parse_checkout_session(obj: dict[str, Any]) -> CheckoutSessionData:
    if not isinstance(obj, dict):
        raise MalformedObject("checkout.session is not an object")
    ref = obj.get("client_reference_id")
    # The user a session is for: the app's own sessions carry it in metadata (which only
    # the API sets) and as client_reference_id. A Payment Link takes client_reference_id
    # from its URL, so that alone names nobody.
    user_id = metadata_user_id(obj.get("metadata"))
    if user_id is not None and isinstance(ref, str) and ref.strip() != str(user_id):
        user_id = None
    return CheckoutSessionData(
        id=_require_str(obj, "id", "checkout.session"),
        customer_id=ref_id(obj.get("customer")),
        subscription_id=ref_id(obj.get("subscription")),
        client_reference_id=ref if isinstance(ref, str) else None,
        user_id=user_id,
        status=obj.get("status"),
        payment_status=obj.get("payment_status"),
        mode=obj.get("mode"),
        url=obj.get("url"),
    )


@dataclass(frozen=True)
class CustomerData:
    id: str
    balance: int | None  # minor units; negative: a credit the next invoices use first
    currency: str | None  # None until the customer's first invoice or balance change


def parse_customer(obj: dict[str, Any]) -> CustomerData:
    if not isinstance(obj, dict):
        raise MalformedObject("customer is not an object")
    currency = obj.get("currency")
    return CustomerData(
        id=_require_str(obj, "id", "customer"),
        balance=_opt_int(obj.get("balance")),
        currency=currency[:3].lower() if isinstance(currency, str) and currency else None,
    )


@dataclass(frozen=True)
class EventData:
    id: str
    type: str
    created: datetime | None
    object: dict[str, Any]
    payload: dict[str, Any]


def parse_event(payload: Any) -> EventData:
    """A webhook or listed event; raises MalformedObject when it is not one."""
    if not isinstance(payload, dict):
        raise MalformedObject("event is not a JSON object")
    event_id = payload.get("id")
    event_type = payload.get("type")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise MalformedObject("event has no valid 'id'")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 128:
        raise MalformedObject("event has no valid 'type'")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise MalformedObject("event has no 'data.object'")
    return EventData(event_id, event_type, ts(payload.get("created")), obj, payload)
