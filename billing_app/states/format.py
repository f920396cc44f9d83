"""Pure formatting helpers: DTO values to the short strings the pages show."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing_app.clock import as_utc
from billing_app.services.money import minor_digits, to_decimal

# The badge of an open invoice whose payment failed (services.invoices.failed_payment_filter)
# and the admin's filter that lists them.
PAYMENT_FAILED = "Payment failed"

_CURRENCY_SIGNS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


# A negative amount's sign: the minus sign (U+2212), not the hyphen-minus, as typeset money
# reads ("−$5.00"). CSV exports keep the hyphen a spreadsheet parses.
MINUS = "\u2212"


def money(amount: int | None, currency: str | None = "usd") -> str:
    """Minor units to "$19.00", "¥1,500" or "19.00 SEK" (no sign known); negative
    amounts lead with a minus sign: "−$5.00", "−19.00 SEK"."""
    if amount is None:
        return "—"
    cur = (currency or "usd").lower()
    minus = MINUS if amount < 0 else ""
    value = f"{to_decimal(abs(amount), cur):,.{minor_digits(cur)}f}"
    sign = _CURRENCY_SIGNS.get(cur)
    return f"{minus}{sign}{value}" if sign else f"{minus}{value} {cur.upper()}"


def number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _moment(value: datetime | str | None, pattern: str) -> str:
    """`value` (a datetime or its ISO text) in UTC by `pattern`; empty for None, and text
    that is not ISO as it came."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return as_utc(value).strftime(pattern)


def date(value: datetime | str | None) -> str:
    """ "Nov 25, 2026"; empty for None."""
    return _moment(value, "%b %-d, %Y")


def date_time(value: datetime | str | None) -> str:
    """ "Nov 25, 2026, 14:03 UTC": a moment, said in UTC; empty for None."""
    return _moment(value, "%b %-d, %Y, %H:%M UTC")


def period(start: datetime | None, end: datetime | None) -> str:
    """ "Dec 7, 2026 – Jan 7, 2027"; one date when it starts and ends on one day, or only
    one end is known; "" without either."""
    first, last = date(start), date(end)
    if not first or not last or first == last:
        return first or last
    return f"{first} – {last}"


def meter_color(percent: float, unlimited: bool) -> str:
    """The bar's Radix colour: amber from 80 %, red from 100 %."""
    if unlimited:
        return "grass"
    if percent >= 100:
        return "red"
    if percent >= 80:
        return "amber"
    return "indigo"


def status_color(status: str) -> str:
    return {
        "active": "grass",
        "trialing": "blue",
        "past_due": "amber",
        "unpaid": "red",
        "canceled": "gray",
        "incomplete": "orange",
        "incomplete_expired": "gray",
        "paused": "gray",
        "paid": "grass",
        "open": "blue",
        "draft": "gray",
        "void": "gray",
        "uncollectible": "red",
        "free": "gray",
    }.get(status, "gray")


def status_label(status: str) -> str:
    return status.replace("_", " ").capitalize() if status else ""


def get(obj: Any, name: str, default: Any = None) -> Any:
    """Read a field from a DTO or a dict alike (services return either)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)
