"""Webhook signing (Stripe's scheme) and a background delivery worker with retries.

Deliveries never run on the API request that caused them: the receiving app may call the
sandbox back from its handler, which would deadlock a synchronous delivery.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def sign(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>``.

    The timestamp is real wall-clock time, not the sandbox clock: receivers check it against
    their own clock (stripe.Webhook.construct_event's 300 s tolerance).
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + payload, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


@dataclass
class Delivery:
    """Delivery state of one event to the (single) webhook endpoint."""

    event_id: str
    body: bytes
    url: str
    status: str = "pending"  # pending | succeeded | failed
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    next_attempt_at: float | None = None  # wall clock, for display

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "url": self.url,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "delivered_at": self.delivered_at,
            "next_attempt_at": self.next_attempt_at,
        }


class WebhookDispatcher:
    """Queue + worker thread. First attempts go out in creation order; failed ones are retried
    with exponential backoff (base, 2*base, 4*base ...) up to ``max_attempts``, then marked
    failed. Like Stripe, a retried event may therefore arrive after younger events."""

    def __init__(
        self,
        url: str | None,
        secret: str,
        *,
        max_attempts: int = 8,
        retry_base: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.timeout = timeout
        self.records: dict[str, Delivery] = {}
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str, int]] = []  # (due, seq, event_id, generation)
        self._seq = itertools.count()
        self._generation = 0
        self._in_flight = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- producer side --------------------------------------------------------------------

    def enqueue(self, event: dict[str, Any]) -> bool:
        """Queue an event (already a snapshot). Returns False when no endpoint is configured."""
        with self._cond:
            if not self.url or self._closed:
                return False
            # The body is fixed once: retries resend exactly the same bytes, freshly signed.
            body = json.dumps({**event, "pending_webhooks": 1}, indent=2).encode("utf-8")
            self.records[event["id"]] = Delivery(event["id"], body, self.url)
            self._push(event["id"], time.monotonic())
            return True

    def resend(self, event: dict[str, Any]) -> bool:
        with self._cond:
            record = self.records.get(event["id"])
            if record is None or record.url != self.url:
                return self.enqueue(event)
            record.status, record.attempts, record.last_error = "pending", 0, None
            self._push(event["id"], time.monotonic())
            return True

    def _push(self, event_id: str, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), event_id, self._generation))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="stripe-sandbox-webhooks", daemon=True
            )
            self._thread.start()
        self._cond.notify_all()

    # --- queries --------------------------------------------------------------------------

    def pending_webhooks(self, event_id: str) -> int:
        """Stripe's ``pending_webhooks``: endpoints that have not yet received the event."""
        record = self.records.get(event_id)
        return 0 if record is None or record.status == "succeeded" else 1

    def delivered(self, event_id: str) -> bool:
        """True when every endpoint got it (vacuously true when there was no endpoint)."""
        record = self.records.get(event_id)
        return record is None or record.status == "succeeded"

    def queue_size(self) -> int:
        with self._cond:
            return len(self._heap) + self._in_flight

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is queued, retrying or in flight. False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap and not self._in_flight, timeout)

    # --- lifecycle ------------------------------------------------------------------------

    def reset(self) -> None:
        with self._cond:
            self._generation += 1  # results of an in-flight delivery are dropped
            self._heap.clear()
            self.records.clear()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    # --- worker ---------------------------------------------------------------------------

    def _next_job(self) -> tuple[Delivery, int] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._heap:
                    due, _, event_id, generation = self._heap[0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        record = self.records.get(event_id)
                        if generation != self._generation or record is None:
                            continue
                        self._in_flight += 1
                        return record, generation
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _run(self) -> None:
        # trust_env=False: a developer's HTTP(S)_PROXY must not capture localhost deliveries.
        client = httpx.Client(
            timeout=self.timeout, headers={"User-Agent": USER_AGENT}, trust_env=False
        )
        with client:
            while (job := self._next_job()) is not None:
                record, generation = job
                code: int | None = None
                error: str | None = None
                try:
                    response = client.post(
                        record.url,
                        content=record.body,
                        headers={
                            "Content-Type": "application/json; charset=utf-8",
                            "Stripe-Signature": sign(record.body, self.secret),
                        },
                    )
                    code = response.status_code
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                self._finish(record, generation, code, error)

    def _finish(self, record: Delivery, generation: int, code: int | None, error: str | None):
        with self._cond:
            self._in_flight -= 1
            if generation == self._generation:
                record.attempts += 1
                record.last_status_code, record.last_error = code, error
                if code is not None and 200 <= code < 300:
                    record.status, record.delivered_at = "succeeded", time.time()
                    record.next_attempt_at = None
                elif record.attempts >= self.max_attempts:
                    record.status, record.next_attempt_at = "failed", None
                else:
                    delay = self.retry_base * 2 ** (record.attempts - 1)
                    record.next_attempt_at = time.time() + delay
                    self._push(record.event_id, time.monotonic() + delay)
            self._cond.notify_all()
