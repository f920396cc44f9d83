"""Usage ingestion and quota checks for services: the hot path.

The FastAPI routes below are the documented definition (OpenAPI) and serve session
callers; API-key callers take the same code through the plain-ASGI fast lane
(api/fast_lane.py). Both resolve the caller, then call the functions here: usage writes
go to the process's group-commit writer, reads and batches run on a worker thread.
Answers are pre-serialised JSONResponses (the response_model documents them).

A service key may act for any user (`user_id` required); a user's key or session
only for that user (`user_id` optional, must be its own).
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

import pydantic_core
import sqlalchemy.exc as sa_exc
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from billing_app.api import schemas as s
from billing_app.api.deps import require_principal, require_scope, resolve_user_id
from billing_app.clock import iso
from billing_app.db import read_connection, read_session, session_scope
from billing_app.errors import UserNotFound, ValidationFailed
from billing_app.services import metering, metering_batch, users
from billing_app.services.dto import CancelResult, Principal, RecordResult
from billing_app.services.usage_writer import writer

log = logging.getLogger("billing_app.api")

router = APIRouter(prefix="/api/billing", tags=["usage"], responses=s.errors(*s.COMMON, 404, 415))

_IDEMPOTENCY_DOC = (
    "Idempotency key: instead of the body's idempotency_key, or equal to it (another is 422)"
)
BATCH_KEY_MAX = metering_batch.BATCH_KEY_MAX
_BATCH_KEY_DOC = (
    "Keys every event without its own `idempotency_key` as `<key>#<index>`: a retried "
    "batch is then all duplicates"
)


def key_header(description: str, max_length: int = metering.MAX_KEY_LENGTH) -> Any:
    """The Idempotency-Key header with its limits in the schema. The service's rules
    enforce them, in both lanes alike (FastAPI's validation of headers is the route's
    only, which the fast lane skips)."""
    return Header(
        default=None,
        description=f"{description}. 1 to {max_length} characters, not blank: sent empty "
        "(or only whitespace) it is a 422 `validation_error` naming the header, never read "
        "as no key. A key that is not ASCII is read as UTF-8 (else as Latin-1)",
        json_schema_extra={"minLength": 1, "maxLength": max_length, "pattern": r"\S"},
    )


_PREFER_DOC = (
    "`return=minimal`: answer the counts only, without `results` (the answer's "
    "`Preference-Applied` header says so); less work for the server on large batches"
)


def record_out(r: RecordResult, iso: dict[datetime, str] | None = None) -> dict[str, Any]:
    """RecordOut as plain JSON types. `iso`: a cache of formatted datetimes, for the many
    results of a batch that share a few (when recorded, when the period resets); looked
    up inline, as a helper function's 3,000 calls were a tenth of a batch (cProfile)."""
    if iso is None:
        iso = {}
    ev, st = r.event, r.status
    occurred = iso.get(ev.occurred_at) or _iso(iso, ev.occurred_at)
    recorded = iso.get(ev.recorded_at) or _iso(iso, ev.recorded_at)
    resets = iso.get(st.resets_at) or _iso(iso, st.resets_at)
    return {
        "event": {
            "id": ev.id,
            "user_id": ev.user_id,
            "metric": ev.metric,
            "quantity": ev.quantity,
            "occurred_at": occurred,
            "recorded_at": recorded,
            "idempotency_key": ev.idempotency_key,
            "metadata": ev.metadata,
            "canceled_at": None if ev.canceled_at is None else _iso(iso, ev.canceled_at),
        },
        "duplicate": r.duplicate,
        "over_limit": r.over_limit,
        "metric": st.metric,
        "used": st.used,
        "limit": st.limit,
        "unlimited": st.unlimited,
        "remaining": st.remaining,
        "percent": st.percent,
        "resets_at": resets,
    }


def _iso(cache: dict[datetime, str], dt: datetime) -> str:
    text = cache[dt] = iso(dt)
    return text


class FastJSONResponse(JSONResponse):
    """JSONResponse encoded by pydantic-core (Rust): a 1,000-result batch answer in 0.7
    instead of 2.0 ms, and json's Python-level encoder was 5 % of a worker's time on
    single events (py-spy). Same bytes for the plain types the answers are built from."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def key_header_text(value: str | None) -> str | None:
    """The Idempotency-Key header as the key the client meant: its bytes read as UTF-8
    when they are valid UTF-8 (what clients send for "résumé-1"), else as Latin-1, as
    HTTP allows. `value` is the Latin-1 reading both lanes get; one rule for both. An
    ASCII key (nearly all) is returned as it is: str.isascii() is O(1)."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not UTF-8 (or not a Latin-1 reading)
        return value


# Named with the request's other problems, first (as a batch's header is).
KEYS_DIFFER = "Idempotency-Key header and body idempotency_key differ."


def header_key_problem(body_key: Any, header_key: str | None) -> ValidationFailed | None:
    """The problem of an Idempotency-Key header: sent empty, or naming another key than
    the body's."""
    empty = metering.empty_key_header(header_key)
    if empty is not None:
        return empty
    if header_key is not None and body_key is not None and header_key != body_key:
        return ValidationFailed(KEYS_DIFFER, field="idempotency_key")
    return None


def _key(body_key: str | None, header_key: str | None) -> str | None:
    # An empty header is header_key_problem's; too long: prepare_write's (or cancel's)
    # to refuse, with the other problems.
    if body_key is not None or header_key is None or not header_key.strip():
        return body_key
    return header_key


Problems = list[tuple[str, ValidationFailed]]


def _acts_for(p: Principal, user_id: int | None, problems: Problems) -> int | None:
    """Whom the request acts for; a service key naming no user is one of its `problems`
    (None), named with the others."""
    try:
        return resolve_user_id(p, user_id)
    except ValidationFailed as err:
        problems.append(("user_id", err))
        return None


def usage_write(
    p: Principal, body: s.UsageIn | s.ConsumeIn, header_key: str | None, *, consume: bool
) -> metering.UsageWrite:
    """The validated write a caller asks for (key, scope and whom it acts for checked).
    `header_key`: the Idempotency-Key header as received (Latin-1)."""
    header_key = key_header_text(header_key)
    key = _key(body.idempotency_key, header_key)
    bad_header = header_key_problem(body.idempotency_key, header_key)
    problems: Problems = [] if bad_header is None else [("idempotency_key", bad_header)]
    require_scope(p, "usage:write")
    occurred_at = None if consume else body.occurred_at  # type: ignore[union-attr]
    user_id = _acts_for(p, body.user_id, problems)
    failed: Problems = []
    if not problems:
        try:
            return metering.prepare_write(
                user_id,
                body.metric,
                body.quantity,
                key,
                body.metadata,
                occurred_at,
                consume=consume,
            )
        except ValidationFailed as err:  # named below with the rest (off the hot path)
            failed = [_problem(err)]
    values = {"metric": body.metric, "quantity": body.quantity, "idempotency_key": key}
    values |= {"metadata": body.metadata, "occurred_at": occurred_at}
    raise refused(p, body.user_id, problems + (metering.write_problems(values) or failed))


def _problem(err: ValidationFailed) -> tuple[str, ValidationFailed]:
    return str(err.details.get("field", "body")), err


def refused(p: Principal, user_id: int | None, problems: Problems) -> ValidationFailed:
    """One 422 for a single request naming each of its `problems` (field, error) in
    `fields`, the first's code and message leading; for a service key, also the unknown
    user it names, as a batch does (the 404's message; one query, paid on a refusal
    only). A user's key or session is never told whether another user exists."""
    first = problems[0][1]
    fields = [{"field": f, "message": e.message, "type": e.code} for f, e in problems]
    missing = unknown_user(p, user_id)
    if missing is not None:
        fields.append({"field": "user_id", "message": missing.message, "type": missing.code})
    first.details["fields"] = fields
    return first


def unknown_user(p: Principal, user_id: int | None) -> UserNotFound | None:
    """For a service key's refused request: its user_id's 404 when there is no such user
    (one query); None for anyone else, or when the lookup fails (the 422 stands)."""
    if p.user is not None or user_id is None:
        return None
    try:
        if existing_users({user_id}):
            return None
    except sa_exc.SQLAlchemyError as exc:
        log.warning("refused request: user not looked up: %s", type(exc).__name__)
        return None
    return UserNotFound.of(user_id)


def recorded(result: RecordResult) -> JSONResponse:
    return FastJSONResponse(record_out(result), status_code=200 if result.duplicate else 201)


# A period's bounds repeat from check to check: each formatted once (1.4 -> 0.3 µs).
_period_iso = lru_cache(maxsize=1024)(iso)


def check_quota(p: Principal, body: s.CheckIn) -> JSONResponse:
    """Blocking: reads the counter and limit."""
    require_scope(p, "usage:read")
    problems: Problems = []
    user_id = _acts_for(p, body.user_id, problems)
    values = {"metric": body.metric, "quantity": body.quantity}
    if problems:  # as for a write: with the metric's problem
        raise refused(p, body.user_id, problems + metering.write_problems(values))
    try:
        with read_connection() as conn:
            r = metering.check(conn, user_id, body.metric, body.quantity)  # type: ignore[arg-type]
    except ValidationFailed as err:
        raise refused(p, user_id, metering.write_problems(values) or [_problem(err)]) from None
    return FastJSONResponse(
        {
            "allowed": r.allowed,
            "metric": r.metric,
            "requested": r.requested,
            "used": r.used,
            "limit": r.limit,
            "unlimited": r.unlimited,
            "remaining": r.remaining,
            "percent": r.percent,
            "period_start": _period_iso(r.period_start),
            "resets_at": _period_iso(r.resets_at),
            "reason": r.reason,
        }
    )


# The cancel's key goes in the body or, as for the writes, in the Idempotency-Key header.
CANCEL_KEY_REQUIRED = (
    "idempotency_key is required: the key the event was recorded or consumed with, in "
    "the body or as the Idempotency-Key header."
)


def cancel_usage(p: Principal, body: s.CancelIn, header_key: str | None = None) -> JSONResponse:
    """Blocking: cancels the event stored under the key, in its own transaction.
    `header_key`: the Idempotency-Key header as received (Latin-1)."""
    header_key = key_header_text(header_key)
    key = _key(body.idempotency_key, header_key)
    bad_header = header_key_problem(body.idempotency_key, header_key)
    problems: Problems = [] if bad_header is None else [("idempotency_key", bad_header)]
    require_scope(p, "usage:write")
    user_id = _acts_for(p, body.user_id, problems)
    if key is None and bad_header is None:
        problems.append(
            ("idempotency_key", ValidationFailed(CANCEL_KEY_REQUIRED, field="idempotency_key"))
        )
    if problems:
        raise refused(p, body.user_id, problems)
    try:
        with session_scope() as session:
            result = metering.cancel(session, user_id, key)  # type: ignore[arg-type]
    except ValidationFailed as err:  # the header's key: blank, too long, a NUL
        raise refused(p, user_id, [_problem(err)]) from None
    return FastJSONResponse(cancel_out(result))


def cancel_out(r: CancelResult) -> dict[str, Any]:
    """CancelOut as plain JSON types: the record answer's fields, and the cancel's."""
    out = record_out(RecordResult(r.event, False, r.over_limit, r.status))
    del out["duplicate"]
    out["already_canceled"] = r.already_canceled
    out["canceled_at"] = out["event"]["canceled_at"]
    return out


def wants_minimal(prefer: str | None) -> bool:
    """`Prefer: return=minimal` (RFC 7240) among the caller's preferences."""
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == "return=minimal" for p in prefer.split(","))


def existing_users(ids: set[int]) -> set[int]:
    """Which of `ids` are users (one query)."""
    with read_session() as session:
        return users.existing_ids(session, ids)


def record_batch(
    p: Principal, body: s.BatchIn, prefer: str | None = None, batch_key: str | None = None
) -> JSONResponse:
    """Blocking: validates every event, then stores them all in one transaction. With
    `Prefer: return=minimal`, answers the counts only (no result per event is built).
    `batch_key` (the Idempotency-Key header) keys each event without a key of its own
    as `<key>#<index>`: the same batch sent again is all duplicates."""
    batch_key = key_header_text(batch_key)
    require_scope(p, "usage:write")
    raw: list[dict[str, Any]] = body.events  # type: ignore[assignment]  # parsed dicts, ours
    key_problem, clashes = (
        (None, None) if batch_key is None else metering_batch.key_events(raw, batch_key)
    )
    events = metering_batch.validate_batch(
        raw,
        partial(resolve_user_id, p),
        existing_users,
        key_problem=key_problem,
        clashes=clashes,
    )
    minimal = wants_minimal(prefer)
    with session_scope() as session:
        results = metering_batch.record_batch(session, events, detail=not minimal)
    new = sum(1 for r in results if r is None or not r.duplicate)
    if minimal:
        return FastJSONResponse(
            {"recorded": new, "duplicates": len(results) - new},
            status_code=201 if new else 200,
            headers={"Preference-Applied": "return=minimal"},
        )
    iso: dict[datetime, str] = {}
    return FastJSONResponse(
        {
            "recorded": new,
            "duplicates": len(results) - new,
            "results": [record_out(r, iso) for r in results],
        },
        status_code=201 if new else 200,
    )


def _caller(request: Request) -> Principal:
    with session_scope() as session:
        return require_principal(request, session)


_CREATED = {
    201: {"model": s.RecordOut, "description": "Recorded"},
    200: {"model": s.RecordOut, "description": "Duplicate of an earlier event (`duplicate`)"},
    404: {
        "model": s.ErrorResponse,
        "description": "`user_not_found`: no user has this `user_id` (service keys)",
    },
    409: {
        "model": s.KeyReusedResponse,
        "description": "`idempotency_key_reused`: the key was stored with another metric, "
        "quantity or metadata (each that differs in `differing_fields`); nothing recorded",
    },
}
_QUOTA_EXCEEDED = {
    403: {
        "model": s.QuotaExceededResponse,
        "description": "`quota_exceeded`: nothing recorded; the error also carries `metric`, "
        "`requested`, `used`, `limit`, `remaining` and `resets_at`. Or `forbidden`: the "
        "key lacks `usage:write`, or a user's key named another user",
    }
}
# Answered with `Prefer: return=minimal` (RFC 7240).
_PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`return=minimal` when the answer leaves out `results`",
        "schema": {"type": "string"},
    }
}


@router.post("/usage", status_code=201, response_model=s.RecordOut, responses=_CREATED)
def post_usage(
    body: s.UsageIn,
    request: Request,
    idempotency_key: str | None = key_header(_IDEMPOTENCY_DOC),
) -> JSONResponse:
    """Record usage that already happened (allowed past the limit, reported as `over_limit`)."""
    write = usage_write(_caller(request), body, idempotency_key, consume=False)
    return recorded(writer.write(write))


@router.post(
    "/usage/batch",
    status_code=201,
    response_model=s.BatchOut,
    responses={
        201: {"model": s.BatchOut, "description": "Recorded", "headers": _PREFERENCE_APPLIED},
        200: {
            "model": s.BatchOut,
            "description": "Every event was a duplicate",
            "headers": _PREFERENCE_APPLIED,
        },
        409: {
            "model": s.KeyReusedResponse,
            "description": "`idempotency_key_reused`: events reuse stored keys with other "
            "values (`index`: the first; `events`: each, with its `differing_fields`)",
        },
        422: {
            "model": s.ErrorResponse,
            "description": "Every bad event in `events`, every problem of each in its `errors`",
        },
    },
)
def post_usage_batch(
    body: s.BatchIn,
    request: Request,
    prefer: str | None = Header(default=None, description=_PREFER_DOC),
    idempotency_key: str | None = key_header(_BATCH_KEY_DOC, BATCH_KEY_MAX),
) -> JSONResponse:
    """Up to 1,000 events: all validated first (422 naming each bad one by index), then
    stored in one transaction."""
    return record_batch(_caller(request), body, prefer, idempotency_key)


@router.post("/quota/check", response_model=s.CheckOut)
def quota_check(body: s.CheckIn, request: Request) -> JSONResponse:
    """Would `quantity` more fit in the user's quota? Reads only."""
    return check_quota(_caller(request), body)


@router.post(
    "/usage/cancel",
    response_model=s.CancelOut,
    responses={
        200: {"model": s.CancelOut, "description": "Cancelled now, or before (`already_canceled`)"},
        404: {"model": s.ErrorResponse, "description": "No event with this key for the user"},
        409: {
            "model": s.ErrorResponse,
            "description": "`not_cancelable`: its period has ended, or it was recorded more "
            f"than {metering.CANCEL_WINDOW.total_seconds() / 3600:g} hours ago",
        },
    },
)
def cancel_usage_event(
    body: s.CancelIn,
    request: Request,
    idempotency_key: str | None = key_header(
        "The event's key: instead of the body's idempotency_key, or equal to it"
    ),
) -> JSONResponse:
    """Cancel a recorded or consumed event by its idempotency key (a job that failed gives
    its units back): its quantity leaves the counters, the event is kept (a retry of its
    write stays a duplicate). Again: 200 with `already_canceled`."""
    return cancel_usage(_caller(request), body, idempotency_key)


@router.post(
    "/usage/consume",
    status_code=201,
    response_model=s.RecordOut,
    responses={**_CREATED, **_QUOTA_EXCEEDED},
)
def consume(
    body: s.ConsumeIn,
    request: Request,
    idempotency_key: str | None = key_header(_IDEMPOTENCY_DOC),
) -> JSONResponse:
    """Atomically check the quota and record; over the limit → 403 `quota_exceeded`, nothing
    recorded."""
    write = usage_write(_caller(request), body, idempotency_key, consume=True)
    return recorded(writer.write(write))
