"""The billing data model: plain SQLModel tables (rx.Model is deprecated in Reflex 0.10).

Times are timezone-aware UTC; money is integer minor units.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from billing_app.clock import utcnow
from billing_app.models.types import BigIntPK, JSONType, UTCDateTime

SUBSCRIPTION_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
)
ROLES = ("user", "admin")


class User(SQLModel, table=True):
    __tablename__ = "user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, sa_column_kwargs={"unique": True}, index=False)
    display_name: str = Field(default="", max_length=200)
    role: str = Field(default="user", max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    stripe_customer_id: str | None = Field(
        default=None, max_length=255, sa_column_kwargs={"unique": True}
    )
    # The Stripe customer's balance (minor units; negative: a credit) and currency, as its
    # newest customer.created/updated event had them (`stripe_balance_at`: that event's
    # `created`). NULL: no such event seen; the invoices' ending balance stands in.
    stripe_balance: int | None = Field(default=None, sa_type=sa.BigInteger())
    stripe_balance_currency: str | None = Field(default=None, max_length=3)
    stripe_balance_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    # argon2 hash; None for SSO-only accounts.
    password_hash: str | None = Field(default=None, max_length=255)
    oidc_subject: str | None = Field(default=None, max_length=255)

    __table_args__ = (sa.CheckConstraint("role IN ('user', 'admin')", name="ck_user_role"),)


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    stripe_subscription_id: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    stripe_price_id: str | None = Field(default=None, max_length=255)
    plan: str = Field(default="free", max_length=32)
    status: str = Field(max_length=32)
    current_period_start: datetime | None = Field(default=None, sa_type=UTCDateTime())
    current_period_end: datetime | None = Field(default=None, sa_type=UTCDateTime())
    cancel_at_period_end: bool = Field(default=False)
    # When Stripe will cancel it: the customer portal (flexible billing mode) schedules a
    # cancel here and leaves cancel_at_period_end false; the API may set an earlier date.
    cancel_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    canceled_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    # When the subscription entered past_due; the grace period counts from here.
    past_due_since: datetime | None = Field(default=None, sa_type=UTCDateTime())
    # The reset rule of the current period ("billing_period" or "calendar_month"): its
    # plan's when the period began. A plan change mid-period takes its own rule at the
    # next period, so usage keeps counting where it was (NULL: the plan's, older rows).
    period_reset: str | None = Field(default=None, max_length=16)
    # Stripe's billing_cycle_anchor: the day its monthly/yearly periods return to (Mar 31:
    # Jun 30 -> Sep 30 -> Dec 31), which the stored period's two ends cannot tell.
    billing_cycle_anchor: datetime | None = Field(default=None, sa_type=UTCDateTime())
    # `created` of the newest Stripe event applied: older events never overwrite newer state.
    updated_from_stripe_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)

    __table_args__ = (
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in SUBSCRIPTION_STATUSES) + ")",
            name="ck_subscription_status",
        ),
    )


class Quota(SQLModel, table=True):
    __tablename__ = "quota"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE")
    metric: str = Field(max_length=64)
    # Effective limit; 0 means unlimited (the seed's rule).
    limit: int = Field(sa_type=sa.BigInteger(), nullable=False)
    # "plan" or "admin": an admin override wins over the plan until cleared.
    source: str = Field(default="plan", max_length=16)
    # What the plan grants, kept so clearing an override restores it.
    plan_limit: int = Field(sa_type=sa.BigInteger(), nullable=False)
    reason: str | None = Field(default=None, max_length=500)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)

    __table_args__ = (
        sa.UniqueConstraint("user_id", "metric", name="uq_quota_user_metric"),
        sa.CheckConstraint('"limit" >= 0', name="ck_quota_limit"),
        sa.CheckConstraint("source IN ('plan', 'admin')", name="ck_quota_source"),
    )


class QuotaAudit(SQLModel, table=True):
    """Every admin change to a quota, with who and why."""

    __tablename__ = "quota_audit"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    metric: str = Field(max_length=64)
    old_limit: int | None = Field(default=None, sa_type=sa.BigInteger())
    new_limit: int | None = Field(default=None, sa_type=sa.BigInteger())
    reason: str = Field(max_length=500)
    actor_user_id: int | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class UsageEvent(SQLModel, table=True):
    """Append-only record of metered work (a cancel marks a row, never deletes it).

    `user_id` has no foreign key: a trigger deletes a deleted user's events, and every
    write looks its users up in its own transaction (migration 0006 says why and how)."""

    __tablename__ = "usage_event"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    user_id: int
    metric: str = Field(max_length=64)
    quantity: int = Field(sa_type=sa.BigInteger(), nullable=False)
    occurred_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    idempotency_key: str = Field(max_length=255)
    meta: dict | None = Field(default=None, sa_column=sa.Column("metadata", JSONType))
    # Set by a cancel (metering.cancel): the row stays so a retry of its write is still a
    # duplicate, and its quantity is no longer in the counters (migration 0014).
    canceled_at: datetime | None = Field(default=None, sa_type=UTCDateTime())

    __table_args__ = (
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_usage_event_user_key"),
        sa.CheckConstraint("quantity > 0", name="ck_usage_event_quantity"),
    )


class UsageCounter(SQLModel, table=True):
    """Running total per user, metric and period: what quota checks read (O(1)).

    `day_used` is the part of `used` from `day` (UTC), the day of its latest write: a
    write on a later day first moves it into usage_daily (a trigger, migration 0008),
    so the daily chart costs no second row per write."""

    __tablename__ = "usage_counter"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE")
    metric: str = Field(max_length=64)
    period_start: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    period_end: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    used: int = Field(default=0, sa_type=sa.BigInteger(), nullable=False)
    day: date | None = Field(default=None)
    day_used: int = Field(
        default=0, sa_type=sa.BigInteger(), nullable=False, sa_column_kwargs={"server_default": "0"}
    )

    __table_args__ = (
        sa.UniqueConstraint("user_id", "metric", "period_start", name="uq_usage_counter_period"),
        sa.CheckConstraint("used >= 0", name="ck_usage_counter_used"),
        # Room in each page for a bumped row's new version: PostgreSQL then updates it in
        # place, without new index entries (migration 0004).
        {"postgresql_with": {"fillfactor": 70}},
    )


class UsageDaily(SQLModel, table=True):
    """Usage per user, metric, period and UTC day, with the counter's `day_used`: what
    the daily chart reads, so a user with millions of events costs it a few rows
    (migration 0008). Written when a counter's day closes, and for a write dated
    another day than its own, in the transaction that bumps the counter and after it:
    on PostgreSQL the counter's row lock covers the day's row too."""

    __tablename__ = "usage_daily"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE")
    metric: str = Field(max_length=64)
    period_start: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    day: date = Field(nullable=False)
    quantity: int = Field(default=0, sa_type=sa.BigInteger(), nullable=False)

    __table_args__ = (
        sa.UniqueConstraint(
            "user_id", "metric", "period_start", "day", name="uq_usage_daily_period_day"
        ),
        sa.CheckConstraint("quantity >= 0", name="ck_usage_daily_quantity"),
        {"postgresql_with": {"fillfactor": 70}},  # as usage_counter (migration 0004)
    )


class Invoice(SQLModel, table=True):
    __tablename__ = "invoice"

    id: int | None = Field(default=None, primary_key=True)
    stripe_invoice_id: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    stripe_subscription_id: str | None = Field(default=None, max_length=255)
    number: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=32, index=True)
    amount_due: int = Field(default=0, sa_type=sa.BigInteger(), nullable=False)
    amount_paid: int = Field(default=0, sa_type=sa.BigInteger(), nullable=False)
    currency: str = Field(default="usd", max_length=3)
    period_start: datetime | None = Field(default=None, sa_type=UTCDateTime())
    period_end: datetime | None = Field(default=None, sa_type=UTCDateTime())
    hosted_invoice_url: str | None = Field(default=None, max_length=2048)
    invoice_pdf: str | None = Field(default=None, max_length=2048)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    updated_from_stripe_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    # Stripe's attempt_count: an open invoice with attempts is a failed payment.
    attempt_count: int = Field(default=0, nullable=False, sa_column_kwargs={"server_default": "0"})
    # Stripe's total (negative: a credit to the customer's balance, e.g. a downgrade's
    # proration), what is left to pay, and the customer balance before and after (negative:
    # credit). NULL on rows older than migration 0013 until their next event or sync.
    total: int | None = Field(default=None, sa_type=sa.BigInteger())
    amount_remaining: int | None = Field(default=None, sa_type=sa.BigInteger())
    starting_balance: int | None = Field(default=None, sa_type=sa.BigInteger())
    ending_balance: int | None = Field(default=None, sa_type=sa.BigInteger())
    # What it bills for, from its lines ("Pro plan (prorated)"); NULL before migration 0017.
    description: str | None = Field(default=None, max_length=500)


class StripeEvent(SQLModel, table=True):
    """Every webhook event received, for exactly-once handling and replay."""

    __tablename__ = "stripe_event"

    id: int | None = Field(default=None, primary_key=True)
    stripe_event_id: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    type: str = Field(max_length=128, index=True)
    created: datetime | None = Field(default=None, sa_type=UTCDateTime())
    # JSON, not JSONB: the event as Stripe sent it, never queried inside. Storing it as
    # text skips JSONB's parse: 70-210 µs per insert of a 4.6 KB event (finding 38).
    payload: dict | None = Field(default=None, sa_type=sa.JSON())
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    error: str | None = Field(default=None, sa_type=sa.Text())
    attempts: int = Field(default=0)


class ApiKey(SQLModel, table=True):
    """A key for services or users; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True, ondelete="CASCADE")
    service_name: str | None = Field(default=None, max_length=200)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=32, index=True)
    secret_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    scopes: list[str] = Field(default_factory=list, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime())

    __table_args__ = (
        sa.CheckConstraint(
            "(user_id IS NOT NULL) OR (service_name IS NOT NULL)", name="ck_api_key_owner"
        ),
    )


class AuthSession(SQLModel, table=True):
    """A signed-in browser session; only the SHA-256 of the token is stored."""

    __tablename__ = "auth_session"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    user_agent: str | None = Field(default=None, max_length=500)
    ip: str | None = Field(default=None, max_length=64)


class LoginAttempt(SQLModel, table=True):
    """Failed sign-ins, counted per account and per IP for rate limiting (shared by workers).
    `ip` is auth.limit_key's: an IPv4 address or an IPv6 /64."""

    __tablename__ = "login_attempt"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    email: str = Field(max_length=320)
    ip: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)

    __table_args__ = (
        sa.Index("ix_login_attempt_email_created", "email", "created_at"),
        sa.Index("ix_login_attempt_ip_created", "ip", "created_at"),
    )


class SignupAttempt(SQLModel, table=True):
    """Sign-ups, counted per client IP for rate limiting (shared by workers).
    `ip` is auth.limit_key's: an IPv4 address or an IPv6 /64."""

    __tablename__ = "signup_attempt"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    ip: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)

    __table_args__ = (sa.Index("ix_signup_attempt_ip_created", "ip", "created_at"),)


# Admin user search: `email LIKE 'abc%'` uses this index on PostgreSQL whatever the collation.
sa.Index(
    "ix_user_email_pattern",
    User.__table__.c.email,  # type: ignore[attr-defined]
    postgresql_ops={"email": "varchar_pattern_ops"},
)
# Admin sort by sign-up date.
sa.Index("ix_user_created_at", User.__table__.c.created_at)  # type: ignore[attr-defined]
# The users list's "Quota override" filter: the few users with an admin's quota row
# (migration 0016). Partial: PostgreSQL's generic plans use it only for a literal 'admin'.
_ADMIN_QUOTA = sa.text("source = 'admin'")
sa.Index(
    "ix_quota_admin_user_id",
    Quota.__table__.c.user_id,  # type: ignore[attr-defined]
    postgresql_where=_ADMIN_QUOTA,
    sqlite_where=_ADMIN_QUOTA,
)
# No index holds usage_counter.used: every usage write changes it (migration 0003).
