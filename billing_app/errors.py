"""Domain errors. Each carries the HTTP status and a stable code the API returns."""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class ValidationFailed(BillingError):
    status_code = 422
    code = "validation_error"

    def to_dict(self) -> dict[str, Any]:
        """A rule's 422 names its field in `fields` too, as a schema's 422 does, so a
        caller (and the client's ValidationError.fields) reads one shape for both; a
        batch's bad events each as `events.<index>.<field>`, as the schema names them."""
        out = super().to_dict()
        if "fields" in out:
            return out
        field, events = self.details.get("field"), self.details.get("events")
        if isinstance(events, list):
            out["fields"] = event_fields(events)
        elif isinstance(field, str):
            out["fields"] = [{"field": field, "message": self.message, "type": self.code}]
        return out


def batch_event_error(index: int, errors: list[dict[str, Any]], message: str) -> dict[str, Any]:
    """A bad event of a batch in one shape, whatever refused it (the JSON's shape in the
    API, or a rule of the service): its index, the first problem's code and `message`,
    and every problem as {field, code, message}."""
    return {"index": index, "code": errors[0]["code"], "message": message, "errors": errors}


def event_fields(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch's bad events (`batch_event_error`) as `fields` entries: `events.3.metric`,
    or `events.3` for the event as a whole, the schema's names for them."""
    return [
        {
            "field": f"events.{e['index']}" + ("" if p["field"] == "event" else f".{p['field']}"),
            "message": p["message"],
            "type": p["code"],
        }
        for e in events
        for p in e["errors"]
    ]


class UnknownMetric(ValidationFailed):
    code = "unknown_metric"


class InvalidQuantity(ValidationFailed):
    code = "invalid_quantity"


class NotFound(BillingError):
    status_code = 404
    code = "not_found"


class UserNotFound(NotFound):
    code = "user_not_found"

    @classmethod
    def of(cls, user_id: int) -> UserNotFound:
        """The one answer for an unknown user id, wherever it is found."""
        return cls(f"No user with id {user_id}.", user_id=user_id)


class Conflict(BillingError):
    status_code = 409
    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"


class QuotaBusy(Conflict):
    """Another transaction held the quota row past set_override's lock timeout."""

    code = "quota_busy"


class UsageEventNotFound(NotFound):
    code = "usage_event_not_found"


class NotCancelable(Conflict):
    """A usage event that can no longer be cancelled (`reason`: period_ended or
    cancel_window_passed); nothing was written."""

    code = "not_cancelable"


class QuotaExceeded(BillingError):
    status_code = 403
    code = "quota_exceeded"


class Unauthorized(BillingError):
    status_code = 401
    code = "unauthorized"


class Forbidden(BillingError):
    status_code = 403
    code = "forbidden"


class PaymentProviderError(BillingError):
    """Stripe refused or could not be reached."""

    status_code = 502
    code = "payment_provider_error"


class CustomerGone(PaymentProviderError):
    """Stripe no longer has the customer we hold for a user (deleted in Stripe)."""


class ServiceUnavailable(BillingError):
    status_code = 503
    code = "service_unavailable"


class RateLimited(BillingError):
    """Too many attempts; `retry_after` (seconds) is sent as the Retry-After header too."""

    status_code = 429
    code = "rate_limited"


class PayloadTooLarge(BillingError):
    status_code = 413
    code = "payload_too_large"


class CsrfFailed(Forbidden):
    code = "csrf_failed"


# ---- Stripe integration (issue 3) ----


class NoBillingAccount(Conflict):
    """The user has no Stripe customer yet (never started a checkout)."""

    code = "no_billing_account"


class CardDeclined(PaymentProviderError):
    status_code = 402
    code = "card_declined"


class InvalidWebhook(BillingError):
    """A webhook delivery whose signature or body is not acceptable; nothing is written."""

    status_code = 400
    code = "invalid_signature"


class InvalidWebhookPayload(InvalidWebhook):
    code = "invalid_payload"
