"""SQLModel tables. Importing this package registers every table on SQLModel.metadata."""

from billing_app.models.tables import (
    ROLES,
    SUBSCRIPTION_STATUSES,
    ApiKey,
    AuthSession,
    Invoice,
    LoginAttempt,
    Quota,
    QuotaAudit,
    SignupAttempt,
    StripeEvent,
    Subscription,
    UsageCounter,
    UsageDaily,
    UsageEvent,
    User,
)

__all__ = [
    "ROLES",
    "SUBSCRIPTION_STATUSES",
    "ApiKey",
    "AuthSession",
    "Invoice",
    "LoginAttempt",
    "Quota",
    "QuotaAudit",
    "SignupAttempt",
    "StripeEvent",
    "Subscription",
    "UsageCounter",
    "UsageDaily",
    "UsageEvent",
    "User",
]
