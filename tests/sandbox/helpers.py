"""Helpers shared by the sandbox tests (imported relatively by the test modules)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import stripe
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stripe_sandbox import SandboxServer

API_KEY = "sk_test_sandbox"
SECRET = "whsec_test_secret"


@dataclass
class Received:
    body: bytes
    signature: str


@dataclass
class WebhookReceiver:
    """A tiny Starlette app on its own thread. ``fail_next`` makes the next N deliveries
    return 500; ``on_event`` runs inside the handler (e.g. to call the sandbox back)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0
    failures_served: int = 0
    on_event: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            body = await request.body()
            with self.lock:
                if self.fail_next > 0:
                    self.fail_next -= 1
                    self.failures_served += 1
                    return JSONResponse({"error": "boom"}, status_code=500)
            if self.on_event is not None:
                await run_in_threadpool(self.on_event, body)
            with self.lock:
                self.received.append(Received(body, request.headers.get("stripe-signature", "")))
            return JSONResponse({"received": True})

        return Starlette(routes=[Route("/webhook", hook, methods=["POST"])])

    def events(self) -> list[stripe.Event]:
        """Every delivery, verified exactly like an app would (raises if a signature is bad)."""
        return [stripe.Webhook.construct_event(r.body, r.signature, SECRET) for r in self.received]

    def types(self) -> list[str]:
        return [e.type for e in self.events()]


def make_client(sandbox: SandboxServer, api_key: str = API_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": sandbox.url}, max_network_retries=0)


def new_customer(client: stripe.StripeClient, email: str = "ada@example.com") -> stripe.Customer:
    return client.v1.customers.create(
        params={"email": email, "name": "Ada Lovelace", "metadata": {"user_id": "7"}}
    )


def new_checkout(
    client: stripe.StripeClient,
    customer: str,
    price: str = "price_sandbox_pro",
    billing_mode: str | None = None,
    app: str = "http://app.test/billing",
) -> stripe.checkout.Session:
    """``billing_mode``: the subscription's billing_mode[type] (None: Stripe's default);
    ``app``: where Checkout returns (a real server's, for a browser to follow)."""
    subscription_data: dict[str, Any] = {"metadata": {"user_id": "7"}}
    if billing_mode is not None:
        subscription_data["billing_mode"] = {"type": billing_mode}
    return client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": price, "quantity": 1}],
            "client_reference_id": "user-7",
            "success_url": app + "/success?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": app,
            "subscription_data": subscription_data,
            "metadata": {"user_id": "7"},
            "allow_promotion_codes": True,
        }
    )


def pay(http: httpx.Client, session_url: str, card: str = "4242 4242 4242 4242") -> httpx.Response:
    return http.post(
        session_url,
        data={
            "card_number": card,
            "card_expiry": "12 / 34",
            "card_cvc": "123",
            "card_name": "Ada Lovelace",
        },
    )


def subscribe(
    client: stripe.StripeClient,
    http: httpx.Client,
    price: str = "price_sandbox_pro",
    card: str = "4242 4242 4242 4242",
    email: str = "ada@example.com",
    billing_mode: str | None = None,
) -> tuple[stripe.Customer, stripe.Subscription]:
    """Customer + completed checkout; returns the customer and the active subscription."""
    customer = new_customer(client, email)
    session = new_checkout(client, customer.id, price, billing_mode)
    response = pay(http, session.url, card)
    assert response.status_code == 303, response.text
    subs = client.v1.subscriptions.list(params={"customer": customer.id}).data
    assert len(subs) == 1
    return customer, subs[0]


def event_types(client: stripe.StripeClient, **params: Any) -> list[str]:
    """Event types oldest first (the API lists newest first)."""
    events = client.v1.events.list(params={"limit": 100, **params}).data
    return [e.type for e in reversed(events)]


def advance(sandbox: SandboxServer, **params: Any) -> dict[str, Any]:
    response = httpx.post(sandbox.url + "/_sandbox/clock/advance", data=params)
    assert response.status_code == 200, response.text
    return response.json()
