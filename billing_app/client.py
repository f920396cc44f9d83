"""A typed Python client for the billing service API (service keys: record, consume, cancel,
check, and read a user's usage, quotas, subscription and invoices).

Imports only the standard library and httpx, so a service can import or vendor this one
file without the server's dependencies. Runs on Python 3.9 and later.

    with BillingClient("https://billing.example.com", api_key) as billing:
        billing.consume(user_id, "scraping_tasks", 1, idempotency_key=f"job-{job.id}")
        ...  # the work (if it fails: billing.cancel(user_id, f"job-{job.id}") gives it back)
        billing.record(user_id, "tokens", tokens_used, metadata={"model": "gpt-4"})
        left = billing.usage(user_id).metric("tokens").remaining  # None when unlimited

Exactly once: every write carries an idempotency key. When the caller gives none, one is
generated before the first attempt and every retry of that call sends the same one, so a
write whose answer was lost is answered as a duplicate (`result.duplicate`) instead of
being counted twice. Give your own key (a job or request id) when the work itself may be
re-run later: a key generated here lives only as long as the call.

Retried, with capped exponential backoff and jitter: connection errors, timeouts, and the
statuses 429, 502, 503 and 504 (Retry-After waited for, up to max_backoff); reads are
retried the same way, as they change nothing. Nothing else is retried: any other error
is raised at once as a BillingAPIError carrying the server's {"error": {"code",
"message", ...}}. `deadline` bounds a whole call, retries included, for a caller on a
request path.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, TypedDict

import httpx

__all__ = [
    "AuthenticationError",
    "BatchResult",
    "BillingAPIError",
    "BillingClient",
    "CancelResult",
    "CheckResult",
    "Conflict",
    "DailyUsage",
    "Event",
    "Invoice",
    "InvoicePage",
    "MetricUsage",
    "NotFound",
    "QuotaExceeded",
    "QuotaStatus",
    "Quotas",
    "RecordResult",
    "Subscription",
    "SubscriptionStatus",
    "Unavailable",
    "Usage",
    "UsageEvent",
    "ValidationError",
]

log = logging.getLogger("billing_client")

# The server's limits on one batch request; record_batch splits a larger batch to fit.
MAX_BATCH = 1000
MAX_BODY = 1024 * 1024
_ENVELOPE = len(b'{"events":[]}')
BATCH_KEY_MAX = 250  # the server's limit on a batch's Idempotency-Key
UTC = timezone.utc  # datetime.UTC is 3.11+
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport errors worth another attempt: the request may not have arrived, or its answer
# was lost (a dropped connection is a RemoteProtocolError: "Server disconnected").
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class UsageEvent:
    """A stored usage event (for a duplicate: the one first stored under its key)."""

    id: int
    user_id: int
    metric: str
    quantity: int
    occurred_at: datetime
    recorded_at: datetime
    idempotency_key: str
    metadata: dict[str, Any] | None
    canceled_at: datetime | None = None  # set once cancelled: no longer counted


@dataclass(frozen=True)
class _EventAndMetric:
    """An event, and its metric's quota status after the call."""

    event: UsageEvent
    over_limit: bool
    metric: str
    used: int
    limit: int  # 0 means unlimited
    unlimited: bool
    remaining: int | None
    percent: float
    resets_at: datetime


@dataclass(frozen=True)
class RecordResult(_EventAndMetric):
    """The answer to record or consume: the event and the metric's quota status now."""

    # The key was stored before this call: this call counted nothing. Never for a key the
    # client made: a retry that finds its own lost attempt's event counted it (this call).
    duplicate: bool


@dataclass(frozen=True)
class CancelResult(_EventAndMetric):
    """The answer to cancel: the event (no longer counted) and the metric's quota status
    after the cancel, in the event's period."""

    # Cancelled before this call (or by this call's own attempt whose answer was lost).
    already_canceled: bool
    canceled_at: datetime


@dataclass(frozen=True)
class BatchResult:
    """`duplicates`: events whose key was stored before this call, as RecordResult's
    `duplicate` (with minimal=True and some keys the caller's, the server's count, which
    also counts this call's own lost attempt)."""

    recorded: int
    duplicates: int
    results: list[RecordResult] | None  # one per event, in order; None when minimal=True


@dataclass(frozen=True)
class CheckResult:
    allowed: bool
    metric: str
    requested: int
    used: int
    limit: int  # 0 means unlimited
    unlimited: bool
    remaining: int | None
    resets_at: datetime
    reason: str | None
    # Last, with defaults: positional construction keeps working, and None means a
    # server from before these fields.
    percent: float | None = None  # used as % of limit, at most 100; 0.0 when unlimited
    period_start: datetime | None = None


@dataclass(frozen=True)
class MetricUsage:
    """One metric of a user's usage this period."""

    metric: str
    label: str
    used: int
    limit: int  # 0 means unlimited
    unlimited: bool
    remaining: int | None  # None when unlimited
    percent: float
    period_start: datetime
    resets_at: datetime


@dataclass(frozen=True)
class DailyUsage:
    """One metric's usage on one UTC day of the period."""

    day: date
    metric: str
    quantity: int


@dataclass(frozen=True)
class Usage:
    """The answer to usage(): the user's plan and every metric this period, and with
    history=True the period's usage per UTC day and metric (zero-filled)."""

    plan: str
    metrics: list[MetricUsage]
    history: list[DailyUsage] | None  # None unless asked for

    def metric(self, name: str) -> MetricUsage:
        """The metric named `name` (KeyError when there is none)."""
        for m in self.metrics:
            if m.metric == name:
                return m
        raise KeyError(name)


@dataclass(frozen=True)
class QuotaStatus:
    """One metric's limit (the plan's, or an admin's override) and this period's usage."""

    metric: str
    limit: int  # 0 means unlimited
    unlimited: bool
    source: str  # "plan" or "admin"
    plan_limit: int
    reason: str | None  # an admin override's reason
    used: int
    remaining: int | None  # None when unlimited
    resets_at: datetime


@dataclass(frozen=True)
class Quotas:
    """The answer to quotas(): the user's plan and a limit per metric."""

    plan: str
    quotas: list[QuotaStatus]

    def metric(self, name: str) -> QuotaStatus:
        """The quota of the metric named `name` (KeyError when there is none)."""
        for q in self.quotas:
            if q.metric == name:
                return q
        raise KeyError(name)


@dataclass(frozen=True)
class Subscription:
    """The user's Stripe subscription as the billing service keeps it. Money in minor
    units of `currency`; `effective_plan` is the plan the quotas follow now ("free" once
    canceled, or after a failed payment's grace period)."""

    plan: str
    plan_name: str
    status: str  # Stripe's: active, trialing, past_due, canceled, ...
    effective_plan: str
    amount: int
    currency: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    ends_at: datetime | None  # when a subscription set to cancel ends; None: it renews
    canceled_at: datetime | None
    past_due_since: datetime | None
    grace_ends_at: datetime | None
    stripe_subscription_id: str


@dataclass(frozen=True)
class SubscriptionStatus:
    """The answer to subscription(): the plan the user is on and their subscription,
    None when they never subscribed (the free plan)."""

    plan: str
    plan_name: str
    subscription: Subscription | None


@dataclass(frozen=True)
class Invoice:
    """One of the user's invoices (drafts are not listed). Money in minor units of
    `currency`; a negative `total` is a credit to the customer's balance."""

    stripe_invoice_id: str
    number: str | None
    status: str  # open, paid, void, uncollectible
    amount_due: int
    amount_paid: int
    amount_remaining: int
    total: int
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    created_at: datetime
    # Open and its payment failed (attempted, or the subscription past due): still owed.
    payment_failed: bool
    paid_from_balance: int  # of the total, paid from the customer's credit
    credited_to_balance: int  # a credit's amount (-total), put on the customer's balance
    starting_balance: int | None  # the customer's balance before it (negative: a credit)
    ending_balance: int | None
    id: int  # the billing service's, not Stripe's
    user_id: int
    user_email: str
    # What it bills for ("Pro plan (prorated)"); None when nothing says, or an older server.
    description: str | None = None


@dataclass(frozen=True)
class InvoicePage:
    """One page of invoices() (newest first) and how many there are."""

    items: list[Invoice]
    total: int
    page: int
    per_page: int
    pages: int


class _EventRequired(TypedDict):
    user_id: int
    metric: str
    quantity: int


# Two classes, as typing.Required is 3.11+.
class Event(_EventRequired, total=False):
    """One event of record_batch."""

    idempotency_key: str
    metadata: dict[str, Any] | None
    occurred_at: datetime | str | None


def _dt(value: str) -> datetime:
    # The server writes UTC as "Z", which fromisoformat reads only from 3.11.
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(value)


def _event(d: Mapping[str, Any]) -> UsageEvent:
    return UsageEvent(
        id=d["id"],
        user_id=d["user_id"],
        metric=d["metric"],
        quantity=d["quantity"],
        occurred_at=_dt(d["occurred_at"]),
        recorded_at=_dt(d["recorded_at"]),
        idempotency_key=d["idempotency_key"],
        metadata=d["metadata"],
        canceled_at=_dt(d["canceled_at"]) if d.get("canceled_at") else None,
    )


def _record(d: Mapping[str, Any], *, own_key: bool = False) -> RecordResult:
    """`own_key`: the client made the event's key, so the server's `duplicate` can only be
    this call's own earlier attempt, whose answer was lost."""
    return RecordResult(duplicate=d["duplicate"] and not own_key, **_event_and_metric(d))


def _cancel(d: Mapping[str, Any]) -> CancelResult:
    return CancelResult(
        already_canceled=d["already_canceled"],
        canceled_at=_dt(d["canceled_at"]),
        **_event_and_metric(d),
    )


def _event_and_metric(d: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event": _event(d["event"]),
        "over_limit": d["over_limit"],
        "metric": d["metric"],
        "used": d["used"],
        "limit": d["limit"],
        "unlimited": d["unlimited"],
        "remaining": d["remaining"],
        "percent": d["percent"],
        "resets_at": _dt(d["resets_at"]),
    }


def _check(d: Mapping[str, Any]) -> CheckResult:
    return CheckResult(
        allowed=d["allowed"],
        metric=d["metric"],
        requested=d["requested"],
        used=d["used"],
        limit=d["limit"],
        unlimited=d["unlimited"],
        remaining=d["remaining"],
        resets_at=_dt(d["resets_at"]),
        reason=d["reason"],
        percent=d.get("percent"),
        period_start=_dt(d["period_start"]) if d.get("period_start") else None,
    )


def _usage(d: Mapping[str, Any]) -> Usage:
    history = d.get("history")
    return Usage(
        plan=d["plan"],
        metrics=[
            MetricUsage(
                metric=m["metric"],
                label=m["label"],
                used=m["used"],
                limit=m["limit"],
                unlimited=m["unlimited"],
                remaining=m["remaining"],
                percent=m["percent"],
                period_start=_dt(m["period_start"]),
                resets_at=_dt(m["resets_at"]),
            )
            for m in d["metrics"]
        ],
        history=None
        if history is None
        else [
            DailyUsage(day=date.fromisoformat(h["day"]), metric=h["metric"], quantity=h["quantity"])
            for h in history
        ],
    )


def _quotas(d: Mapping[str, Any]) -> Quotas:
    return Quotas(
        plan=d["plan"],
        quotas=[
            QuotaStatus(
                metric=q["metric"],
                limit=q["limit"],
                unlimited=q["unlimited"],
                source=q["source"],
                plan_limit=q["plan_limit"],
                reason=q["reason"],
                used=q["used"],
                remaining=q["remaining"],
                resets_at=_dt(q["resets_at"]),
            )
            for q in d["quotas"]
        ],
    )


def _typed(cls: Any, d: Mapping[str, Any]) -> Any:
    """`cls` (a result dataclass) from the answer's dict: its fields by name, the times
    (those typed datetime) parsed. A field with a default may be absent (an older server)."""
    return cls(
        **{
            f.name: _dt(d[f.name]) if "datetime" in str(f.type) and d[f.name] else d[f.name]
            for f in fields(cls)
            if f.name in d or f.default is MISSING
        }
    )


def _subscription(d: Mapping[str, Any]) -> SubscriptionStatus:
    sub = d["subscription"]
    return SubscriptionStatus(
        plan=d["plan"],
        plan_name=d["plan_name"],
        subscription=None if sub is None else _typed(Subscription, sub),
    )


def _invoices(d: Mapping[str, Any]) -> InvoicePage:
    return InvoicePage(
        items=[_typed(Invoice, i) for i in d["items"]],
        **{k: d[k] for k in ("total", "page", "per_page", "pages")},
    )


# ------------------------------------------------------------------ errors


class BillingAPIError(Exception):
    """An error answer: the status and the server's {"error": {code, message, ...details}}.

    `status` is None when no answer came (Unavailable after connection errors).
    `idempotency_keys`: the keys a failed write sent (generated ones included), so that a
    later retry of the same work can send them again and be counted once.
    `stored`: of a batch split into several requests, how many of its leading events the
    requests before the failed one stored (0 otherwise).
    """

    def __init__(
        self, status: int | None, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.idempotency_keys: list[str] = []
        self.stored = 0


class AuthenticationError(BillingAPIError):
    """401 (no or invalid key) or 403 (the key may not do this: scope, or another user's
    usage or quotas with a user's key)."""


class QuotaExceeded(BillingAPIError):
    """403 quota_exceeded from consume: nothing was recorded. `details` has metric,
    requested, used, limit, remaining and resets_at."""


class ValidationError(BillingAPIError):
    """422: the request was refused, nothing was recorded."""

    @property
    def fields(self) -> list[dict[str, Any]]:
        """Per-field errors ({field, message, type}): every field the request's shape or a
        rule refused, all of them in one answer."""
        return list(self.details.get("fields", []))

    @property
    def events(self) -> list[dict[str, Any]]:
        """A batch's bad events, each {index, code, message, errors}: its index in the
        batch, the first problem's code (validation_error, unknown_metric,
        user_not_found, idempotency_key_reused) and message, and every problem as
        {field, code, message}. An event repeating an earlier one's key with other values
        also has `repeats_index` (that event's index) and `differing_fields`."""
        return list(self.details.get("events", []))


class Conflict(BillingAPIError):
    """409: e.g. idempotency_key_reused, the key was stored with other values
    (metric, quantity or metadata: each one that differs in
    `details["differing_fields"]`); a batch's names the first event in
    `details["index"]` and each in `details["events"]` (each with its own)."""


class NotFound(BillingAPIError):
    """404: user_not_found (no user has that id) or, from cancel, usage_event_not_found (no
    event of that user has that key). Nothing was written."""


class Unavailable(BillingAPIError):
    """No usable answer after every attempt (connection errors, timeouts, 429/502/503/504).
    A write may or may not have been stored: send it again with `idempotency_keys`."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        attempts: int = 1,
    ) -> None:
        super().__init__(status, code, message, details)
        self.attempts = attempts


def _error_of(response: httpx.Response) -> BillingAPIError:
    status = response.status_code
    try:
        body = dict(response.json()["error"])
        code, message = str(body.pop("code")), str(body.pop("message"))
    except (ValueError, KeyError, TypeError):  # not our error shape (e.g. a proxy's page)
        body = {}
        code, message = f"http_{status}", response.text[:200] or response.reason_phrase
    if status == 403 and code == "quota_exceeded":
        cls: type[BillingAPIError] = QuotaExceeded
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status == 422:
        cls = ValidationError
    else:
        cls = BillingAPIError
    return cls(status, code, message, body)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None if absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# ------------------------------------------------------------------ the client


class BillingClient:
    """One httpx.Client to the billing API, with a service key; thread-safe like httpx's.

    `timeout`: seconds per attempt. `retries`: further attempts after the first.
    `backoff`: the first retry's delay in seconds, doubled each retry up to `max_backoff`
    and jittered (half of it to all of it). A Retry-After the server sends is waited for
    when it is at most `max_backoff`; a longer one ends the retries (Unavailable).
    `deadline`: seconds one call may take in all, its attempts and waits together (None:
    no bound). On a request path, set it to what the caller can wait: no wait is slept
    and no attempt started past it, and each attempt's timeouts are cut to the time left.
    Those timeouts bound each connect and each read (httpx has no whole-request timeout),
    so the answer's body is read as it arrives and the clock checked after each piece: a
    server trickling it is cut off at the deadline (Unavailable, code "timeout"). What
    that leaves: one read still waiting for its piece at the deadline (bounded by the
    attempt's timeouts), and a status line and headers trickled, which only the read
    timeout bounds.
    `max_batch_events`, `max_batch_bytes`: the most events and JSON bytes record_batch
    puts in one request (the server's limits by default; lower them for a proxy that
    allows less).
    `transport`: an httpx transport (tests, proxies, custom TLS).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        deadline: float | None = None,
        max_batch_events: int = MAX_BATCH,
        max_batch_bytes: int = MAX_BODY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")
        if not (1 <= max_batch_events <= MAX_BATCH and _ENVELOPE < max_batch_bytes <= MAX_BODY):
            raise ValueError(
                f"max_batch_events must be 1 to {MAX_BATCH}, max_batch_bytes "
                f"{_ENVELOPE + 1} to {MAX_BODY}"
            )
        if deadline is not None and not deadline > 0:
            raise ValueError("deadline must be a positive number of seconds, or None")
        # A key read from a file ends in a newline; httpx would refuse the header later with
        # the whole secret in its message. The key itself is never put into these errors.
        api_key = api_key.strip()
        if not api_key or not all("!" <= ch <= "~" for ch in api_key):
            raise ValueError("api_key is empty or holds characters no API key has")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.deadline = deadline
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "billing-client/1"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> BillingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -------------------------------------------------------------- endpoints

    def record(
        self,
        user_id: int,
        metric: str,
        quantity: int,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> RecordResult:
        """Record usage that already happened (allowed past the limit: `over_limit`)."""
        body = _write_body(user_id, metric, quantity, idempotency_key, metadata)
        if occurred_at is not None:
            body["occurred_at"] = occurred_at.isoformat()
        data = self._post("/api/billing/usage", body, keys=[body["idempotency_key"]])
        return _record(data, own_key=idempotency_key is None)

    def consume(
        self,
        user_id: int,
        metric: str,
        quantity: int,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RecordResult:
        """Atomically check the quota and record; raises QuotaExceeded (nothing recorded)
        when `quantity` more would pass the limit."""
        body = _write_body(user_id, metric, quantity, idempotency_key, metadata)
        data = self._post("/api/billing/usage/consume", body, keys=[body["idempotency_key"]])
        return _record(data, own_key=idempotency_key is None)

    def cancel(self, user_id: int, idempotency_key: str) -> CancelResult:
        """Give back the units of the event recorded or consumed under `idempotency_key`
        (its job failed). Safe to retry: cancelling again answers `already_canceled`.
        NotFound (404) usage_event_not_found for an unknown key (user_not_found for an
        unknown user); Conflict 409
        not_cancelable when its period has ended or it was recorded over 24 hours ago."""
        body = {"user_id": user_id, "idempotency_key": idempotency_key}
        return _cancel(self._post("/api/billing/usage/cancel", body, keys=[idempotency_key]))

    def check(self, user_id: int, metric: str, quantity: int = 1) -> CheckResult:
        """Would `quantity` more fit in the user's quota? Reads only."""
        body = {"user_id": user_id, "metric": metric, "quantity": quantity}
        return _check(self._post("/api/billing/quota/check", body))

    def usage(self, user_id: int, *, history: bool = False) -> Usage:
        """The user's usage this period, per metric (used, limit, remaining, percent,
        resets_at); `history=True` adds it per UTC day. A service key reads any user's,
        a user's key only its own. An unknown user is NotFound (404 user_not_found)."""
        params: dict[str, Any] = {"user_id": user_id}
        if history:
            params["history"] = "daily"
        return _usage(self._get("/api/billing/usage", params))

    def quotas(self, user_id: int) -> Quotas:
        """The user's limit per metric (the plan's or an admin's override: `source`) with
        this period's usage. Who may read whose: as usage()."""
        return _quotas(self._get("/api/billing/quota", {"user_id": user_id}))

    def subscription(self, user_id: int) -> SubscriptionStatus:
        """The user's plan and Stripe subscription (`subscription` None when they never
        subscribed). Who may read whose: as usage()."""
        return _subscription(self._get("/api/billing/subscription", {"user_id": user_id}))

    def invoices(
        self, user_id: int, *, status: str | None = None, page: int = 1, per_page: int = 20
    ) -> InvoicePage:
        """One page of the user's invoices, newest first (drafts are not listed);
        `status`: only open, paid, void or uncollectible ones. Who may read whose: as
        usage()."""
        params: dict[str, Any] = {"user_id": user_id, "page": page, "per_page": per_page}
        if status is not None:
            params["status"] = status
        return _invoices(self._get("/api/billing/invoices", params))

    def record_batch(
        self,
        events: Sequence[Event],
        *,
        minimal: bool = False,
        idempotency_key: str | None = None,
    ) -> BatchResult:
        """Record one or more events; `minimal=True`: the counts only, no results.

        A request holds at most `max_batch_events` events and `max_batch_bytes` of JSON
        (the server's 1,000 and 1 MiB): a larger batch is sent as several requests, in
        order, and their answers merged in the order of `events`. One request is all or
        nothing (a bad event is a ValidationError naming its index in `events`, a
        Conflict its `details["index"]`); a
        failure in a later request leaves the earlier ones stored (`err.stored` events).
        An event too large for a request on its own is a ValueError, nothing sent.
        `deadline` bounds the whole call, every request of it.

        `idempotency_key` (a job id, 1 to 250 characters) keys each event without a key
        of its own as `<key>#<index in events>`, as the server does for a batch's
        Idempotency-Key header: calling again with the same key and events, after any
        failure, stores nothing twice, wherever the requests were split.
        """
        if not events:
            raise ValueError("a batch holds at least one event")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= BATCH_KEY_MAX:
            raise ValueError(f"a batch's idempotency_key is 1 to {BATCH_KEY_MAX} characters")
        sent: list[dict[str, Any]] = []
        own: list[bool] = []
        for i, ev in enumerate(events):
            out: dict[str, Any] = dict(ev)
            own.append(out.get("idempotency_key") is None and idempotency_key is None)
            if out.get("idempotency_key") is None:  # fixed before the first attempt
                out["idempotency_key"] = (
                    str(uuid.uuid4()) if idempotency_key is None else f"{idempotency_key}#{i}"
                )
            if isinstance(out.get("occurred_at"), datetime):
                out["occurred_at"] = out["occurred_at"].isoformat()
            sent.append(out)
        keys = [ev["idempotency_key"] for ev in sent]
        if idempotency_key is not None:
            _refuse_key_clashes(events, keys)
        chunks = self._chunks([_encode(ev) for ev in sent])
        headers = {"Content-Type": "application/json"}
        if minimal:
            headers["Prefer"] = "return=minimal"
        end = None if self.deadline is None else time.monotonic() + self.deadline
        recorded = duplicates = 0
        results: list[RecordResult] | None = None if minimal else []
        for start, parts in chunks:
            chunk_own = own[start : start + len(parts)]
            try:
                data = self._call(
                    "POST",
                    "/api/billing/usage/batch",
                    content=b'{"events":[' + b",".join(parts) + b"]}",
                    keys=keys,
                    headers=headers,
                    end=end,
                )
            except BillingAPIError as err:
                _shift_indices(err, start, len(sent))
                raise
            if results is not None:
                answered = data.get("results") or []
                if len(answered) != len(parts):
                    raise BillingAPIError(
                        None, "invalid_response", "The batch answer has a result per event."
                    )
                results.extend(_record(r, own_key=o) for r, o in zip(answered, chunk_own))
            elif all(chunk_own):  # counts only: exact when every key is the client's
                recorded += data["recorded"] + data["duplicates"]
            else:  # else the server's
                recorded += data["recorded"]
                duplicates += data["duplicates"]
        if results is not None:
            duplicates = sum(r.duplicate for r in results)
            recorded = len(results) - duplicates
        return BatchResult(recorded=recorded, duplicates=duplicates, results=results)

    def _chunks(self, parts: list[bytes]) -> list[tuple[int, list[bytes]]]:
        """The encoded events split into requests that fit: (index of the first, events)."""
        chunks: list[tuple[int, list[bytes]]] = []
        current: list[bytes] = []
        size = _ENVELOPE
        for i, part in enumerate(parts):
            if _ENVELOPE + len(part) > self.max_batch_bytes:
                raise ValueError(
                    f"event {i} is {len(part):,} bytes as JSON, too large for a request "
                    f"({self.max_batch_bytes:,} bytes at most, with the batch's envelope)"
                )
            extra = len(part) + (1 if current else 0)  # the comma
            if current and (
                len(current) == self.max_batch_events or size + extra > self.max_batch_bytes
            ):
                chunks.append((i - len(current), current))
                current, size, extra = [], _ENVELOPE, len(part)
            current.append(part)
            size += extra
        chunks.append((len(parts) - len(current), current))
        return chunks

    # -------------------------------------------------------------- transport

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        """GET `path?params` (a read: retried as a write is) and return the JSON answer."""
        return self._call("GET", path, params=params)

    def _post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        keys: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST `body` (the same bytes on every attempt) and return the JSON answer."""
        return self._call("POST", path, body=body, keys=keys, headers=headers)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        keys: list[str] | None = None,
        headers: dict[str, str] | None = None,
        end: float | None = None,
    ) -> Any:
        """One call with its retries: the JSON answer, or the error raised (carrying the
        idempotency `keys` a write sent). `content`: a body already encoded. `end`: the
        monotonic time the deadline ends, for a call made of several requests."""
        try:
            response = self._send(method, path, body, content, params, headers, end)
            if response.is_success:
                try:
                    return response.json()
                except ValueError:
                    raise BillingAPIError(
                        response.status_code, "invalid_response", "The answer is not JSON."
                    ) from None
            raise _error_of(response)
        except BillingAPIError as err:
            err.idempotency_keys = list(keys or [])
            raise

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        content: bytes | None,
        params: dict[str, Any] | None,
        headers: dict[str, str] | None,
        end: float | None = None,
    ) -> httpx.Response:
        attempts = self.retries + 1
        if end is None and self.deadline is not None:
            end = time.monotonic() + self.deadline
        for attempt in range(1, attempts + 1):
            timeout = self._timeout
            if end is not None:  # a sleep may overrun by a little: never a timeout of 0
                timeout = max(0.001, min(self._timeout, end - time.monotonic()))
            try:
                request = self._http.build_request(
                    method,
                    path,
                    json=body,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=timeout,
                )
                response = self._receive(request, end)
            except RETRY_ERRORS as exc:
                why, delay = type(exc).__name__, self._delay(attempt)
                if attempt == attempts or _past(end, delay):
                    code = (
                        "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
                    )
                    raise Unavailable(
                        None, code, f"{type(exc).__name__}: {exc}", attempts=attempt
                    ) from exc
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                asked = _retry_after(response)
                why, delay = str(response.status_code), max(asked or 0.0, self._delay(attempt))
                if (
                    attempt == attempts
                    or (asked is not None and asked > self.max_backoff)
                    or _past(end, delay)
                ):
                    err = _error_of(response)
                    raise Unavailable(
                        err.status, err.code, err.message, err.details, attempts=attempt
                    )
            log.info(
                "%s %s: %s, attempt %d of %d, retrying in %.2f s",
                method,
                path,
                why,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _receive(self, request: httpx.Request, end: float | None) -> httpx.Response:
        """Send one attempt and read its whole answer. With a deadline (`end`) the body is
        read as it arrives, the clock checked after the headers and after each piece:
        httpx's timeouts bound each read, so a server trickling its answer a byte at a
        time would otherwise hold the call for as long as it likes. Past the deadline the
        answer is dropped (its connection closed) as a ReadTimeout."""
        if end is None:
            return self._http.send(request)
        response = self._http.send(request, stream=True)
        if response.is_stream_consumed:  # a transport that read it already (a test's, a proxy's)
            response.read()
            return response
        try:
            pieces: list[bytes] = []
            late = time.monotonic() >= end
            if not late:
                for piece in response.iter_raw():
                    pieces.append(piece)
                    if time.monotonic() >= end:
                        late = True
                        break
            if late:
                raise httpx.ReadTimeout(
                    "the call's deadline passed while its answer was being read",
                    request=request,
                )
        finally:
            response.close()
        # The answer as httpx would have read it (still encoded: decoded on reading it).
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=b"".join(pieces),
            request=request,
            extensions={
                k: v
                for k, v in response.extensions.items()
                if k in ("http_version", "reason_phrase")
            },
        )

    def _delay(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: between half and all of the step."""
        step = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(step / 2, step)


def _past(end: float | None, delay: float) -> bool:
    """Whether waiting `delay` more seconds would leave no time for another attempt."""
    return end is not None and time.monotonic() + delay >= end


def _write_body(
    user_id: int,
    metric: str,
    quantity: int,
    idempotency_key: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A single write's body, its key fixed here, before the first attempt."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "metric": metric,
        "quantity": quantity,
        "idempotency_key": idempotency_key if idempotency_key is not None else str(uuid.uuid4()),
    }
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _encode(event: dict[str, Any]) -> bytes:
    """An event as JSON, compact, as sizes are counted against the server's body limit."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _refuse_key_clashes(events: Sequence[Event], keys: list[str]) -> None:
    """A key `<key>#<i>` made for event i that another event has as its own would be taken
    for that event's retry; the server refuses it within a request, here across them."""
    mine = {ev["idempotency_key"]: i for i, ev in enumerate(events) if ev.get("idempotency_key")}
    for i, ev in enumerate(events):
        if ev.get("idempotency_key") is None and keys[i] in mine:
            raise ValueError(
                f"event {i}'s key would be {keys[i]}, which event {mine[keys[i]]} has as its "
                f"own: give event {i} a key, or rename that one"
            )


def _shift_indices(err: BillingAPIError, start: int, total: int) -> None:
    """A failed request of a split batch: its events' indices as in the caller's batch of
    `total` events, the summary ("2 of 1000 events are invalid") counted over it, and the
    events the requests before it stored."""
    err.stored = start
    _recount(err, start, total)
    if not start:
        return
    index = err.details.get("index")  # one event refused the request (a 409, say)
    if isinstance(index, int) and not isinstance(index, bool):
        err.details["index"] = index + start
        said = f"Event {index}: "
        if err.message.startswith(said):
            _say(err, f"Event {index + start}: {err.message[len(said) :]}")
    for ev in err.details.get("events", []):
        if isinstance(ev, dict) and isinstance(ev.get("index"), int):
            ev["index"] += start
            if isinstance(ev.get("repeats_index"), int):  # the event its key repeats
                ev["repeats_index"] += start
            for said in [ev, *(ev.get("errors") or [])]:
                _shift_repeats(said, start)
    for f in err.details.get("fields", []):
        parts = str(f.get("field", "")).split(".") if isinstance(f, dict) else []
        if len(parts) > 1 and parts[0] == "events" and parts[1].isdigit():
            f["field"] = ".".join(["events", str(int(parts[1]) + start), *parts[2:]])
            _shift_repeats(f, start)


def _say(err: BillingAPIError, message: str) -> None:
    err.message = message
    err.args = (f"{err.status or 'no answer'} {err.code}: {message}",)


# A refused request's summary; the requests before it were stored whole, so its bad
# events are all the batch's so far.
_SUMMARY = re.compile(
    r"\b(\d+) of \d+ events (are invalid|name an unknown user); nothing was recorded\."
)


def _recount(err: BillingAPIError, start: int, total: int) -> None:
    """The summary of a split batch's refused request, counted over the caller's batch."""

    def whole(m: re.Match[str]) -> str:
        stored = (
            "nothing was recorded"
            if not start
            else f"the first {start} were recorded, none after them"
        )
        return f"{m[1]} of {total} events {m[2]}; {stored}."

    said = _SUMMARY.sub(whole, err.message)
    if said != err.message:
        _say(err, said)


# A rule's message naming another event of the request ("Idempotency key repeats event 3
# with a different quantity (5 tokens)."): the server counts within the request.
_REPEATS = re.compile(r"\brepeats event (\d+)\b")


def _shift_repeats(said: Any, start: int) -> None:
    if isinstance(said, dict) and isinstance(said.get("message"), str):
        said["message"] = _REPEATS.sub(
            lambda m: f"repeats event {int(m[1]) + start}", said["message"]
        )
