"""A customer's balance in the sandbox, as in Stripe: set with `POST /v1/customers/{id}`
(`balance`, minor units, negative: a credit), and every change told by a signed
customer.updated, also when an invoice's finalization uses the credit."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe

from stripe_sandbox import SandboxServer

from .helpers import advance, new_customer, subscribe


def test_setting_a_balance_sends_a_signed_customer_updated(
    client: stripe.StripeClient, sandbox: SandboxServer, receiver
) -> None:
    sandbox.state.set_webhook_endpoint(receiver.url)
    cus = new_customer(client)
    updated = client.v1.customers.update(cus.id, params={"balance": -2500})
    assert updated.balance == -2500
    assert client.v1.customers.retrieve(cus.id).balance == -2500
    assert sandbox.flush(10)
    events = receiver.events()  # raises if a signature does not verify
    assert [e.type for e in events] == ["customer.created", "customer.updated"]
    assert events[1].data.object.balance == -2500
    assert events[1].data.previous_attributes.to_dict() == {"balance": 0}


def test_a_bad_balance_is_refused_and_changes_nothing(
    client: stripe.StripeClient, sandbox: SandboxServer
) -> None:
    cus = new_customer(client)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.update(cus.id, params={"balance": "lots"})
    assert err.value.param == "balance"
    assert client.v1.customers.retrieve(cus.id).balance == 0
    types = [e.type for e in client.v1.events.list().data]
    assert types == ["customer.created"]


def test_a_renewal_paid_from_the_credit_sends_the_new_balance(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_pro")
    client.v1.customers.update(customer.id, params={"balance": -15000})
    end = sub["items"].data[0].current_period_end
    result = advance(sandbox, seconds=end - int(time.time()) + 60)
    assert "customer.updated" in [e["type"] for e in result["events"]]
    event = next(
        e
        for e in client.v1.events.list(params={"type": "customer.updated"}).data
        if e.created >= end
    )
    assert event.data.object.balance == -15000 + 9900  # Pro's renewal paid from the credit
    assert event.data.previous_attributes["balance"] == -15000


def test_a_first_subscription_sets_the_currency_with_a_customer_updated(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer, receiver
) -> None:
    """A new customer has no currency; its first subscription gives it one, and Stripe
    tells that change, as any other, with a signed customer.updated (previous: null),
    before customer.subscription.created."""
    sandbox.state.set_webhook_endpoint(receiver.url)
    customer, _ = subscribe(client, http)
    assert client.v1.customers.retrieve(customer.id).currency == "usd"
    assert sandbox.flush(10)
    events = receiver.events()  # raises if a signature does not verify
    told = [
        e
        for e in events
        if e.type == "customer.updated" and "currency" in e.data.previous_attributes
    ]
    assert len(told) == 1
    assert told[0].data.object.currency == "usd"
    assert told[0].data.previous_attributes.to_dict() == {"currency": None}
    types = [e.type for e in events]
    assert types.index("customer.updated", types.index("payment_method.attached")) < types.index(
        "customer.subscription.created"
    )
