"""Plain data returned by services: what the API serialises and Reflex State holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


class DTO:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


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


@dataclass(frozen=True)
class UsageEventDTO(DTO):
    id: int
    user_id: int
    metric: str
    quantity: int
    occurred_at: datetime
    recorded_at: datetime
    idempotency_key: str
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class RecordResult(DTO):
    event: UsageEventDTO
    duplicate: bool
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
