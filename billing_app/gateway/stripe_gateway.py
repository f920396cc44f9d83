"""The only module that imports `stripe`.

Services call a `StripeGateway`; it returns plain dicts (Stripe's JSON) and raises domain
errors, never stripe objects or stripe exceptions. The same code talks to api.stripe.com or to
the local sandbox (`STRIPE_API_BASE`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pydantic_core
import stripe

from billing_app.errors import (
    CardDeclined,
    CustomerGone,
    InvalidWebhook,
    InvalidWebhookPayload,
    PaymentProviderError,
)
from billing_app.gateway.parsing import StripeAnswer
from billing_app.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The Stripe API version every request and every webhook payload is read with. Pinned here and
# nowhere else; it is the version stripe-python 16.1.0 was generated for.
STRIPE_API_VERSION = "2026-10-28.endive"
# Network errors, 409 lock timeouts, 429s and 5xx are retried by stripe-python with
# exponential backoff and jitter (0.5 s doubling, capped at 5 s).
MAX_NETWORK_RETRIES = 3
# Seconds to connect, and to wait for an answer, per attempt. stripe-python's default is 80 s
# for both: a Stripe that accepts and then hangs held a press (its worker thread) for over
# five minutes across the retries. Stripe answers in well under a second; a slow list page,
# a few seconds.
STRIPE_TIMEOUT = (5.0, 30.0)
WEBHOOK_TOLERANCE_SECONDS = 300


def idempotency_key(operation: str, *parts: object, params: dict[str, Any] | None = None) -> str:
    """A deterministic key: the operation, local ids and a digest of the parameters.

    Stripe rejects a key reused with different parameters, so the digest makes a changed
    request a new key while a retried identical one replays the first result.
    """
    base = ":".join([operation, *(str(p) for p in parts)])
    if params is not None:
        digest = hashlib.sha256(
            json.dumps(params, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        base = f"{base}:{digest}"
    return base[:255]


def _plain(obj: Any) -> dict[str, Any]:
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return dict(obj)


def _served_at(response: Any) -> datetime | None:
    """The `Date` of a Stripe response (`last_response`), None if absent or unreadable."""
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "date"), None)
    try:
        when = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return None if when is None or when.tzinfo is None else when.astimezone(UTC)


def _answer(obj: Any, response: Any) -> StripeAnswer:
    return StripeAnswer(_plain(obj), _served_at(response))


# Seconds a caller should wait after Stripe could not be reached (or rate-limited us):
# the API's 502 carries it as Retry-After, as every 503 does.
STRIPE_RETRY_AFTER = 5


def _translate(err: stripe.StripeError, action: str) -> PaymentProviderError:
    """A stripe exception as a domain error with a message a person can act on."""
    detail = err.user_message or (err.error.message if err.error else None) or str(err)
    request_id = getattr(err, "request_id", None)
    extra: dict[str, Any] = {"stripe_request_id": request_id} if request_id else {}
    if isinstance(err, stripe.CardError):
        return CardDeclined(f"The card was declined: {detail}", decline_code=err.code, **extra)
    if isinstance(err, stripe.APIConnectionError):  # worth retrying: say when (Retry-After)
        return PaymentProviderError(
            f"Could not reach Stripe to {action}; please try again in a moment.",
            retry_after=STRIPE_RETRY_AFTER,
            **extra,
        )
    if isinstance(err, stripe.AuthenticationError | stripe.PermissionError):
        return PaymentProviderError(
            f"Stripe refused our credentials while trying to {action} (check STRIPE_SECRET_KEY).",
            **extra,
        )
    if isinstance(err, stripe.RateLimitError):
        return PaymentProviderError(
            f"Stripe is rate-limiting requests; could not {action}. Try again shortly.",
            retry_after=STRIPE_RETRY_AFTER,
            **extra,
        )
    if isinstance(err, stripe.IdempotencyError):
        return PaymentProviderError(
            f"Stripe rejected a repeated request while trying to {action}: {detail}", **extra
        )
    if isinstance(err, stripe.InvalidRequestError):
        if err.code == "resource_missing" and getattr(err, "param", None) == "customer":
            return CustomerGone(f"Stripe rejected the request to {action}: {detail}", **extra)
        return PaymentProviderError(f"Stripe rejected the request to {action}: {detail}", **extra)
    return PaymentProviderError(f"Stripe failed to {action}: {detail}", **extra)


def _log_failure(action: str, err: stripe.StripeError) -> None:
    """One line: stripe-python's network errors span four, with blank lines, which log
    collectors split into entries of their own (and the CLI printed above its error)."""
    log.warning("stripe call failed (%s): %s", action, " ".join(str(err).split()))


class StripeGateway:
    """Thin, typed wrapper over `stripe.StripeClient` for the calls the app makes."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_network_retries: int = MAX_NETWORK_RETRIES,
        timeout: tuple[float, float] = STRIPE_TIMEOUT,
    ) -> None:
        if not settings.stripe_secret_key:
            raise PaymentProviderError("STRIPE_SECRET_KEY is not configured.")
        self.webhook_secret = settings.stripe_webhook_secret
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self.client = stripe.StripeClient(
            settings.stripe_secret_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    # ------------------------------------------------------------------ helpers

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> StripeAnswer:
        try:
            obj = fn(*args, **kwargs)
            return _answer(obj, getattr(obj, "last_response", None))
        except stripe.StripeError as err:
            _log_failure(action, err)
            raise _translate(err, action) from err

    def _iter(self, action: str, fn: Any, params: dict[str, Any]) -> Iterator[StripeAnswer]:
        """Every object of a list, each with its own page's moment (auto_paging_iter's
        items do not carry their page's response)."""
        try:
            page = fn(params=params)
            while True:
                for obj in page:
                    yield _answer(obj, page.last_response)
                page = page.next_page()
                if page.is_empty:
                    break
        except stripe.StripeError as err:
            _log_failure(action, err)
            raise _translate(err, action) from err

    # ------------------------------------------------------------------ customers

    def create_customer(
        self, *, user_id: int, email: str, name: str | None, replaces: str | None = None
    ) -> dict[str, Any]:
        """`replaces`: the user's customer Stripe no longer has (a new key: the first
        creation's would replay that customer)."""
        params: dict[str, Any] = {"email": email, "metadata": {"user_id": str(user_id)}}
        if name:
            params["name"] = name
        parts = [user_id, f"replaces-{replaces}"] if replaces else [user_id]
        return self._call(
            "create a customer",
            self.client.v1.customers.create,
            params=params,
            options={"idempotency_key": idempotency_key("customer", *parts, params=params)},
        )

    def retrieve_customer(self, customer_id: str) -> dict[str, Any]:
        return self._call("read a customer", self.client.v1.customers.retrieve, customer_id)

    def iter_customers(self, *, email: str | None = None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 100}
        if email:
            params["email"] = email
        return self._iter("list customers", self.client.v1.customers.list, params)

    # ------------------------------------------------------------------ checkout / portal

    def create_checkout_session(
        self,
        *,
        user_id: int,
        customer_id: str,
        price_id: str,
        plan_key: str,
        success_url: str,
        cancel_url: str,
        bucket: str,
    ) -> dict[str, Any]:
        """Subscription-mode Checkout for one price. `bucket` scopes the idempotency key in
        time: a double click reuses the session, a later attempt gets a fresh one."""
        meta = {"user_id": str(user_id), "plan": plan_key}
        params: dict[str, Any] = {
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": str(user_id),
            "line_items": [{"price": price_id, "quantity": 1}],
            "subscription_data": {"metadata": meta},
            "metadata": meta,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        key = idempotency_key("checkout", user_id, plan_key, bucket, params=params)
        return self._call(
            "start checkout",
            self.client.v1.checkout.sessions.create,
            params=params,
            options={"idempotency_key": key},
        )

    def expire_other_checkouts(self, *, customer_id: str, keep: str) -> list[str]:
        """Expire the customer's open Checkout Sessions but `keep`: an earlier tab's page
        stays payable for a day, and paying both would make two subscriptions. Returns
        the ids expired; one completed or expired meanwhile is skipped."""
        expired = []
        params = {"customer": customer_id, "status": "open", "limit": 100}
        for session in self._iter(
            "list open checkouts", self.client.v1.checkout.sessions.list, params
        ):
            if session["id"] == keep:
                continue
            try:
                self.client.v1.checkout.sessions.expire(session["id"])
            except stripe.InvalidRequestError as err:  # no longer open
                log.info("checkout %s not expired: %s", session["id"], err)
                continue
            except stripe.StripeError as err:
                raise _translate(err, "expire an earlier checkout") from err
            expired.append(session["id"])
        return expired

    def create_portal_session(
        self, *, user_id: int, customer_id: str, return_url: str, bucket: str
    ) -> dict[str, Any]:
        params = {"customer": customer_id, "return_url": return_url}
        key = idempotency_key("portal", user_id, bucket, params=params)
        return self._call(
            "open the billing portal",
            self.client.v1.billing_portal.sessions.create,
            params=params,
            options={"idempotency_key": key},
        )

    # ------------------------------------------------------------------ subscriptions

    def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        return self._call(
            "read a subscription", self.client.v1.subscriptions.retrieve, subscription_id
        )

    def change_subscription_price(
        self,
        *,
        subscription_id: str,
        item_id: str,
        price_id: str,
        proration_behavior: str,
        version: str,
        payment_behavior: str = "allow_incomplete",
        clear_cancel_at: bool = False,
    ) -> dict[str, Any]:
        """Swap the subscription's plan item to another price (prorated), undoing a
        scheduled cancel: `clear_cancel_at` for one scheduled with `cancel_at` alone (the
        customer portal's), else cancel_at_period_end=false (Stripe takes only one of them).

        `version` names the local state the change starts from, so a retry of the same change
        replays while a later change back and forth gets a new key. `payment_behavior`
        "error_if_incomplete": an invoice due now that is not paid makes Stripe answer 402
        (CardDeclined) and change nothing.
        """
        params: dict[str, Any] = {
            "items": [{"id": item_id, "price": price_id}],
            "proration_behavior": proration_behavior,
            "payment_behavior": payment_behavior,
        }
        if clear_cancel_at:
            params["cancel_at"] = ""
        else:
            params["cancel_at_period_end"] = False
        return self._update_subscription(
            "change the plan", "plan", subscription_id, version, params
        )

    def set_cancel_at_period_end(
        self, *, subscription_id: str, cancel: bool, version: str
    ) -> dict[str, Any]:
        action = "cancel the subscription" if cancel else "resume the subscription"
        params = {"cancel_at_period_end": cancel}
        return self._update_subscription(action, "cancel_at_end", subscription_id, version, params)

    def clear_cancel_at(self, *, subscription_id: str, version: str) -> dict[str, Any]:
        """Undo a cancellation scheduled with `cancel_at` (the customer portal's way): Stripe
        unsets a field sent as an empty string; cancel_at_period_end=false leaves it."""
        params = {"cancel_at": ""}
        return self._update_subscription(
            "resume the subscription", "cancel_at", subscription_id, version, params
        )

    def _update_subscription(
        self, action: str, kind: str, subscription_id: str, version: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        """One subscription update, keyed by what it does, the local state it starts from
        (`version`) and its parameters."""
        key = idempotency_key(kind, subscription_id, version, params=params)
        return self._call(
            action,
            self.client.v1.subscriptions.update,
            subscription_id,
            params=params,
            options={"idempotency_key": key},
        )

    def cancel_subscription_now(self, subscription_id: str) -> dict[str, Any]:
        # DELETE is naturally idempotent on Stripe's side (a second one is an error we map).
        return self._call(
            "cancel the subscription", self.client.v1.subscriptions.cancel, subscription_id
        )

    def iter_subscriptions(self, *, customer_id: str) -> Iterator[dict[str, Any]]:
        params = {"customer": customer_id, "status": "all", "limit": 100}
        return self._iter("list subscriptions", self.client.v1.subscriptions.list, params)

    # ------------------------------------------------------------------ invoices / events

    def iter_invoices(self, *, customer_id: str) -> Iterator[dict[str, Any]]:
        params = {"customer": customer_id, "limit": 100}
        return self._iter("list invoices", self.client.v1.invoices.list, params)

    def iter_events(
        self, *, created_gte: int | None = None, undelivered_only: bool = False
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 100}
        if created_gte is not None:
            params["created"] = {"gte": created_gte}
        if undelivered_only:
            params["delivery_success"] = False
        return self._iter("list events", self.client.v1.events.list, params)

    # ------------------------------------------------------------------ webhooks

    def verify_webhook(self, payload: bytes, signature_header: str | None) -> dict[str, Any]:
        """Check `Stripe-Signature` on the raw bytes, then parse; returns the event as a dict.

        Raises InvalidWebhook (bad/missing/stale signature) or InvalidWebhookPayload (a signed
        body that is not a JSON event).
        """
        if not signature_header:
            raise InvalidWebhook("Missing Stripe-Signature header.")
        if not self.webhook_secret:
            raise PaymentProviderError("STRIPE_WEBHOOK_SECRET is not configured.")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWebhookPayload("Webhook body is not UTF-8.") from None
        try:
            # The check Webhook.construct_event makes (HMAC over the exact bytes, 300 s
            # tolerance), without building the StripeObject tree it would then return:
            # that tree was a third of a webhook's cost and we parse the JSON once below.
            stripe.WebhookSignature.verify_header(
                text, signature_header, self.webhook_secret, WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as err:
            raise InvalidWebhook(f"Invalid Stripe-Signature: {err.user_message or err}") from None
        try:
            # pydantic-core's parser: 23 against json's 39 µs for a 4.6 KB event, which
            # was 8 % of a worker's GIL time under deliveries (py-spy, finding 38).
            data = pydantic_core.from_json(payload)
        except ValueError as err:  # signed, but not JSON
            raise InvalidWebhookPayload(f"Webhook body is not a JSON event: {err}") from None
        if not isinstance(data, dict):
            raise InvalidWebhookPayload("Webhook body is not a JSON object.")
        return data


_gateway: StripeGateway | None = None
_gateway_key: tuple[Any, ...] | None = None


def get_gateway() -> StripeGateway:
    """The gateway for the current settings (rebuilt when tests change them)."""
    global _gateway, _gateway_key
    s = get_settings()
    key = (s.stripe_secret_key, s.stripe_api_base, s.stripe_webhook_secret)
    if _gateway is None or key != _gateway_key:
        _gateway, _gateway_key = StripeGateway(s), key
    return _gateway
