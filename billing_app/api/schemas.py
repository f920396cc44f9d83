"""Request and response bodies: what /api/openapi.json documents (schemathesis checks it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from typing_extensions import TypedDict  # pydantic needs this one before 3.12

from billing_app.metrics import MAX_LIMIT, MAX_QUANTITY, METRIC_KEYS
from billing_app.services.metering import FUTURE_SKEW, MAX_METADATA_BYTES, MAX_METADATA_DEPTH

_METRICS = ", ".join(METRIC_KEYS)
# Ids are 32-bit INTEGER columns: larger numbers cannot name a row (and must not reach SQL).
MAX_ID = 2**31 - 1


# ------------------------------------------------------------------ errors


class FieldErrorOut(BaseModel):
    field: str = Field(description="`quantity`, `query.page`, a batch's `events.3.metric`")
    message: str = Field(
        description="A sentence naming the field and what came instead: "
        '`quantity must be a whole number (got "12").`'
    )
    type: str = Field(description="The schema's error type, or the rule's code")


class EventProblemOut(BaseModel):
    field: str = Field(description="The event's field, or `event` for the event as a whole")
    code: str
    message: str


class BadEventOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int = Field(description="The event's index in the batch")
    code: str = Field(description="Its first problem's code")
    message: str
    errors: list[EventProblemOut]
    idempotency_key: str | None = Field(
        default=None, description="`idempotency_key_reused`: the key the event repeats"
    )
    differing_fields: list[str] | None = Field(
        default=None,
        description="`idempotency_key_reused`: each field whose value differs from the "
        "earlier event's with that key (`metric`, `quantity`, `metadata`), as a 409 names them",
    )
    repeats_index: int | None = Field(
        default=None,
        description="`idempotency_key_reused`: the index of the earlier event of the batch "
        "with that key",
    )


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(examples=["validation_error"])
    message: str
    # Documented here so a client knows a 422's shape (absent from other answers).
    fields: list[FieldErrorOut] | None = Field(
        default=None, description="422: every field refused, by the schema or a rule"
    )
    events: list[BadEventOut] | None = Field(
        default=None, description="A refused batch: each bad event, every problem of it"
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


class QuotaExceededBody(ErrorBody):
    """A 403: with `quota_exceeded`, what a caller needs to decide (wait, ask for less)."""

    metric: str | None = Field(default=None, description="`quota_exceeded`: the metric")
    requested: int | None = Field(default=None, description="`quota_exceeded`: the quantity asked")
    used: int | None = Field(default=None, description="`quota_exceeded`: used this period")
    limit: int | None = Field(default=None, description="`quota_exceeded`: the period's limit")
    remaining: int | None = Field(
        default=None, description="`quota_exceeded`: `limit` - `used`, at least 0"
    )
    resets_at: datetime | None = Field(
        default=None, description="`quota_exceeded`: when the period ends and usage resets"
    )


class QuotaExceededResponse(BaseModel):
    error: QuotaExceededBody


class KeyReusedBody(ErrorBody):
    """A 409 `idempotency_key_reused`: the key was stored with other values."""

    idempotency_key: str | None = Field(default=None, description="The key reused")
    differing_fields: list[str] | None = Field(
        default=None,
        description="Each field whose value differs from the stored event's: `metric`, "
        "`quantity`, `metadata` (`occurred_at` is not compared); a batch's, the first "
        "event's (each event's in `events`)",
    )
    index: int | None = Field(default=None, description="A batch's: the first event reusing a key")


class KeyReusedResponse(BaseModel):
    error: KeyReusedBody


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, all in the one error shape."""
    text = {
        400: "Malformed request",
        401: "Not signed in / invalid API key",
        403: "Not allowed (or CSRF check failed, or a consume's `quota_exceeded`)",
        404: "Not found",
        409: "Conflict",
        413: "Body larger than 1 MiB",
        415: "Body not sent as JSON (Content-Type: application/json)",
        422: "Validation failed",
        429: "Rate limited",
        502: "Payment provider error",
        503: "Database unreachable, or busy with a conflicting change; retry shortly",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": text.get(status, "Error")}
        if status in ERROR_HEADERS:
            out[status]["headers"] = ERROR_HEADERS[status]
    return out


def _header(description: str, schema_type: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": schema_type}}


# The headers error answers carry (the client reads Retry-After).
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header('`Bearer realm="billing"`')},
    429: {"Retry-After": _header("Seconds to wait before trying again", "integer")},
    502: {
        "Retry-After": _header(
            "Seconds to wait before retrying, when Stripe could not be reached or "
            "rate-limited the app (absent when retrying cannot help: Stripe refused the "
            "request)",
            "integer",
        )
    },
    503: {
        "Retry-After": _header(
            "Seconds to wait before retrying, on every 503: 1 when the database is busy "
            "with a conflicting change or too many reads are waiting for it, 5 otherwise "
            "(the database unreachable, not migrated or out of connections; the identity "
            "provider unreachable)",
            "integer",
        )
    },
}


COMMON = (400, 401, 403, 413, 422, 503)


# ------------------------------------------------------------------ users & auth


class UserOut(BaseModel):
    id: int
    email: str
    display_name: str
    role: str
    created_at: datetime


class AuthOut(BaseModel):
    user: UserOut


class OkOut(BaseModel):
    ok: bool = True


class BodyIn(BaseModel):
    """A request body: a field it does not have is refused (422), not ignored. A
    misspelled `idempotencyKey` ignored would make a retry count twice."""

    model_config = ConfigDict(extra="forbid")


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    next: str | None = Field(default=None, max_length=2000)


class SignupIn(LoginIn):
    display_name: str = Field(default="", max_length=200)


# ------------------------------------------------------------------ usage

# A metric without a limit (enterprise, or an admin's override) answers `limit` 0: a
# client comparing `used` with `limit` alone would refuse every such user.
LimitOut = Annotated[
    int, Field(description="The period's limit; 0 when unlimited (then `unlimited` is true)")
]
UnlimitedOut = Annotated[bool, Field(description="No limit: `limit` is 0, `remaining` null")]
RemainingOut = Annotated[
    int | None, Field(description="`limit` - `used`, at least 0; null when unlimited")
]
PercentOut = Annotated[
    float,
    Field(
        description="`used` as a percentage of `limit`, one decimal, at most 100 (under "
        "the limit at most 99.9); 0 when unlimited"
    ),
]
PeriodStartOut = Annotated[datetime, Field(description="When the usage period began")]


class MeterOut(BaseModel):
    metric: str
    label: str
    used: int
    limit: LimitOut
    unlimited: UnlimitedOut
    remaining: RemainingOut
    percent: PercentOut
    period_start: PeriodStartOut
    resets_at: datetime


class DailyOut(BaseModel):
    day: str
    metric: str
    quantity: int


class UsageSummaryOut(BaseModel):
    plan: str
    metrics: list[MeterOut]
    history: list[DailyOut] | None = None


class QuotaOut(BaseModel):
    metric: str
    limit: LimitOut
    unlimited: UnlimitedOut
    source: str = Field(description="plan or admin")
    plan_limit: int
    reason: str | None


class QuotaStatusOut(QuotaOut):
    used: int
    remaining: RemainingOut
    resets_at: datetime


class QuotasOut(BaseModel):
    plan: str
    quotas: list[QuotaStatusOut]


# The usage fields' rules, once: the single-event models and the batch's events share them.
UserIdIn = Annotated[
    StrictInt | None,
    Field(gt=0, le=MAX_ID, description="Required for service keys; defaults to the caller"),
]
MetricIn = Annotated[str, Field(max_length=64, description=f"One of: {_METRICS}")]
QuantityIn = Annotated[StrictInt, Field(gt=0, le=MAX_QUANTITY)]
KeyIn = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=255,
        description="Per user, shared by record, consume and batch: the same key again "
        "answers 200 `duplicate`; with another metric, quantity or metadata, 409 "
        "`idempotency_key_reused`. Generated when absent",
    ),
]
MetadataIn = Annotated[
    dict[str, Any] | None,
    Field(
        description=f"A JSON object of at most {MAX_METADATA_BYTES:,} bytes (UTF-8), nested "
        f"at most {MAX_METADATA_DEPTH} levels; no NUL characters"
    ),
]
OccurredAtIn = Annotated[
    datetime | None,
    Field(
        description="When it happened (default: now), ISO 8601: a time without an offset "
        "is read as UTC. Up to "
        f"{FUTURE_SKEW.total_seconds() / 60:g} minutes ahead, any time back; it counts in "
        "its own period and day"
    ),
]


class UsageIn(BodyIn):
    user_id: UserIdIn = None
    metric: MetricIn
    quantity: QuantityIn
    idempotency_key: KeyIn = None
    metadata: MetadataIn = None
    occurred_at: OccurredAtIn = None


# A TypedDict, not a model: a thousand models cost four times the parse and were then
# read back into dicts (bench/README finding 40).
class BatchEventIn(TypedDict):
    """One usage event of a batch, with the same fields and rules as a single event."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    user_id: NotRequired[UserIdIn]
    metric: MetricIn
    quantity: QuantityIn
    idempotency_key: NotRequired[KeyIn]
    metadata: NotRequired[MetadataIn]
    occurred_at: NotRequired[OccurredAtIn]


class ConsumeIn(BodyIn):
    user_id: UserIdIn = None
    metric: MetricIn
    quantity: QuantityIn
    idempotency_key: KeyIn = None
    metadata: MetadataIn = None


class CheckIn(BodyIn):
    user_id: UserIdIn = None
    metric: MetricIn
    quantity: QuantityIn = 1


class BatchIn(BodyIn):
    events: list[BatchEventIn] = Field(min_length=1, max_length=1000)


class CancelIn(BodyIn):
    user_id: UserIdIn = None
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The key the event was recorded or consumed with (or send it as the "
        "Idempotency-Key header)",
    )


class EventOut(BaseModel):
    id: int
    user_id: int
    metric: str
    quantity: int
    occurred_at: datetime
    recorded_at: datetime
    idempotency_key: str
    metadata: dict[str, Any] | None
    canceled_at: datetime | None = Field(
        default=None, description="When it was cancelled (no longer counted); null: counted"
    )


class _EventAndMetric(BaseModel):
    """An event, and its metric's quota status after the call."""

    event: EventOut
    over_limit: bool
    metric: str
    used: int
    limit: LimitOut
    unlimited: UnlimitedOut
    remaining: RemainingOut
    percent: PercentOut
    resets_at: datetime


class RecordOut(_EventAndMetric):
    duplicate: bool


class CancelOut(_EventAndMetric):
    """The cancelled event and its metric after the cancel (in the event's period)."""

    already_canceled: bool = Field(description="Cancelled by an earlier call; nothing changed now")
    canceled_at: datetime


class BatchOut(BaseModel):
    recorded: int
    duplicates: int
    results: list[RecordOut] | None = Field(
        default=None,
        description="One per event, in order; absent when asked for `Prefer: return=minimal`",
    )


class CheckOut(BaseModel):
    allowed: bool
    metric: str
    requested: int
    used: int
    limit: LimitOut
    unlimited: UnlimitedOut
    remaining: RemainingOut
    percent: PercentOut
    period_start: PeriodStartOut
    resets_at: datetime
    reason: str | None


# ------------------------------------------------------------------ billing


class CheckoutIn(BodyIn):
    plan: str = Field(max_length=32, description="basic, pro or enterprise")


class UrlOut(BaseModel):
    url: str


class SubscriptionDetailOut(BaseModel):
    """The user's Stripe subscription. Money in minor units."""

    plan: str = Field(description="The subscribed plan's key")
    plan_name: str
    status: str = Field(description="Stripe's: active, trialing, past_due, canceled, ...")
    effective_plan: str = Field(
        description="The plan the quotas follow now: free once canceled or past the grace"
    )
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    past_due_since: datetime | None
    grace_ends_at: datetime | None = Field(description="When a past_due plan's quotas end")
    stripe_subscription_id: str
    amount: int
    currency: str
    canceled_at: datetime | None = None
    cancel_at: datetime | None = Field(default=None, description="Stripe's scheduled cancel")
    ends_at: datetime | None = Field(
        default=None, description="When a subscription set to cancel ends; null: it renews"
    )


class SubscriptionOut(BaseModel):
    plan: str
    plan_name: str
    subscription: SubscriptionDetailOut | None = Field(description="null: never subscribed")


class InvoiceOut(BaseModel):
    """A Stripe invoice as stored. Amounts in the currency's minor units."""

    id: int
    stripe_invoice_id: str
    user_id: int
    user_email: str
    number: str | None
    status: str = Field(description="Stripe's: draft, open, paid, void, uncollectible")
    amount_due: int
    amount_paid: int
    total: int = Field(description="Negative: a credit to the customer's balance")
    amount_remaining: int
    credited_to_balance: int
    paid_from_balance: int
    starting_balance: int | None
    ending_balance: int | None
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    created_at: datetime
    payment_failed: bool = Field(
        description="Open, and its payment failed (attempted, or its subscription past due "
        'or unpaid): still owed. The console badges it "Payment failed".'
    )
    description: str | None = Field(
        default=None,
        description='What it bills for, from its lines: "Pro plan", "Pro plan (prorated)" '
        '(a plan change), "Pro plan, with prorated changes"; null when nothing says',
    )


class InvoicePage(BaseModel):
    items: list[InvoiceOut]
    total: int
    page: int
    per_page: int
    pages: int


# ------------------------------------------------------------------ admin


class AdminUsageOut(BaseModel):
    metric: str
    label: str
    used: int
    limit: LimitOut
    unlimited: UnlimitedOut
    percent: PercentOut


class AdminUserRowOut(BaseModel):
    id: int
    email: str
    display_name: str
    role: str
    plan: str
    plan_name: str
    status: str
    usage: list[AdminUsageOut]
    created_at: datetime
    ends_at: datetime | None = Field(
        default=None, description="When a subscription set to cancel ends; null: it renews"
    )
    amount_owed: int = Field(
        default=0,
        description="Still owed on the user's failed payments (open invoices whose payment "
        "failed), minor units of `currency`",
    )
    currency: str = Field(default="usd", description="The plans' currency")


class AdminUserPage(BaseModel):
    items: list[AdminUserRowOut]
    total: int
    page: int
    per_page: int
    pages: int


class AuditOut(BaseModel):
    metric: str
    old_limit: int | None
    new_limit: int | None
    reason: str
    actor_user_id: int | None
    actor_email: str | None = Field(
        default=None, description="The admin who made the change; null once that account is gone"
    )
    created_at: datetime


class AdminUserDetailOut(BaseModel):
    """One user as the console's drawer shows them."""

    user: UserOut
    plan: str = Field(description="The plan the quotas follow now")
    plan_name: str
    subscription: SubscriptionDetailOut | None = Field(description="null: never subscribed")
    usage: list[MeterOut]
    quotas: list[QuotaOut]
    audit_log: list[AuditOut] = Field(description="Quota overrides, newest first (50 at most)")
    invoices: list[InvoiceOut] = Field(description="The newest 10, drafts included")


class QuotaOverrideIn(BodyIn):
    metric: str = Field(max_length=64, description=f"One of: {_METRICS}")
    # Required, though it may be null: a body that leaves it out (a typo, an older
    # client) must not clear an override by accident.
    limit: StrictInt | None = Field(
        ...,
        ge=0,
        le=MAX_LIMIT,
        description="Required. New limit (0 = unlimited); null clears the override",
    )
    reason: str | None = Field(
        default=None,
        max_length=500,
        description="Why (kept in the audit log); required to set a limit, optional to reset",
    )


class ApiKeyIn(BodyIn):
    name: str = Field(min_length=1, max_length=200)
    user_id: StrictInt | None = Field(default=None, gt=0, le=MAX_ID)
    service_name: str | None = Field(default=None, min_length=1, max_length=200)
    scopes: list[str] = Field(default_factory=list, max_length=10)


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    kind: str
    user_id: int | None
    service_name: str | None
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_email: str | None = None


class ApiKeyCreatedOut(ApiKeyOut):
    secret: str = Field(description="Shown once; store it now")


class ApiKeyListOut(BaseModel):
    items: list[ApiKeyOut]


class StatsOut(BaseModel):
    total_users: int
    active_subscribers: int = Field(
        description="Users whose subscription grants its plan now: active, trialing, or "
        "past_due within the grace period"
    )
    subscribers_by_plan: dict[str, int] = Field(description="The same users, per plan")
    mrr: int = Field(
        description="Monthly recurring revenue in minor units: the same users less trials"
    )
    currency: str
    failed_payments: int = Field(
        description="Open invoices whose payment failed, still owed (uncollectible ones, "
        "written off, are not counted): what the invoices filter status=failed lists"
    )
    failed_amount_due: int = Field(
        description="What those invoices still owe, in minor units of `currency`"
    )
    past_due_subscriptions: int
