"""Stripe's test card numbers and what they do.

Like Stripe: 4000000000000341 can be saved to a customer but every charge fails;
4000000000000002 / 4000000000009995 are declined straight away (also when being saved).
Any other Luhn-valid number succeeds.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import StripeError, card_declined

SUCCESS_CARD = "4242424242424242"
CHARGE_FAILS_CARD = "4000000000000341"

# number -> decline_code raised when the card is used at all (attach or charge)
DECLINED_ON_ATTACH = {
    "4000000000000002": "generic_decline",
    "4000000000009995": "insufficient_funds",
    "4000000000000069": "expired_card",
}
# number -> decline_code raised only when charging an already saved card
DECLINED_ON_CHARGE = {CHARGE_FAILS_CARD: "generic_decline", **DECLINED_ON_ATTACH}


@dataclass(frozen=True)
class Card:
    number: str
    exp_month: int = 12
    exp_year: int = 2034

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def brand(self) -> str:
        n = self.number
        if n.startswith("4"):
            return "visa"
        if n[:2] in {"51", "52", "53", "54", "55"} or "2221" <= n[:4] <= "2720":
            return "mastercard"
        if n[:2] in {"34", "37"}:
            return "amex"
        if n.startswith("6011") or n.startswith("65"):
            return "discover"
        return "unknown"

    @property
    def fingerprint(self) -> str:
        # Deterministic per number, like Stripe's fingerprint.
        return hashlib.sha1(self.number.encode()).hexdigest()[:16]

    def charge_error(self) -> StripeError | None:
        code = DECLINED_ON_CHARGE.get(self.number)
        return card_declined(code) if code else None


def _luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def parse_card(number: str, expiry: str = "", cvc: str = "", *, now_year: int = 2026) -> Card:
    """Validate a card typed into a form (spaces allowed). Raises a 402 card_error."""
    digits = re.sub(r"[\s-]", "", number or "")
    if not digits.isdigit() or not 12 <= len(digits) <= 19 or not _luhn_ok(digits):
        raise card_declined("incorrect_number")
    exp_month, exp_year = 12, now_year + 8
    if expiry.strip():
        m = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", expiry)
        if not m or not 1 <= int(m.group(1)) <= 12:
            raise StripeError(
                "Your card's expiration date is incomplete.",
                status=402,
                type="card_error",
                code="invalid_expiry_month",
            )
        exp_month = int(m.group(1))
        exp_year = int(m.group(2)) + (2000 if len(m.group(2)) == 2 else 0)
        if exp_year < now_year:
            raise card_declined("expired_card")
    if cvc.strip() and not re.fullmatch(r"\d{3,4}", cvc.strip()):
        raise StripeError(
            "Your card's security code is invalid.",
            status=402,
            type="card_error",
            code="invalid_cvc",
        )
    return Card(digits, exp_month, exp_year)


def attach_error(card: Card) -> StripeError | None:
    code = DECLINED_ON_ATTACH.get(card.number)
    return card_declined(code) if code else None
