"""The hot service routes as plain ASGI, in front of the whole app (billing_app.py wraps
Reflex's ASGI app with `fast_lane`; FastAPI sits behind, as `api_transformer`).

Measured on 2 cores: FastAPI's routing, dependency solving, middlewares and thread-pool
hops cost ~0.6 ms of CPU per request, more than the work itself. So API-key callers of
the usage endpoints (services calling on every request path) and Stripe's webhook
deliveries are answered here. Everything else (session cookies, browser pages sending
an Origin, other content types, other paths) goes on to Reflex's layers and the FastAPI
routes, which stay the documented definition (OpenAPI) and share the handlers in
api/service_routes.py.

Same contract as the FastAPI routes: the error shape and statuses of api/errors.py, the
1 MiB body limit, pydantic validation with the same models. A body the models refuse
goes on to the FastAPI route with the bytes already read, so its error is the route's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_app.api import billing_routes, deps, errors, webhook
from billing_app.api import schemas as s
from billing_app.api import service_routes as routes
from billing_app.api.no_store import NO_STORE
from billing_app.db import session_scope
from billing_app.errors import ServiceUnavailable
from billing_app.services import api_keys
from billing_app.services.dto import Principal
from billing_app.services.usage_writer import writer

Handler = Callable[[Principal, Any, dict[bytes, bytes]], Awaitable[Response]]


class _TooLarge(Exception):
    pass


_BOM = b"\xef\xbb\xbf"


def _parse(model: type[BaseModel], body: bytes) -> Any:
    """The model from the JSON body; errors in FastAPI's shape (locations under "body")."""
    # As FastAPI: only a body with no bytes at all is "missing" (422); whitespace alone
    # is not JSON (400 malformed_json, from the parser below).
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    # A UTF-8 byte order mark is accepted, as FastAPI's json.loads does and RFC 8259 8.1
    # allows: some Windows tools add one, and the same body must not be good in one lane
    # and refused in the other.
    if body.startswith(_BOM):
        body = body[3:]
    elif body[0] == 0 or body[0] >= 0xFE or (len(body) > 1 and body[1] == 0):
        # UTF-16 or UTF-32 (a zero in the first two bytes, or their BOM), which FastAPI's
        # json.loads also reads: re-encoded, so the two lanes agree on every body.
        try:
            body = body.decode(json.detect_encoding(body)).encode()
        except UnicodeDecodeError:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error"}]
            ) from None
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        ) from None


_VARY = (b"vary", b"Origin")


async def _answer(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Sends one of this lane's own answers. With `Vary: Origin`, as the app's CORS layers
    send it on every answer (api/cors.py): the same request with an Origin gets CORS
    headers, so a cache must not hand one answer to the other. And with NO_STORE, as the
    FastAPI app sends it on every /api/ answer (api/no_store.py)."""
    response.raw_headers += (_VARY, NO_STORE)
    await response(scope, receive, send)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class _Reads:
    """One thread per process for the lane's short reads (quota check, usage summary).

    Measured at 1,000 checks/s against asyncio's default pool (several threads waking
    in turn, contending for the GIL): p99 5-16 -> 3.1-3.5 ms on SQLite (server CPU per
    check 0.71-0.81 -> 0.63 ms) and 8-15 -> 7.1-7.4 ms on PostgreSQL (CPU about equal).
    As fast as running them on the event loop, but a slow database never stalls the
    loop. If the database hangs, the queue must not: past MAX_BACKLOG waiting reads, or
    once a read has waited MAX_WAIT seconds for its turn, the caller gets a 503 at once
    (a read that waited that long is dropped unrun, so the queue drains quickly).
    """

    MAX_BACKLOG = 256
    MAX_WAIT = 2.0  # seconds in the queue

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self.backlog = 0

    def _turn(self, queued_at: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if time.monotonic() - queued_at > self.MAX_WAIT:
            raise self._busy()
        return fn(*args)

    @staticmethod
    def _busy() -> ServiceUnavailable:
        return ServiceUnavailable(
            "Too many reads are waiting for the database; retry shortly.", retry_after=1
        )

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pid != os.getpid():  # a forked worker starts its own thread
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fast-lane-reads")
            self._pid = os.getpid()
        if self.backlog >= self.MAX_BACKLOG:
            raise self._busy()
        self.backlog += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._turn, time.monotonic(), fn, args
            )
        finally:
            self.backlog -= 1


_reads = _Reads()


def _authenticate(secret: str) -> Principal:
    with session_scope() as session:
        return api_keys.authenticate(session, secret)


async def _usage(p: Principal, body: Any, headers: dict[bytes, bytes]) -> Response:
    write = routes.usage_write(p, body, _header(headers, b"idempotency-key"), consume=False)
    return routes.recorded(await asyncio.wrap_future(writer.submit(write)))


async def _consume(p: Principal, body: Any, headers: dict[bytes, bytes]) -> Response:
    write = routes.usage_write(p, body, _header(headers, b"idempotency-key"), consume=True)
    return routes.recorded(await asyncio.wrap_future(writer.submit(write)))


async def _check(p: Principal, body: Any, _headers: dict[bytes, bytes]) -> Response:
    return await _reads.run(routes.check_quota, p, body)


async def _cancel(p: Principal, body: Any, headers: dict[bytes, bytes]) -> Response:
    return await _blocking(routes.cancel_usage, p, body, _header(headers, b"idempotency-key"))


async def _batch(p: Principal, body: Any, headers: dict[bytes, bytes]) -> Response:
    return await _blocking(
        routes.record_batch,
        p,
        body,
        _header(headers, b"prefer"),
        _header(headers, b"idempotency-key"),
    )


# path -> (request body model, handler); usage writes go to the group-commit writer,
# reads to the lane's read thread, batches and cancels to the thread pool.
ROUTES: dict[str, tuple[type[BaseModel], Handler]] = {
    "/api/billing/usage": (s.UsageIn, _usage),
    "/api/billing/usage/consume": (s.ConsumeIn, _consume),
    "/api/billing/quota/check": (s.CheckIn, _check),
    "/api/billing/usage/batch": (s.BatchIn, _batch),
    "/api/billing/usage/cancel": (s.CancelIn, _cancel),
}


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization")
    if value is None or value[:7].lower() != b"bearer ":
        return None
    return value[7:].decode("latin-1").strip() or None


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app behind, with the body this lane already read."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def _read_body(receive: Receive, headers: dict[bytes, bytes]) -> bytes:
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > errors.MAX_BODY:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _TooLarge if size > errors.MAX_BODY else ConnectionAbortedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > errors.MAX_BODY:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _principal(secret: str) -> Principal:
    p = api_keys.cached_principal(secret)
    return p if p is not None else await _blocking(_authenticate, secret)


WEBHOOK = "/api/billing/webhook"
SUMMARY = "/api/billing/usage"
# The usual queries, looked up whole: (user_id, history).
_SUMMARY_QUERIES: dict[bytes, tuple[int | None, bool]] = {
    b"": (None, False),
    b"history=daily": (None, True),
}
_MAX_ID_DIGITS = len(str(s.MAX_ID))


def _summary_query(query: bytes) -> tuple[int | None, bool] | None:
    """(user_id, history) of GET /usage's query string in its plain form: `user_id` a
    positive id in digits (no sign, no leading zero, at most MAX_ID) and `history=daily`,
    each at most once, in any order. None for anything else (a bad, repeated, encoded or
    unknown parameter): FastAPI's route validates and answers those."""
    known = _SUMMARY_QUERIES.get(query)
    if known is not None:
        return known
    user_id: int | None = None
    history = False
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if (
            name == b"user_id"
            and user_id is None
            and 0 < len(value) <= _MAX_ID_DIGITS
            and value.isdigit()
            and value[0] != 0x30  # "0"
        ):
            user_id = int(value)
            if user_id > s.MAX_ID:
                return None
        elif name == b"history" and value == b"daily" and not history:
            history = True
        else:
            return None
    return user_id, history


async def _summary(
    scope: Scope, receive: Receive, send: Send, secret: str, query: tuple[int | None, bool]
) -> None:
    """GET /api/billing/usage for a bearer key: the caller's own user's, or (a service
    key) the user `user_id` names; the route's rule (deps.usage_subject) and answers."""
    try:
        user_id = deps.usage_subject(await _principal(secret), query[0])
        out = await _reads.run(billing_routes.usage_summary, user_id, query[1])
        body = s.UsageSummaryOut.model_validate(out).model_dump(mode="json")
        response: Response = JSONResponse(body)
    except Exception as exc:
        response = errors.response_for(exc)
    await _answer(response, scope, receive, send)


async def _webhook(scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
    """Stripe's deliveries: the raw bytes and signature go to the same code as the route's."""
    try:
        body = await _read_body(receive, headers)
    except ConnectionAbortedError:
        return
    except _TooLarge:
        await _answer(errors.too_large(), scope, receive, send)
        return
    response = await webhook.respond(body, _header(headers, b"stripe-signature"))
    await _answer(response, scope, receive, send)


async def _service(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    path: str,
    secret: str,
    headers: dict[bytes, bytes],
) -> None:
    """A usage endpoint, for a bearer key with a JSON body. A body the model refuses
    goes on to `app` (FastAPI's route), whose answer is then the one there is."""
    model, handler = ROUTES[path]
    try:
        raw = await _read_body(receive, headers)
    except ConnectionAbortedError:
        return  # the client went away before sending its body
    except _TooLarge:
        await _answer(errors.too_large(), scope, receive, send)
        return
    try:
        # The body is validated before the caller is looked up, as FastAPI does.
        body = _parse(model, raw)
    except RequestValidationError:
        await app(scope, _replay(raw, receive), send)
        return
    try:
        response = await handler(await _principal(secret), body, headers)
    except Exception as exc:  # the same answers as the FastAPI handlers give
        response = errors.response_for(exc)
    await _answer(response, scope, receive, send)


def fast_lane(app: ASGIApp) -> ASGIApp:
    """Wrap the API app: the usage endpoints for a bearer key, and Stripe's webhook
    deliveries, are answered here; everything else goes on to `app`."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        raw = scope["headers"]
        # The first of a repeated header, as Starlette reads it (a plain dict keeps the last).
        headers = dict(reversed(raw))
        if len(headers) < len(raw) and path.startswith("/api/"):
            name = errors.repeated_header(raw)  # as errors.SingleHeaderMiddleware does
            if name is not None:
                await _answer(errors.repeated(name), scope, receive, send)
                return
        secret = _bearer(headers)
        if b"origin" in headers:  # a browser's call: CORS is answered by the app's layers
            await app(scope, receive, send)
        elif method == "POST" and path == WEBHOOK:
            await _webhook(scope, receive, send, headers)
        elif (
            method == "POST"
            and path in ROUTES
            and secret
            and errors.is_json_media(headers.get(b"content-type"))
        ):
            await _service(app, scope, receive, send, path, secret, headers)
        elif (
            method == "GET"
            and path == SUMMARY
            and secret
            and (query := _summary_query(scope["query_string"])) is not None
        ):
            await _summary(scope, receive, send, secret, query)
        else:
            await app(scope, receive, send)

    return asgi
