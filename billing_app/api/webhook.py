"""`POST /api/billing/webhook`: Stripe's deliveries. Thin: the raw bytes go to the service,
which verifies the signature before anything else and decides the status code."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billing_app.api import schemas as s
from billing_app.api.service_routes import FastJSONResponse
from billing_app.db import UNAVAILABLE_RETRY_AFTER, session_scope
from billing_app.services.dto import WebhookResult
from billing_app.services.stripe_sync import handle_webhook
from billing_app.settings import get_settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["billing"])


class _Threads:
    """The deliveries' own threads: a plain executor, as anyio's thread hop (Starlette's
    run_in_threadpool) was 12 % of the worker's GIL time under deliveries (py-spy), and
    not the loop's default one, which the fast lane's batches and key lookups use: a
    burst of deliveries, or a database that hangs, does not hold those up.
    DB_POOL_SIZE threads: half the write pool's connections, the rest left to the usage
    writer, batches and the other routes."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def get(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # a forked worker starts its own threads
            size = get_settings().db_pool_size
            self._pool = ThreadPoolExecutor(size, thread_name_prefix="webhook")
            self._pid = os.getpid()
        assert self._pool is not None
        return self._pool


_threads = _Threads()


def _handle(payload: bytes, signature: str | None) -> WebhookResult:
    with session_scope() as session:
        return handle_webhook(session, payload, signature)


@router.post(
    "/api/billing/webhook",
    summary="Stripe webhook endpoint",
    responses={
        200: {"description": "Received (possibly a duplicate or an ignored type)"},
        400: {
            "model": s.ErrorResponse,
            "description": "Missing/invalid signature or malformed body; nothing written",
        },
        413: {"model": s.ErrorResponse, "description": "Body larger than 1 MiB; nothing written"},
        500: {
            "model": s.ErrorResponse,
            "description": "Applying the event failed; recorded, Stripe will retry",
        },
        503: {
            "model": s.ErrorResponse,
            "description": "The database is unavailable; nothing written, Stripe will retry",
            "headers": s.ERROR_HEADERS[503],
        },
    },
)
async def stripe_webhook(request: Request) -> JSONResponse:
    # The signature covers the exact bytes: read them raw, never a parsed body.
    return await respond(await request.body(), request.headers.get("stripe-signature"))


async def respond(payload: bytes, signature: str | None) -> JSONResponse:
    """The answer to one delivery (shared with the fast lane, api/fast_lane.py)."""
    try:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(_threads.get(), _handle, payload, signature)
    except Exception:
        # E.g. the database is down before the event could be stored: make Stripe retry.
        log.exception("stripe webhook could not be handled")
        return JSONResponse(
            {"error": {"code": "unavailable", "message": "Webhook could not be stored."}},
            status_code=503,
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
        )
    _log_refusal(result)
    return FastJSONResponse(result.body, status_code=result.status_code)


def _log_refusal(result: WebhookResult) -> None:
    """A refused or failed delivery reaches the operator's log too, not only Stripe's
    dashboard: a wrong STRIPE_WEBHOOK_SECRET otherwise refuses every event silently."""
    if result.status_code < 400:
        return
    error = result.body.get("error", {})
    line = (
        f"stripe webhook answered {result.status_code} {error.get('code')}: {error.get('message')}"
    )
    if error.get("code") == "invalid_signature":
        log.warning("%s (check STRIPE_WEBHOOK_SECRET: the endpoint's signing secret)", line)
    elif result.status_code >= 500:
        log.error(line)
    else:
        log.warning(line)
