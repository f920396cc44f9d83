"""In-memory state of one sandbox: the clock, ids, object collections, events and idempotency.

All mutation happens under ``state.lock`` (an RLock): API handlers run on the server's event
loop, webhook deliveries on their own thread, and tests may poke the state from theirs.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from . import objects
from .cards import Card
from .config import API_VERSION, SandboxConfig
from .errors import RESOURCE_NAMES, no_such
from .webhooks import WebhookDispatcher

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# (request id, idempotency key) of the API request being served, recorded on events.
_request: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "stripe_sandbox_request", default=(None, None)
)


@contextlib.contextmanager
def request_context(request_id: str | None, idempotency_key: str | None) -> Iterator[None]:
    token = _request.set((request_id, idempotency_key))
    try:
        yield
    finally:
        _request.reset(token)


def _b62(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = _B62[r] + out
    return out.rjust(width, "0")


class Clock:
    """Sandbox-wide clock: real time plus an offset that only ever grows (never goes back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._last = 0
        self._frozen: int | None = None

    def now(self) -> int:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            self._last = max(self._last, int(time.time() + self._offset))
            return self._last

    @contextlib.contextmanager
    def frozen_at(self, ts: int) -> Iterator[int]:
        """Move to ``ts`` and stand still there while the block runs, so everything a renewal
        does is stamped with the boundary itself, not a second later."""
        frozen = self.advance_to(ts)
        with self._lock:
            self._frozen = frozen
        try:
            yield frozen
        finally:
            with self._lock:
                self._frozen = None

    def advance_to(self, ts: int) -> int:
        with self._lock:
            if ts > time.time() + self._offset:
                self._offset = ts - time.time() + 0.001
            self._last = max(self._last, int(ts))
            return self._last

    def reset(self) -> None:
        with self._lock:
            self._offset, self._last, self._frozen = 0.0, 0, None


@dataclass
class IdempotentResult:
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    status: int
    body: bytes
    headers: dict[str, str]


class SandboxState:
    """Everything one sandbox knows. Stripe objects are plain dicts in their API shape;
    data Stripe keeps but never shows (card numbers, checkout line items ...) lives next to
    them in the ``*_internal`` maps."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.clock = Clock()
        self.webhooks = WebhookDispatcher(
            config.webhook_url,
            config.webhook_secret,
            max_attempts=config.webhook_max_attempts,
            retry_base=config.webhook_retry_base,
            timeout=config.webhook_timeout,
        )
        self._seq = itertools.count(1)
        self.products: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self._clear()
        now = self.clock.now()
        for plan in config.plans:
            prod, price = objects.plan_objects(plan, now)  # type: ignore[arg-type]
            self.products[prod["id"]] = prod
            self.prices[price["id"]] = price

    def _clear(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {}
        self.deleted_customers: set[str] = set()
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[tuple[str, str], IdempotentResult] = {}
        # internal data
        self.cards_internal: dict[str, Card] = {}  # pm id -> card
        self.checkout_internal: dict[str, dict[str, Any]] = {}  # cs id -> line items, sub data
        self.subscription_internal: dict[str, dict[str, Any]] = {}  # anchor, cycle, pending
        self.invoice_counter = 0
        self._last_event_created = 0

    # --- basics ---------------------------------------------------------------------------

    def now(self) -> int:
        return self.clock.now()

    def new_id(self, prefix: str, length: int = 14) -> str:
        """Stripe-looking ids whose first characters encode a global sequence number, so ids of
        one kind sort in creation order (events created in the same second stay ordered)."""
        seq = _b62(next(self._seq), 6)
        rand = "".join(secrets.choice(_B62) for _ in range(max(length - 6, 4)))
        return f"{prefix}_{seq}{rand}"

    def next_invoice_number(self) -> str:
        self.invoice_counter += 1
        return f"SBX-{self.invoice_counter:04d}"

    def url(self, path: str) -> str:
        return f"{self.config.base_url}{path}"

    # --- lookups --------------------------------------------------------------------------

    def collection_for(self, object_id: str) -> dict[str, dict[str, Any]] | None:
        prefix = object_id.split("_", 1)[0]
        if object_id.startswith("cs_"):
            return self.checkout_sessions
        return {
            "cus": self.customers,
            "prod": self.products,
            "price": self.prices,
            "bps": self.portal_sessions,
            "sub": self.subscriptions,
            "in": self.invoices,
            "evt": self.events,
            "pm": self.payment_methods,
        }.get(prefix)

    def find(self, object_id: str) -> dict[str, Any] | None:
        collection = self.collection_for(object_id)
        return None if collection is None else collection.get(object_id)

    def get(
        self,
        collection: dict[str, dict[str, Any]],
        object_id: str,
        kind: str | None = None,
        *,
        param: str = "id",
        status: int = 404,
    ) -> dict[str, Any]:
        obj = collection.get(object_id) if isinstance(object_id, str) else None
        if obj is None:
            kind = kind or RESOURCE_NAMES.get(str(object_id).split("_", 1)[0], "object")
            raise no_such(kind, str(object_id), param=param, status=status)
        return obj

    # --- events ---------------------------------------------------------------------------

    def emit(
        self,
        type_: str,
        obj: dict[str, Any],
        previous_attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an event with a snapshot of ``obj`` and queue its webhook delivery."""
        with self.lock:
            # Stripe's `created` has 1 s resolution; never let it go backwards.
            created = max(self.now(), self._last_event_created)
            self._last_event_created = created
            request_id, idempotency_key = _request.get()
            evt = objects.event(
                self.new_id("evt", 24),
                type_,
                created,
                obj,
                api_version=API_VERSION,
                previous_attributes=previous_attributes,
                request_id=request_id,
                idempotency_key=idempotency_key,
            )
            self.events[evt["id"]] = evt
            self.webhooks.enqueue(evt)
            return evt

    def event_view(self, evt: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(evt)
        view["pending_webhooks"] = self.webhooks.pending_webhooks(evt["id"])
        return view

    # --- control --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget customers, subscriptions, invoices, events ...; keep the catalog."""
        with self.lock:
            self.webhooks.reset()
            self._clear()
            self.clock.reset()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued webhook was delivered (or finally failed)."""
        return self.webhooks.wait_idle(timeout)

    def set_webhook_endpoint(self, url: str | None, secret: str | None = None) -> None:
        with self.lock:
            self.webhooks.url = url or None
            self.config.webhook_url = url or None
            if secret:
                self.webhooks.secret = secret
                self.config.webhook_secret = secret

    def close(self) -> None:
        self.webhooks.close()
