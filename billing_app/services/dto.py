"""Plain data returned by services: what the API serialises and Reflex State holds."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, DTO):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class DTO:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        # Shallow, recursing only into nested DTOs and containers: dataclasses.asdict
        # deep-copies every value and was a fifth of a batch request's time.
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class UserDTO(DTO):
    id: int
    email: str
    display_name: str
    role: str
    created_at: datetime
    stripe_customer_id: str | None


@dataclass(frozen=True)
class QuotaDTO(DTO):
    metric: str
    limit: int
    unlimited: bool
    source: str
    plan_limit: int
    reason: str | None


# The three below are built once per recorded event (3,000 for a batch of 1,000), so
# they are not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, 1.5 against 0.3 µs for nine fields. Nothing mutates them.
@dataclass(slots=True)
class UsageEventDTO(DTO):
    id: int
    user_id: int
    metric: str
    quantity: int
    occurred_at: datetime
    recorded_at: datetime
    idempotency_key: str
    metadata: dict[str, Any] | None
    canceled_at: datetime | None = None


@dataclass(slots=True)
class MeterStatus(DTO):
    """One metric for one user in the current period."""

    metric: str
    label: str
    used: int
    limit: int
    unlimited: bool
    remaining: int | None
    percent: float
    period_start: datetime
    resets_at: datetime


@dataclass(slots=True)
class RecordResult(DTO):
    event: UsageEventDTO
    duplicate: bool
    over_limit: bool
    status: MeterStatus


@dataclass(frozen=True)
class CancelResult(DTO):
    """A cancelled event (`already_canceled`: by an earlier call) and its metric's quota
    status after the cancel, in the event's period."""

    event: UsageEventDTO
    already_canceled: bool
    over_limit: bool
    status: MeterStatus


@dataclass(frozen=True)
class CheckResult(DTO):
    allowed: bool
    metric: str
    requested: int
    used: int
    limit: int
    unlimited: bool
    remaining: int | None
    percent: float
    period_start: datetime
    resets_at: datetime
    reason: str | None


@dataclass(frozen=True)
class DailyUsage(DTO):
    day: str
    metric: str
    quantity: int


@dataclass(frozen=True)
class Page(DTO):
    """One page of a paginated list."""

    items: list[Any]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True)
class ApiKeyDTO(DTO):
    id: int
    name: str
    prefix: str
    user_id: int | None
    service_name: str | None
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_email: str | None = None  # the owner's email, for user keys

    @property
    def kind(self) -> str:
        return "service" if self.user_id is None else "user"


@dataclass(frozen=True)
class Principal(DTO):
    """Who is calling: a signed-in user, a user's API key, or a service key."""

    kind: str  # "user" (session or user key) or "service"
    user: UserDTO | None = None
    api_key_id: int | None = None
    service_name: str | None = None
    via: str = "session"  # "session" or "api_key"
    scopes: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return self.user is not None and self.user.role == "admin"

    def can_act_for(self, user_id: int) -> bool:
        """A service key may act for any user; a user (or user key) only for itself."""
        if self.kind == "service":
            return True
        return self.user is not None and self.user.id == user_id


@dataclass(frozen=True)
class AdminUserRow(DTO):
    id: int
    email: str
    display_name: str
    role: str
    plan: str
    plan_name: str
    status: str  # the current subscription's status, "none" without one
    usage: list[dict[str, Any]]  # {metric, label, used, limit, unlimited, percent}
    created_at: datetime
    # When the live subscription, set to cancel, ends; None when it renews (or none).
    ends_at: datetime | None = None
    # Still owed on their failed payments (minor units of `currency`; the Failed payments
    # card's invoices): what a past-due customer is chased for.
    amount_owed: int = 0
    currency: str = "usd"


@dataclass(frozen=True)
class AdminUserDetail(DTO):
    user: UserDTO
    plan: str
    plan_name: str
    subscription: dict[str, Any] | None
    usage: list[MeterStatus]
    quotas: list[QuotaDTO]
    audit_log: list[dict[str, Any]]
    invoices: list[dict[str, Any]]


# ---- Stripe billing (issue 3) ----


@dataclass(frozen=True)
class SubscriptionDTO(DTO):
    """A user's subscription as the UI and API show it. Money in minor units."""

    plan: str  # the subscribed plan's key
    plan_name: str
    status: str
    # The plan quotas follow now: "free" once canceled or after the past_due grace period.
    effective_plan: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    past_due_since: datetime | None
    grace_ends_at: datetime | None
    stripe_subscription_id: str
    amount: int
    currency: str
    canceled_at: datetime | None = None
    # Stripe's scheduled cancel date (the customer portal sets only this, not the flag).
    cancel_at: datetime | None = None
    # When a live subscription set to cancel ends (subscriptions.ends_at); None: it renews.
    ends_at: datetime | None = None


@dataclass(frozen=True)
class HeldDTO(DTO):
    """A subscription that grants nothing now but is not over: paying its open invoice
    brings it back, billed (subscriptions.held_subscription)."""

    status: str  # incomplete, unpaid or paused
    plan: str
    plan_name: str
    # Its newest open invoice still owed; None until that invoice has synced.
    invoice_number: str | None = None
    hosted_invoice_url: str | None = None
    # Stripe tried to charge that invoice (its attempt_count): a payment failed. An
    # incomplete one without a payment method has none: nothing failed, it waits.
    payment_attempted: bool = False
    # The Stripe id, to confirm with Stripe that it is still held (billing's checkout).
    stripe_subscription_id: str = ""


@dataclass(frozen=True)
class InvoiceDTO(DTO):
    id: int
    stripe_invoice_id: str
    user_id: int
    user_email: str
    number: str | None
    status: str
    amount_due: int
    amount_paid: int
    # services.invoices.settlement: total < 0 is a credit to the customer's balance
    total: int
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
    # services.invoices.failed_payment_filter: open, a failed attempt, still owed
    payment_failed: bool = False
    # services.invoices.describe: "Pro plan (prorated)"; None when nothing says
    description: str | None = None


@dataclass(frozen=True)
class WebhookResult(DTO):
    """What the webhook route answers: the HTTP status and JSON body."""

    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class SyncReport(DTO):
    """What a reconciliation pass looked at and changed."""

    users: int = 0
    customers_linked: int = 0
    subscriptions: int = 0
    subscriptions_changed: int = 0
    invoices: int = 0
    invoices_changed: int = 0
    balances_changed: int = 0  # customers whose stored credit balance changed
    errors: tuple[str, ...] = ()
