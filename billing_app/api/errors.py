"""One error shape everywhere: {"error": {"code", "message", ...details}}.

Bad input is always a 4xx; a database outage is a 503 (never a 500 or a hang);
anything else unexpected is a bare 500 without a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_app.api.deps import resolve_principal, resolve_user_id
from billing_app.api.messages import field_name, friendly
from billing_app.api.schemas import BatchEventIn
from billing_app.api.service_routes import (
    CANCEL_KEY_REQUIRED,
    existing_users,
    header_key_problem,
    key_header_text,
    unknown_user,
)
from billing_app.db import (
    UNAVAILABLE_MESSAGE,
    UNAVAILABLE_RETRY_AFTER,
    session_scope,
    unavailable,
)
from billing_app.errors import BillingError, ValidationFailed, batch_event_error, event_fields
from billing_app.services.api_keys import check_scope
from billing_app.services.dto import Principal
from billing_app.services.metering import write_problems
from billing_app.services.metering_batch import (
    check_events,
    field_errors,
    key_events,
    merge_bad_events,
    unknown_users,
)

log = logging.getLogger("billing_app.api")

MAX_BODY = 1024 * 1024  # 1 MiB

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, **jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "body"


def _said(field: dict[str, Any]) -> str:
    """A 422's message from its first field: the schema's and most rules' messages name
    their field; one that does not is prefixed with it."""
    message = str(field["message"])
    name = str(field["field"]).removeprefix("query.")
    return message if message.startswith((name, "The ", "There ")) else f"{name}: {message}"


def is_json_media(content_type: bytes | None) -> bool:
    """No Content-Type, or one FastAPI reads as JSON: application/json or application/*+json.
    Over bytes, as the fast lane holds the raw header on every request."""
    if not content_type:
        return True
    main, _, sub = content_type.split(b";", 1)[0].strip().lower().partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


def _sent_as_other_than_json(request: Request | None) -> bool:
    """A body sent with a Content-Type that is not JSON (`curl -d` sends a form's)."""
    if request is None:
        return False
    return not is_json_media(request.headers.get("content-type", "").encode("latin-1"))


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    if _sent_as_other_than_json(request) and any(
        tuple(e.get("loc") or ()) == ("body",) for e in errs
    ):
        # FastAPI read no JSON and said the body is "not a valid dictionary": say why.
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        return error_response(
            415,
            "unsupported_media_type",
            f"Send the body as JSON with Content-Type: application/json (it came as {ctype}).",
        )
    fields = []
    events: dict[int, list[dict[str, Any]]] = {}
    for e in errs:
        loc = tuple(e.get("loc") or ())
        # Batch events are named by their index: body.events.<i>.<field>
        if len(loc) >= 3 and loc[:2] == ("body", "events") and isinstance(loc[2], int):
            field = ".".join(str(p) for p in loc[3:]) or "event"
            msg = friendly(e, field if loc[3:] else f"Event {loc[2]}")
            events.setdefault(loc[2], []).append(
                {"field": field, "code": ValidationFailed.code, "message": msg}
            )
        else:
            msg = friendly(e, field_name(loc))
        fields.append({"field": _loc(loc), "message": msg, "type": e.get("type")})
    path = None if request is None else request.url.path
    raw = exc.body.get("events") if isinstance(exc.body, dict) else None
    key_problem, clashes = None, []
    if path == _BATCH:  # the batch's Idempotency-Key, named with the body's problems
        batch_key = key_header_text(request.headers.get("idempotency-key"))
        if batch_key is not None:
            key_problem, clashes = key_events(raw if isinstance(raw, list) else [], batch_key)
    details: dict[str, Any] = {"fields": fields}
    if events:
        bad = [
            batch_event_error(i, errs_, errs_[0]["message"]) for i, errs_ in sorted(events.items())
        ]
        total = len(raw) if isinstance(raw, list) else len(events)
        if isinstance(raw, list):  # the rules too, for what the schema took
            ruled = merge_bad_events(_rule_errors(raw, events, request), clashes)
            bad = merge_bad_events(bad, ruled)
            fields += event_fields(ruled)
        details["events"] = bad
        message = f"{len(bad)} of {total} events are invalid; nothing was recorded."
        if key_problem is not None:
            fields.append(_key_field(key_problem))
            message = f"{key_problem.message} {message}"
        fields.sort(key=_event_index)
    else:
        service = _acting_service(exc.body, fields, request, path)
        if service is not None:  # the rules' order: whom it acts for, then the fields
            fields += _user_rule(exc.body, service)
        if path in _SINGLE_WRITES:
            fields += _field_rules(exc.body, fields)
        if path == _CANCEL:
            fields += _cancel_key_rule(exc.body, fields, request)
        if service is not None:
            fields += _unknown_user_rule(exc.body, service)
        if path in _KEYED:  # the header's key against the body's: first, as a batch's
            fields[:0] = _key_header_rule(exc.body, fields, request)
        if key_problem is not None:
            fields.append(_key_field(key_problem))
        if clashes:
            details["events"] = clashes
            fields += event_fields(clashes)
        message = _said(fields[0]) if fields else "The body is invalid."
    return error_response(422, "validation_error", message, **details)


_BATCH = "/api/billing/usage/batch"
_CANCEL = "/api/billing/usage/cancel"
# The endpoints where a service key must name the user, and the scope it does so with.
_ACTS_FOR = {
    "/api/billing/usage": "usage:write",
    "/api/billing/usage/consume": "usage:write",
    "/api/billing/quota/check": "usage:read",
    _CANCEL: "usage:write",
}
# The endpoints whose body's idempotency_key may also come as the Idempotency-Key header.
_KEYED = frozenset({"/api/billing/usage", "/api/billing/usage/consume", _CANCEL})


def _key_field(problem: ValidationFailed) -> dict[str, Any]:
    return {"field": "idempotency_key", "message": problem.message, "type": problem.code}


def _refused_fields(fields: list[dict[str, Any]]) -> set[str]:
    return {str(f["field"]).split(".")[0] for f in fields}


def _acting_service(
    body: Any, fields: list[dict[str, Any]], request: Request | None, path: str | None
) -> Principal | None:
    """The service key (with the endpoint's scope) that sent a body whose user_id the
    schema took, for the user rules below (one lookup of the caller, on a refusal). A
    user's key acts for its own user: None, and it is never told who else exists."""
    if path not in _ACTS_FOR or not isinstance(body, dict):
        return None
    if _refused_fields(fields) & {"user_id", "body"}:
        return None
    return _service_caller(request, _ACTS_FOR[path])


def _user_rule(body: dict[str, Any], service: Principal) -> list[dict[str, Any]]:
    """A service key's body without a user_id: named with the schema's problems."""
    if body.get("user_id") is not None:
        return []
    try:
        resolve_user_id(service, None)
    except ValidationFailed as err:
        return [{"field": "user_id", "message": err.message, "type": err.code}]
    return []


def _unknown_user_rule(body: dict[str, Any], service: Principal) -> list[dict[str, Any]]:
    """A service key's body naming a user that does not exist (one query), as a batch's
    events are: with the schema's problems, not a 404 after them."""
    missing = unknown_user(service, body.get("user_id"))
    if missing is None:
        return []
    return [{"field": "user_id", "message": missing.message, "type": missing.code}]


def _key_header_rule(
    body: Any, fields: list[dict[str, Any]], request: Request | None
) -> list[dict[str, Any]]:
    """The Idempotency-Key header sent empty, or naming another key than the body's (a
    body key the schema refused is named as such)."""
    if request is None:
        return []
    body_key = None
    if isinstance(body, dict) and not _refused_fields(fields) & {"idempotency_key", "body"}:
        body_key = body.get("idempotency_key")
    header_key = key_header_text(request.headers.get("idempotency-key"))
    problem = header_key_problem(body_key, header_key)
    if problem is None:
        return []
    return [{"field": "idempotency_key", "message": problem.message, "type": problem.code}]


def _cancel_key_rule(
    body: Any, fields: list[dict[str, Any]], request: Request | None
) -> list[dict[str, Any]]:
    """A cancel naming no key, in its body nor in the Idempotency-Key header."""
    if not isinstance(body, dict) or body.get("idempotency_key") is not None:
        return []
    if _refused_fields(fields) & {"idempotency_key", "body"}:
        return []
    if request is not None and request.headers.get("idempotency-key") is not None:
        return []
    return [
        {"field": "idempotency_key", "message": CANCEL_KEY_REQUIRED, "type": ValidationFailed.code}
    ]


@lru_cache(maxsize=1)
def _batch_event_adapter() -> TypeAdapter[Any]:
    """Built on the first refused batch, not at import."""
    return TypeAdapter(BatchEventIn)


def _event_index(field: dict[str, Any]) -> int:
    """A `fields` entry's event (events.<i>...), -1 for the body's own: to list them in
    the events' order, the schema's and the rules' together."""
    parts = str(field["field"]).split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "events" and parts[1].isdigit() else -1


# The single writes and the check: a 422 of their schema also names the rules' problems
# with the fields it took (an unknown metric beside a quantity of 0).
_SINGLE_WRITES = frozenset(
    {"/api/billing/usage", "/api/billing/usage/consume", "/api/billing/quota/check"}
)


@lru_cache(maxsize=1)
def _datetime_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(datetime)


def _taken(body: Any, refused: set[str]) -> dict[str, Any]:
    """The fields of a body (or event) the schema took, as the rules read them."""
    if not isinstance(body, dict) or "event" in refused or "body" in refused:
        return {}
    values = {k: v for k, v in body.items() if k not in refused}
    if isinstance(values.get("occurred_at"), str):
        try:
            values["occurred_at"] = _datetime_adapter().validate_python(values["occurred_at"])
        except PydanticValidationError:
            del values["occurred_at"]
    return values


def _field_rules(body: Any, fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    refused = {str(f["field"]).split(".")[0] for f in fields}
    return [
        {"field": field, "message": err.message, "type": err.code}
        for field, err in write_problems(_taken(body, refused))
    ]


def _rule_errors(
    raw: list[Any], schema: dict[int, list[dict[str, Any]]], request: Request | None
) -> list[dict[str, Any]]:
    """The service's checks of a refused batch (unknown metric, a key repeated with
    other values...), so one answer names every problem: of the events the schema
    took, and of the fields it took of those it refused. For a service key, also its
    events without a user_id or naming an unknown user (one query: a refused batch may
    pay it). A user's batch is not: whom it may act for is the write's 403, after this
    422."""
    adapter = _batch_event_adapter()
    skip = set(schema)
    parsed: list[Any] = []
    for i, event in enumerate(raw):
        if i in skip:
            parsed.append(None)
            continue
        try:
            parsed.append(adapter.validate_python(event))
        except PydanticValidationError:  # the schema refused it too: already named
            skip.add(i)
            parsed.append(None)
    service = _service_caller(request)
    resolve = _anyone if service is None else partial(resolve_user_id, service)
    _, errors = check_events(parsed, resolve, frozenset(skip))
    taken: list[dict[str, Any]] = []
    for i, problems in schema.items():
        values = _taken(raw[i], {p["field"].split(".")[0] for p in problems})
        taken += field_errors(i, values)
        if service is not None and values and "user_id" not in {p["field"] for p in problems}:
            try:
                resolve(values.get("user_id"))
            except BillingError as err:
                problem = {"field": "user_id", "code": err.code, "message": err.message}
                taken.append(batch_event_error(i, [problem], err.message))
    ruled = merge_bad_events(errors, taken)
    if service is None:
        return ruled
    try:
        return merge_bad_events(ruled, unknown_users(raw, existing_users))
    except sa_exc.SQLAlchemyError as exc:  # the schema's 422 stands, never a 500
        log.warning("refused batch: users not looked up: %s", type(exc).__name__)
        return ruled


def _anyone(user_id: int | None) -> int:
    return 1 if user_id is None else user_id


def _service_caller(request: Request | None, scope: str = "usage:write") -> Principal | None:
    """The service key (one with `scope`) that sent a request, else None; a caller that
    is not one, or not known, gets the request's own answer later."""
    if request is None:
        return None
    try:
        with session_scope() as session:
            p = resolve_principal(request, session)
        if p is None or p.user is not None:
            return None
        check_scope(p, scope)
    except (BillingError, sa_exc.SQLAlchemyError):
        return None
    return p


def _billing(_request: Request, exc: BillingError) -> JSONResponse:
    headers = None
    retry = exc.details.get("retry_after")
    if retry is None and exc.status_code == 503:  # every 503 says when to retry
        retry = UNAVAILABLE_RETRY_AFTER
    if isinstance(retry, int):
        headers = {"Retry-After": str(retry)}
    elif exc.status_code == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="billing"'}
    return JSONResponse(
        {"error": jsonable_encoder(exc.to_dict())}, status_code=exc.status_code, headers=headers
    )


# FastAPI's answer for a JSON body it cannot decode (bytes that are not UTF-8, -16 or
# -32): not valid JSON either, so the same answer as for any other malformed body.
_UNPARSABLE_BODY = "There was an error parsing the body"


def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, _TooLarge):  # a streamed body over the limit: the one 413 shape
        return too_large()
    if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ").capitalize()
    if exc.status_code == 404 and message == "Not Found":
        message = "No such endpoint."
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


def _db_down(
    _request: Request,
    exc: Exception,
    message: str = UNAVAILABLE_MESSAGE,
    retry_after: int = UNAVAILABLE_RETRY_AFTER,
) -> JSONResponse:
    log.warning("database unavailable: %s: %s", type(exc).__name__, message)
    return error_response(
        503, "service_unavailable", message, headers={"Retry-After": str(retry_after)}
    )


def _dbapi(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
    down = unavailable(exc)
    if down is not None:
        retry_after = down.details.get("retry_after", UNAVAILABLE_RETRY_AFTER)
        return _db_down(request, exc, down.message, retry_after)
    if isinstance(exc, sa_exc.DataError):
        # A value the column cannot hold (e.g. a NUL character in JSON on PostgreSQL):
        # bad input, so a 422, never a 500. The transaction was rolled back.
        return error_response(
            422,
            "invalid_value",
            "A value in the request cannot be stored (wrong range or characters).",
        )
    return _unexpected(request, exc)


def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "Something went wrong on our side.")


def response_for(exc: Exception) -> JSONResponse:
    """The response the installed handlers give `exc` (for routes outside FastAPI)."""
    if isinstance(exc, RequestValidationError):
        return _validation(None, exc)  # type: ignore[arg-type]
    if isinstance(exc, BillingError):
        return _billing(None, exc)  # type: ignore[arg-type]
    if isinstance(exc, StarletteHTTPException):
        return _http(None, exc)  # type: ignore[arg-type]
    if isinstance(exc, sa_exc.DBAPIError):
        return _dbapi(None, exc)  # type: ignore[arg-type]
    if isinstance(exc, sa_exc.TimeoutError):
        return _db_down(None, exc)  # type: ignore[arg-type]
    return _unexpected(None, exc)  # type: ignore[arg-type]


def too_large(max_body: int = MAX_BODY) -> JSONResponse:
    return error_response(
        413,
        "payload_too_large",
        f"The request body is larger than {max_body // 1024} KiB.",
        max_bytes=max_body,
    )


def install(api: FastAPI) -> None:
    api.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    api.add_exception_handler(BillingError, _billing)  # type: ignore[arg-type]
    api.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    api.add_exception_handler(sa_exc.DBAPIError, _dbapi)  # type: ignore[arg-type]
    # Pool exhausted while the database is down: also "unavailable", not a hang or a 500.
    api.add_exception_handler(sa_exc.TimeoutError, _db_down)
    api.add_exception_handler(Exception, _unexpected)


# Fields a request may carry once (RFC 9110 5.3: not list-based). Two Authorization
# headers may name two callers, two Idempotency-Keys two different retries; reading
# either one silently would act for the wrong caller or count a retry twice, and the
# two lanes once read different ones. Both lanes refuse the request instead.
SINGLE_HEADERS = (b"authorization", b"idempotency-key")


def repeated_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The first of SINGLE_HEADERS that occurs more than once (ASGI names are lower case)."""
    seen: set[bytes] = set()
    for name, _ in headers:
        if name in SINGLE_HEADERS:
            if name in seen:
                return name.decode()
            seen.add(name)
    return None


def repeated(name: str) -> JSONResponse:
    title = "-".join(part.capitalize() for part in name.split("-"))
    return error_response(
        400,
        "repeated_header",
        f"The {title} header was sent more than once; send it once.",
        header=title,
    )


class SingleHeaderMiddleware:
    """400 for an /api request repeating a header that must come once (SINGLE_HEADERS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            name = repeated_header(scope["headers"])
            if name is not None:
                await repeated(name)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while FastAPI reads the body; FastAPI re-raises HTTPExceptions as they are."""

    def __init__(self) -> None:
        super().__init__(413, "The request body is larger than 1024 KiB.")


class BodyLimitMiddleware:
    """413 for /api bodies over MAX_BODY: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large(self.max_body)(scope, receive, send)
