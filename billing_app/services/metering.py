"""The metering core: record usage, check quotas, and consume atomically.

Every write is one transaction holding the event and its counter bump together,
so an acknowledged event is never lost or counted twice. A quota is enforced by a
single conditional upsert on the counter row, never by reading then writing.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from billing_app.clock import as_utc, utcnow
from billing_app.db import SQLITE_BEGIN
from billing_app.errors import (
    IdempotencyConflict,
    InvalidQuantity,
    QuotaExceeded,
    UnknownMetric,
    UserNotFound,
    ValidationFailed,
)
from billing_app.metrics import MAX_QUANTITY, METRICS
from billing_app.models import Quota, UsageCounter, UsageEvent, User
from billing_app.plans import get_catalog
from billing_app.services import quotas
from billing_app.services.dto import (
    CheckResult,
    DailyUsage,
    MeterStatus,
    RecordResult,
    UsageEventDTO,
)
from billing_app.services.periods import Period, calendar_month, period_for

MAX_KEY_LENGTH = 255
MAX_METADATA_BYTES = 16_384
# Events may arrive a little early from a service whose clock runs ahead.
FUTURE_SKEW = timedelta(minutes=5)

_events = UsageEvent.__table__  # type: ignore[attr-defined]
_counters = UsageCounter.__table__  # type: ignore[attr-defined]
_quotas = Quota.__table__  # type: ignore[attr-defined]
_users = User.__table__  # type: ignore[attr-defined]


# ---------------------------------------------------------------- validation


def validate_metric(metric: Any) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise UnknownMetric(
            f"Unknown metric {metric!r}; expected one of: {', '.join(METRICS)}.",
            metric=metric if isinstance(metric, str) else None,
        )
    return metric


def validate_quantity(quantity: Any) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidQuantity("Quantity must be a whole number.", quantity=None)
    if quantity <= 0:
        raise InvalidQuantity("Quantity must be greater than 0.", quantity=quantity)
    if quantity > MAX_QUANTITY:
        raise InvalidQuantity(
            f"Quantity must be at most {MAX_QUANTITY:,} per event.", quantity=quantity
        )
    return quantity


def _validate_key(key: Any) -> str:
    if key is None:
        return uuid.uuid4().hex
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"Idempotency key must be a non-empty string of at most {MAX_KEY_LENGTH} characters.",
            field="idempotency_key",
        )
    return key


def _validate_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ValidationFailed("Metadata must be a JSON object.", field="metadata")
    try:
        size = len(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError):
        raise ValidationFailed("Metadata must be JSON-serialisable.", field="metadata") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationFailed(
            f"Metadata is larger than {MAX_METADATA_BYTES:,} bytes.", field="metadata"
        )
    return metadata


def _validate_occurred_at(occurred_at: Any, now: datetime) -> datetime:
    if occurred_at is None:
        return now
    if not isinstance(occurred_at, datetime):
        raise ValidationFailed("occurred_at must be a datetime.", field="occurred_at")
    occurred_at = as_utc(occurred_at)
    if occurred_at > now + FUTURE_SKEW:
        raise ValidationFailed("occurred_at is in the future.", field="occurred_at")
    return occurred_at


def _validate_user_id(user_id: Any) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise ValidationFailed("user_id must be a positive whole number.", field="user_id")
    return user_id


# ---------------------------------------------------------------- helpers


def _insert(session: Session, table: sa.Table) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


class _Statements:
    """The hot path's statements, built once per dialect.

    Profiling showed that building `insert(...).on_conflict_do_update(...)` per call
    (and `excluded`, which is rebuilt on each access) cost more than executing it. Built
    once, SQLAlchemy's compiled cache hits with a cheap cache key, and the statements
    run on the session's Core connection (no ORM machinery).
    """

    def __init__(self, dialect: str) -> None:
        ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
        e, c = _events.c, _counters.c
        self.limit = sa.select(_quotas.c.limit).where(
            _quotas.c.user_id == sa.bindparam("user_id"),
            _quotas.c.metric == sa.bindparam("metric"),
        )
        self.user_exists = sa.select(_users.c.id).where(_users.c.id == sa.bindparam("user_id"))
        self.used = sa.select(c.used).where(
            c.user_id == sa.bindparam("user_id"),
            c.metric == sa.bindparam("metric"),
            c.period_start == sa.bindparam("period_start", type_=c.period_start.type),
        )
        self.append = (
            ins(_events)
            .values({col: sa.bindparam(col, type_=e[col].type) for col in _EVENT_COLS})
            .on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
            .returning(e.id)
        )
        bump = ins(_counters).values(
            {col: sa.bindparam(col, type_=c[col].type) for col in _COUNTER_COLS}
        )
        set_ = {"used": c.used + bump.excluded.used}
        keys = ["user_id", "metric", "period_start"]
        self.bump = bump.on_conflict_do_update(index_elements=keys, set_=set_).returning(c.used)
        self.bump_within = bump.on_conflict_do_update(
            index_elements=keys,
            set_=set_,
            where=c.used + bump.excluded.used <= sa.bindparam("limit", type_=sa.BigInteger()),
        ).returning(c.used)


_EVENT_COLS = (
    "user_id", "metric", "quantity", "occurred_at", "recorded_at", "idempotency_key", "metadata"
)  # fmt: skip
_COUNTER_COLS = ("user_id", "metric", "period_start", "period_end", "used")
_STATEMENTS: dict[str, _Statements] = {}


def _stmts(session: Session) -> tuple[_Statements, sa.Connection]:
    """The dialect's prebuilt statements and the session's connection (begins its transaction)."""
    conn = session.connection()
    name = conn.dialect.name
    st = _STATEMENTS.get(name)
    if st is None:
        st = _STATEMENTS[name] = _Statements(name)
    return st, conn


def _limit(session: Session, user_id: int, metric: str) -> int:
    st, conn = _stmts(session)
    limit = conn.execute(st.limit, {"user_id": user_id, "metric": metric}).scalar()
    if limit is None:
        if conn.execute(st.user_exists, {"user_id": user_id}).scalar() is None:
            raise UserNotFound(f"No user with id {user_id}.", user_id=user_id)
        return get_catalog()["free"].limit_for(metric)
    return limit


def _status(metric: str, used: int, limit: int, period: Period) -> MeterStatus:
    unlimited = limit == 0
    return MeterStatus(
        metric=metric,
        label=METRICS[metric].label,
        used=used,
        limit=limit,
        unlimited=unlimited,
        remaining=None if unlimited else max(limit - used, 0),
        percent=0.0 if unlimited else round(min(used / limit * 100, 100.0), 1),
        period_start=period.start,
        resets_at=period.end,
    )


def _event_dto(row: Any) -> UsageEventDTO:
    return UsageEventDTO(
        id=row.id,
        user_id=row.user_id,
        metric=row.metric,
        quantity=row.quantity,
        occurred_at=as_utc(row.occurred_at),
        recorded_at=as_utc(row.recorded_at),
        idempotency_key=row.idempotency_key,
        metadata=row.meta,
    )


def _used(session: Session, user_id: int, metric: str, period: Period) -> int:
    st, conn = _stmts(session)
    params = {"user_id": user_id, "metric": metric, "period_start": period.start}
    return conn.execute(st.used, params).scalar() or 0


def _duplicate(session: Session, user_id: int, key: str, metric: str, quantity: int) -> Any:
    """The first result for a repeated key (after this transaction rolled back)."""
    session.rollback()
    first = session.exec(
        select(UsageEvent).where(UsageEvent.user_id == user_id, UsageEvent.idempotency_key == key)
    ).one()
    if first.metric != metric or first.quantity != quantity:
        raise IdempotencyConflict(
            "This idempotency key was already used for a different usage event "
            f"({first.quantity} {first.metric}).",
            idempotency_key=key,
        )
    period = period_for(session, user_id, first.occurred_at)
    used = _used(session, user_id, metric, period)
    limit = _limit(session, user_id, metric)
    session.commit()
    return RecordResult(
        event=_event_dto(first),
        duplicate=True,
        over_limit=limit > 0 and used > limit,
        status=_status(metric, used, limit, period),
    )


def _append_event(
    session: Session,
    user_id: int,
    metric: str,
    quantity: int,
    key: str,
    metadata: dict | None,
    occurred_at: datetime,
    now: datetime,
) -> int | None:
    """Insert the event; None when (user, key) already exists."""
    st, conn = _stmts(session)
    params = {
        "user_id": user_id,
        "metric": metric,
        "quantity": quantity,
        "occurred_at": occurred_at,
        "recorded_at": now,
        "idempotency_key": key,
        "metadata": metadata,
    }
    try:
        return conn.execute(st.append, params).scalar()
    except sa.exc.IntegrityError as err:
        # Only a missing user can fail here (foreign key); the key conflict is handled above.
        session.rollback()
        raise UserNotFound(f"No user with id {user_id}.", user_id=user_id) from err


def _bump_counter(
    session: Session, user_id: int, metric: str, quantity: int, period: Period, limit: int | None
) -> int | None:
    """Add to the period's counter in one statement; with `limit`, only if it stays within.

    Returns the new total, or None when the limit would be passed (nothing changed).
    """
    st, conn = _stmts(session)
    params = {
        "user_id": user_id,
        "metric": metric,
        "period_start": period.start,
        "period_end": period.end,
        "used": quantity,
    }
    if limit:
        params["limit"] = limit
        return conn.execute(st.bump_within, params).scalar()
    return conn.execute(st.bump, params).scalar()


# PostgreSQL: one thread per process at a time holds a given counter row's lock (from the
# bump to the commit). Measured on one hot row from 64 clients over 5 workers, 64
# transactions queueing on the row lock convoyed (p99 1.5 s, 179/s); threads now queue
# on a cheap in-process lock first, so at most one transaction per process waits on the
# row. Striped: unrelated counters rarely share a stripe, and then only for a bump+commit.
# The guarantee is unchanged: the conditional upsert still decides, across processes.
_ROW_STRIPES = tuple(threading.Lock() for _ in range(64))


@contextmanager
def _row_turn(session: Session, user_id: int, metric: str) -> Iterator[None]:
    if session.get_bind().dialect.name != "postgresql":
        yield  # SQLite: writers are already serialised (billing_app.db)
        return
    with _ROW_STRIPES[hash((user_id, metric)) % len(_ROW_STRIPES)]:
        yield


# ---------------------------------------------------------------- public API


def record(
    session: Session,
    user_id: int,
    metric: str,
    quantity: int,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> RecordResult:
    """Append a usage event and bump its counter, in one transaction.

    The work already happened, so going past the limit is allowed and reported
    (`over_limit`). A repeated idempotency key returns the first result.
    """
    user_id = _validate_user_id(user_id)
    metric = validate_metric(metric)
    quantity = validate_quantity(quantity)
    key = _validate_key(idempotency_key)
    metadata = _validate_metadata(metadata)
    now = utcnow()
    occurred_at = _validate_occurred_at(occurred_at, now)
    try:
        limit = _limit(session, user_id, metric)
        period = period_for(session, user_id, occurred_at)
        event_id = _append_event(
            session, user_id, metric, quantity, key, metadata, occurred_at, now
        )
        if event_id is None:
            return _duplicate(session, user_id, key, metric, quantity)
        with _row_turn(session, user_id, metric):
            used = _bump_counter(session, user_id, metric, quantity, period, None)
            session.commit()
    except BaseException:
        session.rollback()
        raise
    assert used is not None
    return RecordResult(
        event=UsageEventDTO(event_id, user_id, metric, quantity, occurred_at, now, key, metadata),
        duplicate=False,
        over_limit=limit > 0 and used > limit,
        status=_status(metric, used, limit, period),
    )


def consume(
    session: Session,
    user_id: int,
    metric: str,
    quantity: int,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> RecordResult:
    """Atomically check the quota and record the usage, or raise QuotaExceeded.

    Under any concurrency the counter never passes the limit: the bump is one
    conditional upsert, and a refused bump rolls back the event with it.
    """
    user_id = _validate_user_id(user_id)
    metric = validate_metric(metric)
    quantity = validate_quantity(quantity)
    key = _validate_key(idempotency_key)
    metadata = _validate_metadata(metadata)
    now = utcnow()
    try:
        limit = _limit(session, user_id, metric)
        period = period_for(session, user_id, now)
        used: int | None = None
        if not limit or quantity <= limit:
            event_id = _append_event(session, user_id, metric, quantity, key, metadata, now, now)
            if event_id is None:
                return _duplicate(session, user_id, key, metric, quantity)
            with _row_turn(session, user_id, metric):
                used = _bump_counter(session, user_id, metric, quantity, period, limit)
                if used is not None:
                    session.commit()  # inside the turn: the row lock ends with the commit
        if used is None:
            session.rollback()
            current = _used(session, user_id, metric, period)
            session.commit()
            status = _status(metric, current, limit, period)
            raise QuotaExceeded(
                _reason(metric, limit, current, quantity, period),
                metric=metric,
                requested=quantity,
                used=current,
                limit=limit,
                remaining=status.remaining,
                resets_at=period.end.isoformat(),
            )
    except BaseException:
        session.rollback()
        raise
    return RecordResult(
        event=UsageEventDTO(event_id, user_id, metric, quantity, now, now, key, metadata),
        duplicate=False,
        over_limit=False,
        status=_status(metric, used, limit, period),
    )


def _reason(metric: str, limit: int, used: int, quantity: int, period: Period) -> str:
    m = METRICS[metric]
    resets = period.end.date().isoformat()
    if used >= limit:
        return f"Monthly {m.singular} limit of {limit:,} reached; resets {resets}."
    return (
        f"Requested {quantity:,} {m.plural if quantity != 1 else m.singular} but only "
        f"{limit - used:,} of the monthly {m.singular} limit of {limit:,} remain; resets {resets}."
    )


def _begin_read(session: Session) -> None:
    """Start a read transaction: on SQLite DEFERRED, so a check never queues behind writers."""
    if not session.in_transaction():
        session.connection(execution_options={SQLITE_BEGIN: "DEFERRED"})


def check(session: Session, user_id: int, metric: str, quantity: int = 1) -> CheckResult:
    """Would `quantity` more fit in the quota? Reads only."""
    user_id = _validate_user_id(user_id)
    metric = validate_metric(metric)
    quantity = validate_quantity(quantity)
    now = utcnow()
    _begin_read(session)
    limit = _limit(session, user_id, metric)
    period = period_for(session, user_id, now)
    used = _used(session, user_id, metric, period)
    session.rollback()  # end the read transaction promptly
    unlimited = limit == 0
    allowed = unlimited or used + quantity <= limit
    return CheckResult(
        allowed=allowed,
        metric=metric,
        requested=quantity,
        used=used,
        limit=limit,
        unlimited=unlimited,
        remaining=None if unlimited else max(limit - used, 0),
        resets_at=period.end,
        reason=None if allowed else _reason(metric, limit, used, quantity, period),
    )


def summary(session: Session, user_id: int) -> list[MeterStatus]:
    """Every metric's used / limit / percent / resets_at for the current period."""
    user_id = _validate_user_id(user_id)
    _begin_read(session)
    if session.get(User, user_id) is None:
        raise UserNotFound(f"No user with id {user_id}.", user_id=user_id)
    period = period_for(session, user_id, utcnow())
    used = dict(
        session.exec(
            select(UsageCounter.metric, UsageCounter.used).where(
                UsageCounter.user_id == user_id, UsageCounter.period_start == period.start
            )
        ).all()
    )
    limits = {q.metric: q.limit for q in quotas.get_quotas(session, user_id)}
    session.rollback()
    return [_status(m, used.get(m, 0), limits[m], period) for m in METRICS]


def daily_history(session: Session, user_id: int, period: Period | None = None) -> list[DailyUsage]:
    """Usage per day and metric over a period (default: the current one), zero-filled."""
    user_id = _validate_user_id(user_id)
    now = utcnow()
    period = period or period_for(session, user_id, now)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        day = sa.func.to_char(sa.func.timezone("UTC", col(UsageEvent.occurred_at)), "YYYY-MM-DD")
    else:
        day = sa.func.strftime("%Y-%m-%d", col(UsageEvent.occurred_at))
    rows = session.exec(
        select(day.label("day"), UsageEvent.metric, sa.func.sum(UsageEvent.quantity))
        .where(
            UsageEvent.user_id == user_id,
            col(UsageEvent.occurred_at) >= period.start,
            col(UsageEvent.occurred_at) < period.end,
        )
        .group_by(day, UsageEvent.metric)
    ).all()
    session.rollback()
    totals = {(d, m): int(q) for d, m, q in rows}
    out: list[DailyUsage] = []
    cursor = period.start
    last = min(period.end, max(now, period.start + timedelta(days=1)))
    while cursor < last:
        d = cursor.date().isoformat()
        out.extend(DailyUsage(d, m, totals.get((d, m), 0)) for m in METRICS)
        cursor += timedelta(days=1)
    return out


def current_period(session: Session, user_id: int) -> Period:
    return period_for(session, user_id, utcnow())


__all__ = [
    "Period",
    "calendar_month",
    "check",
    "consume",
    "current_period",
    "daily_history",
    "record",
    "summary",
    "validate_metric",
    "validate_quantity",
]
