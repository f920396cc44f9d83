"""The seed's in-process API (`core/usage_meter.py`), kept working on top of `metering`."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from billing_app.services import metering
from billing_app.services.dto import RecordResult


def record_token_usage(
    session: Session,
    user_id: int,
    tokens: int,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> RecordResult:
    return metering.record(session, user_id, "tokens", tokens, idempotency_key, metadata)


def record_api_call_usage(
    session: Session,
    user_id: int,
    calls: int = 1,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> RecordResult:
    return metering.record(session, user_id, "api_calls", calls, idempotency_key, metadata)


def record_scraping_task_usage(
    session: Session,
    user_id: int,
    tasks: int = 1,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> RecordResult:
    return metering.record(session, user_id, "scraping_tasks", tasks, idempotency_key, metadata)


def _check(session: Session, user_id: int, metric: str, quantity: int) -> tuple[bool, str | None]:
    result = metering.check(session, user_id, metric, quantity)
    return result.allowed, result.reason


def check_token_quota(
    session: Session, user_id: int, requested_tokens: int = 1
) -> tuple[bool, str | None]:
    """`(allowed, error)` as in the seed: error is None when allowed."""
    return _check(session, user_id, "tokens", requested_tokens)


def check_api_call_quota(
    session: Session, user_id: int, requested_calls: int = 1
) -> tuple[bool, str | None]:
    return _check(session, user_id, "api_calls", requested_calls)


def check_scraping_task_quota(
    session: Session, user_id: int, requested_tasks: int = 1
) -> tuple[bool, str | None]:
    return _check(session, user_id, "scraping_tasks", requested_tasks)
