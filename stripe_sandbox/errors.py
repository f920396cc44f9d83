"""Stripe-shaped errors. stripe-python picks its exception class from the status and error type:
400/404 -> InvalidRequestError (or IdempotencyError), 401 -> AuthenticationError,
402 -> CardError."""

from __future__ import annotations

from typing import Any

RESOURCE_NAMES = {
    "cus": "customer",
    "prod": "product",
    "price": "price",
    "cs": "checkout.session",
    "bps": "billing_portal.session",
    "sub": "subscription",
    "si": "subscription_item",
    "in": "invoice",
    "evt": "event",
    "pm": "payment_method",
}


class StripeError(Exception):
    """Raised anywhere in the sandbox; rendered as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        decline_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.decline_code = decline_code

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.decline_code is not None:
            error["decline_code"] = self.decline_code
        if request_id:
            error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


def no_such(kind: str, object_id: str, *, param: str = "id", status: int = 404) -> StripeError:
    """Stripe's "No such customer: 'cus_x'" (404 on retrieve, 400 when named in a parameter)."""
    return StripeError(
        f"No such {kind}: '{object_id}'", status=status, param=param, code="resource_missing"
    )


def missing_param(param: str) -> StripeError:
    return StripeError(f"Missing required param: {param}.", param=param, code="parameter_missing")


def invalid_param(param: str, message: str) -> StripeError:
    return StripeError(message, param=param, code="parameter_invalid_string")


def card_declined(decline_code: str = "generic_decline", message: str | None = None) -> StripeError:
    messages = {
        "generic_decline": "Your card was declined.",
        "insufficient_funds": "Your card has insufficient funds.",
        "incorrect_number": "Your card number is incorrect.",
        "expired_card": "Your card has expired.",
    }
    code = "incorrect_number" if decline_code == "incorrect_number" else "card_declined"
    if decline_code == "expired_card":
        code = "expired_card"
    return StripeError(
        message or messages.get(decline_code, "Your card was declined."),
        status=402,
        type="card_error",
        code=code,
        decline_code=None if code != "card_declined" else decline_code,
    )
