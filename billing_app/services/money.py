"""Money: Stripe's integer minor units as decimal amounts of their currency."""

from __future__ import annotations

from decimal import Decimal

# Stripe's minor units are not always cents (stripe.com/docs/currencies): these
# currencies have none (1500 JPY is ¥1,500), these three (12345 KWD is 12.345).
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def minor_digits(currency: str | None) -> int:
    """How many decimal places a currency's minor unit has (usd 2, jpy 0, kwd 3)."""
    cur = (currency or "usd").lower()
    return 0 if cur in ZERO_DECIMAL else 3 if cur in THREE_DECIMAL else 2


def to_decimal(amount: int, currency: str | None) -> Decimal:
    """Minor units as an exact amount: 1900 usd -> 19.00, 1500 jpy -> 1500, 0 usd -> 0.00."""
    return Decimal(amount).scaleb(-minor_digits(currency))
