"""Record many usage events at once: validated all or nothing, stored in ONE transaction.

Events go in as multi-row INSERT ... ON CONFLICT DO NOTHING (a repeated idempotency
key is a duplicate, not an error); counters get one upsert per (user, metric, period),
issued in sorted order so concurrent batches lock counter rows in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from billing_app.clock import utcnow
from billing_app.errors import BillingError, IdempotencyConflict, ValidationFailed
from billing_app.models import Quota, User
from billing_app.plans import get_catalog
from billing_app.services.dto import RecordResult, UsageEventDTO
from billing_app.services.metering import (
    _counters,
    _events,
    _insert,
    _status,
    _validate_key,
    _validate_metadata,
    _validate_occurred_at,
    _validate_user_id,
    validate_metric,
    validate_quantity,
)
from billing_app.services.periods import Period, period_for

MAX_BATCH = 1000
_CHUNK = 500  # keys per duplicate lookup (well under SQLite's and PostgreSQL's bind limits)
_APPEND_MANY: dict[str, Any] = {}


def _append_many(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING, built once per dialect."""
    stmt = _APPEND_MANY.get(dialect)
    if stmt is None:
        ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = _APPEND_MANY[dialect] = (
            ins(_events)
            .on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
            .returning(_events.c.id, _events.c.user_id, _events.c.idempotency_key)
        )
    return stmt


@dataclass(frozen=True)
class BatchEvent:
    user_id: int
    metric: str
    quantity: int
    idempotency_key: str
    metadata: dict[str, Any] | None
    occurred_at: datetime


def validate_batch(events: list[dict[str, Any]]) -> list[BatchEvent]:
    """Check every event; raise one ValidationFailed listing each bad event by index."""
    if not isinstance(events, list) or not events:
        raise ValidationFailed("A batch needs at least one event.", field="events")
    if len(events) > MAX_BATCH:
        raise ValidationFailed(
            f"A batch holds at most {MAX_BATCH:,} events; got {len(events):,}.", field="events"
        )
    now = utcnow()
    out: list[BatchEvent] = []
    errors: list[dict[str, Any]] = []
    seen: dict[tuple[int, str], int] = {}
    for i, raw in enumerate(events):
        try:
            if not isinstance(raw, dict):
                raise ValidationFailed("Each event must be a JSON object.")
            ev = BatchEvent(
                user_id=_validate_user_id(raw.get("user_id")),
                metric=validate_metric(raw.get("metric")),
                quantity=validate_quantity(raw.get("quantity")),
                idempotency_key=_validate_key(raw.get("idempotency_key")),
                metadata=_validate_metadata(raw.get("metadata")),
                occurred_at=_validate_occurred_at(raw.get("occurred_at"), now),
            )
        except BillingError as err:
            errors.append({"index": i, **err.to_dict()})
            continue
        first = seen.get((ev.user_id, ev.idempotency_key))
        if first is not None:
            prev = out[first]
            if (prev.metric, prev.quantity) != (ev.metric, ev.quantity):
                errors.append(
                    {
                        "index": i,
                        "code": IdempotencyConflict.code,
                        "message": f"Idempotency key repeats event {first} with different values.",
                        "field": "idempotency_key",
                    }
                )
                continue
        else:
            seen[(ev.user_id, ev.idempotency_key)] = len(out)
        out.append(ev)
    if errors:
        raise ValidationFailed(
            f"{len(errors)} of {len(events)} events are invalid; nothing was recorded.",
            events=errors,
        )
    return out


def _limits(session: Session, events: list[BatchEvent]) -> dict[tuple[int, str], int]:
    """Effective limits for every (user, metric) in the batch, in one query."""
    ids = sorted({e.user_id for e in events})
    rows = session.exec(
        select(col(User.id), Quota.metric, Quota.limit)
        .select_from(User)
        .join(Quota, col(Quota.user_id) == User.id, isouter=True)
        .where(col(User.id).in_(ids))
    ).all()
    found = {r[0] for r in rows}
    missing = [uid for uid in ids if uid not in found]
    if missing:
        bad = [
            {"index": i, "code": "user_not_found", "message": f"No user with id {e.user_id}."}
            for i, e in enumerate(events)
            if e.user_id in missing
        ]
        raise ValidationFailed(
            f"{len(bad)} of {len(events)} events name an unknown user; nothing was recorded.",
            events=bad,
        )
    free = get_catalog()["free"]
    limits: dict[tuple[int, str], int] = {}
    for e in events:
        limits[(e.user_id, e.metric)] = free.limit_for(e.metric)
    for uid, metric, limit in rows:
        if metric is not None:
            limits[(uid, metric)] = limit
    return limits


def record_batch(session: Session, events: list[BatchEvent]) -> list[RecordResult]:
    """Store validated events in one transaction; a result per event, duplicates marked.

    Either every new event and its counter bump commits, or nothing does.
    """
    if not events:
        return []
    now = utcnow()
    try:
        limits = _limits(session, events)
        periods: dict[tuple[int, datetime], Period] = {}

        def period(e: BatchEvent) -> Period:
            k = (e.user_id, e.occurred_at.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
            p = periods.get(k)
            if p is None or not p.start <= e.occurred_at < p.end:
                p = periods[k] = period_for(session, e.user_id, e.occurred_at)
            return p

        # 1. events: multi-row insert, duplicates skipped; RETURNING names the new ones
        unique: dict[tuple[int, str], BatchEvent] = {}
        for e in events:
            unique.setdefault((e.user_id, e.idempotency_key), e)
        rows = [
            {
                "user_id": e.user_id,
                "metric": e.metric,
                "quantity": e.quantity,
                "occurred_at": e.occurred_at,
                "recorded_at": now,
                "idempotency_key": e.idempotency_key,
                "metadata": e.metadata,
            }
            # Sorted: concurrent batches sharing keys wait on each other in one order (no deadlock).
            for _, e in sorted(unique.items())
        ]
        new_ids: dict[tuple[int, str], int] = {}
        # One prebuilt statement run as an executemany: SQLAlchemy batches it into
        # multi-row VALUES itself ("insertmanyvalues") from a cached compilation, where
        # building a 500-row VALUES statement per request cost most of the request.
        conn = session.connection()
        for id_, uid, key in conn.execute(_append_many(conn.dialect.name), rows):
            new_ids[(uid, key)] = id_

        # 2. the first result of every repeated key (stored earlier, or concurrently)
        old: dict[tuple[int, str], Any] = {}
        dup_keys = [k for k in unique if k not in new_ids]
        for start in range(0, len(dup_keys), _CHUNK):
            part = dup_keys[start : start + _CHUNK]
            cond = sa.tuple_(_events.c.user_id, _events.c.idempotency_key).in_(part)
            for row in session.execute(sa.select(_events).where(cond)):
                old[(row.user_id, row.idempotency_key)] = row
        for i, e in enumerate(events):
            prev = old.get((e.user_id, e.idempotency_key))
            if prev is not None and (prev.metric, prev.quantity) != (e.metric, e.quantity):
                raise IdempotencyConflict(
                    f"Event {i}: this idempotency key was already used for a different usage "
                    f"event ({prev.quantity} {prev.metric}); nothing was recorded.",
                    index=i,
                    idempotency_key=e.idempotency_key,
                )

        # 3. counters: one upsert per (user, metric, period), in a stable order
        totals: dict[tuple[int, str, datetime], int] = defaultdict(int)
        period_of: dict[tuple[int, str, datetime], Period] = {}
        for k, e in unique.items():
            if k in new_ids:
                p = period(e)
                totals[(e.user_id, e.metric, p.start)] += e.quantity
                period_of[(e.user_id, e.metric, p.start)] = p
        used: dict[tuple[int, str, datetime], int] = {}
        if totals:
            values = [
                {
                    "user_id": uid,
                    "metric": m,
                    "period_start": start,
                    "period_end": period_of[(uid, m, start)].end,
                    "used": q,
                }
                for (uid, m, start), q in sorted(totals.items())
            ]
            ins = _insert(session, _counters).values(values)
            stmt = ins.on_conflict_do_update(
                index_elements=["user_id", "metric", "period_start"],
                set_={"used": _counters.c.used + ins.excluded.used},
            ).returning(
                _counters.c.user_id, _counters.c.metric, _counters.c.period_start, _counters.c.used
            )
            for uid, m, start, u in session.execute(stmt):
                used[(uid, m, start)] = u

        # 4. current totals for the periods that only saw duplicates
        need = {
            (e.user_id, e.metric, period(e).start)
            for e in events
            if (e.user_id, e.metric, period(e).start) not in used
        }
        for uid, m, start in sorted(need):
            used[(uid, m, start)] = (
                session.execute(
                    sa.select(_counters.c.used).where(
                        _counters.c.user_id == uid,
                        _counters.c.metric == m,
                        _counters.c.period_start == start,
                    )
                ).scalar()
                or 0
            )
        session.commit()
    except BaseException:
        session.rollback()
        raise

    results: list[RecordResult] = []
    claimed: set[tuple[int, str]] = set()
    for e in events:
        k = (e.user_id, e.idempotency_key)
        limit = limits[(e.user_id, e.metric)]
        if k in new_ids and k not in claimed:
            claimed.add(k)
            dto = UsageEventDTO(
                new_ids[k], e.user_id, e.metric, e.quantity, e.occurred_at, now,
                e.idempotency_key, e.metadata,
            )  # fmt: skip
            duplicate = False
            p = period(e)
        else:
            # A repeat of an earlier event in this batch, or of one stored before.
            prev = old.get(k)
            if prev is not None:
                dto = UsageEventDTO(
                    prev.id, prev.user_id, prev.metric, prev.quantity, prev.occurred_at,
                    prev.recorded_at, prev.idempotency_key, prev._mapping["metadata"],
                )  # fmt: skip
                p = period(e)
            else:
                first = unique[k]
                dto = UsageEventDTO(
                    new_ids[k], first.user_id, first.metric, first.quantity, first.occurred_at,
                    now, first.idempotency_key, first.metadata,
                )  # fmt: skip
                p = period(first)
            duplicate = True
        u = used.get((e.user_id, e.metric, p.start), 0)
        results.append(
            RecordResult(
                event=dto,
                duplicate=duplicate,
                over_limit=limit > 0 and u > limit,
                status=_status(e.metric, u, limit, p),
            )
        )
    return results
