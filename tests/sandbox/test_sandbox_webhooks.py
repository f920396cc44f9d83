"""Webhook delivery: Stripe's signature scheme, ordering, retries and delivery status."""

from __future__ import annotations

import json

import httpx
import pytest
import stripe

from stripe_sandbox import SandboxConfig, SandboxServer, sign_webhook

from .helpers import SECRET, WebhookReceiver, make_client, new_customer, subscribe


def test_events_are_delivered_signed_in_creation_order(
    client: stripe.StripeClient,
    http: httpx.Client,
    sandbox: SandboxServer,
    receiver: WebhookReceiver,
) -> None:
    sandbox.state.set_webhook_endpoint(receiver.url)
    customer, sub = subscribe(client, http)
    assert httpx.post(sandbox.url + "/_sandbox/webhooks/flush").json() == {
        "idle": True,
        "queued": 0,
    }

    delivered = receiver.events()  # raises if a signature does not verify
    api_events = list(reversed(client.v1.events.list(params={"limit": 100}).data))
    assert [e.id for e in delivered] == [e.id for e in api_events]
    assert [e.type for e in delivered][-6:] == [
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ]
    first = delivered[0]
    assert first.type == "customer.created"
    assert first.api_version == "2026-10-28.endive"
    assert first.data.object.id == customer.id
    assert first.livemode is False
    assert first.request.idempotency_key  # stripe-python sends one on every POST
    created_sub = next(e for e in delivered if e.type == "customer.subscription.created")
    assert created_sub.data.object.metadata.to_dict() == {"user_id": "7"}
    assert created_sub.request.id is None  # caused by the checkout page, not an API call

    # all delivered now: pending_webhooks dropped to 0, nothing is "unsuccessful"
    assert client.v1.events.retrieve(first.id).pending_webhooks == 0
    assert client.v1.events.list(params={"delivery_success": False}).data == []


def test_signature_matches_stripe_scheme_and_rejects_tampering(
    client: stripe.StripeClient, sandbox: SandboxServer, receiver: WebhookReceiver
) -> None:
    sandbox.state.set_webhook_endpoint(receiver.url)
    new_customer(client)
    assert sandbox.flush(10)
    raw = receiver.received[0]
    timestamp = int(raw.signature.split(",")[0].removeprefix("t="))
    assert raw.signature == sign_webhook(raw.body, SECRET, timestamp)
    assert json.loads(raw.body)["pending_webhooks"] == 1
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(raw.body + b" ", raw.signature, SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(raw.body, raw.signature, "whsec_wrong")


def test_a_failed_delivery_is_retried(
    client: stripe.StripeClient, sandbox: SandboxServer, receiver: WebhookReceiver
) -> None:
    sandbox.state.set_webhook_endpoint(receiver.url)
    receiver.fail_next = 1
    customer = new_customer(client)
    assert sandbox.flush(10)
    assert receiver.failures_served == 1
    assert receiver.types() == ["customer.created"]
    assert receiver.events()[0].data.object.id == customer.id
    status = httpx.get(sandbox.url + "/_sandbox/events").json()["data"][0]["delivery"]
    assert status["status"] == "succeeded"
    assert status["attempts"] == 2


def test_undeliverable_events_are_listed_with_delivery_success_false(
    receiver: WebhookReceiver,
) -> None:
    config = SandboxConfig(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_max_attempts=3,
        webhook_retry_base=0.01,
    )
    with SandboxServer(config) as sandbox:
        client = make_client(sandbox)
        receiver.fail_next = 3  # every attempt of the first event fails
        lost = new_customer(client, "lost@example.com")
        assert sandbox.flush(10)
        kept = new_customer(client, "kept@example.com")
        assert sandbox.flush(10)

        failed = client.v1.events.list(params={"delivery_success": False}).data
        assert [e.data.object.id for e in failed] == [lost.id]
        assert failed[0].pending_webhooks == 1
        ok = client.v1.events.list(params={"delivery_success": True}).data
        assert [e.data.object.id for e in ok] == [kept.id]
        log = httpx.get(sandbox.url + "/_sandbox/events").json()["data"]
        assert [e["delivery"]["status"] for e in log] == ["failed", "succeeded"]
        assert log[0]["delivery"]["attempts"] == 3

        # An app catching up resends; this time the receiver accepts it.
        resent = httpx.post(f"{sandbox.url}/_sandbox/webhooks/resend/{failed[0].id}")
        assert resent.json() == {"queued": True}
        assert sandbox.flush(10)
        assert client.v1.events.list(params={"delivery_success": False}).data == []
        assert [e.data.object.email for e in receiver.events()] == [
            "kept@example.com",
            "lost@example.com",
        ]


def test_receiver_may_call_the_sandbox_back_while_handling(
    client: stripe.StripeClient,
    http: httpx.Client,
    sandbox: SandboxServer,
    receiver: WebhookReceiver,
) -> None:
    """An app's handler typically re-fetches the object; deliveries must not block the API."""
    fetched: list[str] = []

    def refetch(body: bytes) -> None:
        event = json.loads(body)
        if event["type"] == "customer.subscription.created":
            sub = make_client(sandbox).v1.subscriptions.retrieve(event["data"]["object"]["id"])
            fetched.append(sub.status)

    receiver.on_event = refetch
    httpx.post(sandbox.url + "/_sandbox/webhooks/endpoint", data={"url": receiver.url})
    subscribe(client, http)
    assert sandbox.flush(10)
    assert fetched == ["active"]


def test_events_list_filters(client: stripe.StripeClient, http: httpx.Client) -> None:
    subscribe(client, http)
    invoice_events = client.v1.events.list(params={"type": "invoice.*"}).data
    assert {e.type for e in invoice_events} == {
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    }
    picked = client.v1.events.list(
        params={"types": ["customer.created", "checkout.session.completed"]}
    ).data
    assert [e.type for e in picked] == ["checkout.session.completed", "customer.created"]
    everything = client.v1.events.list(params={"limit": 100}).data
    newest = everything[0]
    later = client.v1.events.list(params={"created": {"gte": newest.created}}).data
    assert newest.id in [e.id for e in later]
    assert client.v1.events.list(params={"created": {"gt": newest.created}}).data == []
