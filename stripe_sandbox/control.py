"""Sandbox-only endpoints under ``/_sandbox/`` (not part of Stripe): reset, the test clock,
webhook flushing/resending, setting a customer's card. No auth: a local development tool."""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from . import billing, clock, objects
from .cards import parse_card
from .errors import StripeError
from .params import as_int, decode_form
from .store import SandboxState


async def _params(request: Request) -> dict[str, Any]:
    """Form or JSON body, plus the query string."""
    params: dict[str, Any] = decode_form(request.url.query)
    body = await request.body()
    if body:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(body)
            except ValueError:
                raise StripeError("Invalid JSON body.") from None
            if isinstance(data, dict):
                params.update(data)
        else:
            params.update(decode_form(body))
    return params


def _error(exc: StripeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def routes(st: SandboxState) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "now": st.now()})

    async def reset(request: Request) -> Response:
        st.reset()
        return JSONResponse({"ok": True, "now": st.now()})

    async def clock_now(request: Request) -> Response:
        return JSONResponse({"now": st.now()})

    async def advance(request: Request) -> Response:
        try:
            p = await _params(request)
            with st.lock:
                now = st.now()
                if p.get("to") not in (None, ""):
                    target = as_int(p["to"], "to") or now
                else:
                    target = now + (as_int(p.get("seconds"), "seconds") or 0)
                    target += (as_int(p.get("days"), "days") or 0) * 86400
                    if months := as_int(p.get("months"), "months"):
                        target = objects.add_interval(target, "month", months)
                first_new = len(st.events)
                new_now = clock.advance_clock(st, target)
                new_events = [
                    {"id": evt["id"], "type": evt["type"], "created": evt["created"]}
                    for evt in list(st.events.values())[first_new:]
                ]
        except StripeError as exc:
            return _error(exc)
        if p.get("return_to", "").startswith("/"):  # the dashboard's buttons
            return RedirectResponse(p["return_to"], status_code=303)
        return JSONResponse({"now": new_now, "events": new_events})

    async def events(request: Request) -> Response:
        with st.lock:
            data = []
            for evt in st.events.values():
                record = st.webhooks.records.get(evt["id"])
                view = st.event_view(evt)
                view["delivery"] = record.as_dict() if record else None
                data.append(view)
        return JSONResponse({"object": "list", "data": data, "webhook_url": st.webhooks.url})

    async def set_card(request: Request) -> Response:
        """Give a customer a new default card, skipping the attach-time decline so a test can
        store any failing card; open invoices of past_due subscriptions are retried."""
        try:
            p = await _params(request)
            number = str(p.get("number") or p.get("card_number") or "")
            with st.lock:
                parsed = parse_card(number) if number else None
                if parsed is None:
                    raise StripeError("Missing required param: number.", param="number")
                pm, retried = billing.update_default_card(
                    st, request.path_params["id"], parsed, allow_declined=True
                )
                body = {
                    "payment_method": pm,
                    "retried_invoices": [{"id": i["id"], "status": i["status"]} for i in retried],
                }
        except StripeError as exc:
            return _error(exc)
        return JSONResponse(body)

    async def flush(request: Request) -> Response:
        p = await _params(request)
        timeout = float(p.get("timeout") or 30)
        # Wait off the event loop: the receiver may call the sandbox while we wait.
        idle = await run_in_threadpool(st.flush, timeout)
        return JSONResponse({"idle": idle, "queued": st.webhooks.queue_size()})

    async def resend(request: Request) -> Response:
        with st.lock:
            evt = st.events.get(request.path_params["evt_id"])
            if evt is None:
                return _error(
                    StripeError(
                        f"No such event: '{request.path_params['evt_id']}'",
                        status=404,
                        code="resource_missing",
                    )
                )
            queued = st.webhooks.resend(st.event_view(evt))
        return JSONResponse({"queued": queued})

    async def endpoint(request: Request) -> Response:
        p = await _params(request)
        st.set_webhook_endpoint(p.get("url") or None, p.get("secret") or None)
        return JSONResponse({"url": st.webhooks.url})

    return [
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/clock", clock_now, methods=["GET"]),
        Route("/_sandbox/clock/advance", advance, methods=["POST"]),
        Route("/_sandbox/events", events, methods=["GET"]),
        Route("/_sandbox/customers/{id}/card", set_card, methods=["POST"]),
        Route("/_sandbox/webhooks/flush", flush, methods=["POST"]),
        Route("/_sandbox/webhooks/resend/{evt_id}", resend, methods=["POST"]),
        Route("/_sandbox/webhooks/endpoint", endpoint, methods=["POST"]),
    ]
