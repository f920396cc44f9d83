"""Fixtures for the Stripe tests: the offline sandbox and a receiver running the app's
webhook router, both real uvicorn servers on loopback (port 0), talking real HTTP with
Stripe's signature scheme."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing_app import clock
from billing_app.api.app import create_api
from billing_app.api.fast_lane import fast_lane
from billing_app.settings import SANDBOX_WEBHOOK_SECRET
from stripe_sandbox import BackgroundServer, SandboxConfig, SandboxServer
from tests.conftest import _clear_caches

DATA = Path(__file__).parent / "data"
WEBHOOK_PATH = "/api/billing/webhook"


@pytest.fixture(scope="session")
def stripe_fixtures() -> dict[str, Any]:
    return json.loads((DATA / "stripe_fixtures.json").read_text())


@pytest.fixture(scope="session")
def receiver() -> Iterator[BackgroundServer]:
    """The API as production serves it (the fast lane, which takes the webhook deliveries,
    in front of the FastAPI app), served by uvicorn."""
    with BackgroundServer(fast_lane(create_api())) as server:
        yield server


@pytest.fixture(scope="session")
def _sandbox_server(receiver: BackgroundServer) -> Iterator[SandboxServer]:
    config = SandboxConfig(
        webhook_url=receiver.url + WEBHOOK_PATH,
        webhook_retry_base=0.05,  # a failed delivery is retried quickly in tests
        webhook_max_attempts=3,
    )
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def sandbox(
    _sandbox_server: SandboxServer, app_settings: Any, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxServer]:
    """A fresh sandbox the app is configured to use; the app's clock follows the sandbox's."""
    _sandbox_server.state.reset()
    monkeypatch.setenv("STRIPE_API_BASE", _sandbox_server.url)
    monkeypatch.setenv("APP_URL", "http://app.test")
    _clear_caches()
    state = _sandbox_server.state
    clock.set_clock(lambda: datetime.fromtimestamp(state.now(), UTC))
    yield _sandbox_server
    _sandbox_server.flush(10)
    clock.set_clock(None)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


# ---------------------------------------------------------------- signed deliveries


def sign(body: bytes, secret: str = SANDBOX_WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """Stripe's `Stripe-Signature`: t=<unix>,v1=HMAC-SHA256(secret, "t.body")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Deliverer:
    """Posts events to the receiver like Stripe does."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client = client
        self.url = url

    def raw(self, body: bytes, signature: str | None) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if signature is not None:
            headers["stripe-signature"] = signature
        return self.client.post(self.url, content=body, headers=headers)

    def send(self, event: dict[str, Any]) -> httpx.Response:
        body = json.dumps(event).encode()
        return self.raw(body, sign(body))


@pytest.fixture
def deliver(receiver: BackgroundServer, http: httpx.Client, engine: Any) -> Deliverer:
    return Deliverer(http, receiver.url + WEBHOOK_PATH)


# ---------------------------------------------------------------- payload builders


class Payloads:
    """Webhook events built from Stripe's own fixture objects (fixtures3.json)."""

    def __init__(self, fixtures: dict[str, Any]) -> None:
        self.fx = fixtures
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_test{self._n:06d}{int(time.time() * 1000) % 10**8}"

    def subscription(
        self,
        *,
        sub_id: str,
        customer: str,
        user_id: int | None,
        status: str = "active",
        price: str = "price_sandbox_pro",
        period: tuple[int, int] = (1_763_000_000, 1_765_600_000),
        cancel_at_period_end: bool = False,
        cancel_at: int | None = None,
        old_shape: bool = False,
    ) -> dict[str, Any]:
        """`cancel_at` alone (the flag false) is how the customer portal schedules a cancel
        on flexible billing mode; the flag alone sets `cancel_at` to the period's end, as
        Stripe does."""
        obj = copy.deepcopy(self.fx["subscription"])
        if cancel_at is None and cancel_at_period_end:
            cancel_at = period[1]
        obj.update(
            id=sub_id,
            customer=customer,
            status=status,
            metadata={"user_id": str(user_id)} if user_id else {},
            cancel_at_period_end=cancel_at_period_end,
            cancel_at=cancel_at,
            canceled_at=None if status != "canceled" else period[0],
            ended_at=None if status != "canceled" else period[0],
            created=period[0],
        )
        item = obj["items"]["data"][0]
        item["price"]["id"] = price
        item["subscription"] = sub_id
        item["current_period_start"], item["current_period_end"] = period
        if old_shape:  # before 2025-03-31.basil the period sat on the subscription
            obj["current_period_start"] = item.pop("current_period_start")
            obj["current_period_end"] = item.pop("current_period_end")
        return obj

    def invoice(
        self,
        *,
        inv_id: str,
        customer: str,
        sub_id: str | None,
        status: str,
        amount_due: int = 9900,
        amount_paid: int = 0,
        old_shape: bool = False,
        **fields: Any,
    ) -> dict[str, Any]:
        """`fields` overrides any other field (`total`, `starting_balance`, `created`...);
        total and amount_remaining follow amount_due/amount_paid unless given."""
        obj = copy.deepcopy(self.fx["invoice"])
        obj.update(
            id=inv_id,
            customer=customer,
            status=status,
            amount_due=amount_due,
            amount_paid=amount_paid,
            subtotal=amount_due,
            total=amount_due,
            amount_remaining=0 if status in ("paid", "void") else amount_due - amount_paid,
            number=f"NUM-{inv_id[-4:]}",
            hosted_invoice_url=f"https://invoice.test/{inv_id}",
            invoice_pdf=f"https://invoice.test/{inv_id}/pdf",
        )
        if old_shape:
            obj["parent"] = None
            obj["subscription"] = sub_id
        else:
            obj["subscription"] = None
            obj["parent"] = {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": sub_id},
            }
        obj.update(fields)
        return obj

    def event(self, event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        evt = copy.deepcopy(self.fx["event"])
        evt.update(
            id=self._id("evt"),
            type=event_type,
            created=created,
            api_version="2026-10-28.endive",
            data={"object": copy.deepcopy(obj)},
        )
        return evt


@pytest.fixture
def payloads(stripe_fixtures: dict[str, Any]) -> Payloads:
    return Payloads(stripe_fixtures)
