"""Subscriptions and invoices driven directly through the API."""

from __future__ import annotations

import httpx
import pytest
import stripe

from stripe_sandbox import SandboxServer

from .helpers import advance, event_types, new_customer, subscribe


def customer_with_card(
    client: stripe.StripeClient, sandbox: SandboxServer, number: str = "4242424242424242"
) -> stripe.Customer:
    customer = new_customer(client)
    httpx.post(f"{sandbox.url}/_sandbox/customers/{customer.id}/card", data={"number": number})
    return customer


def test_create_subscription_charges_the_default_card(
    client: stripe.StripeClient, sandbox: SandboxServer
) -> None:
    customer = customer_with_card(client, sandbox)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": "price_sandbox_basic"}],
            "metadata": {"user_id": "7"},
            "expand": ["latest_invoice"],
        }
    )
    assert sub.status == "active"
    assert sub.metadata["user_id"] == "7"
    assert sub.latest_invoice.status == "paid"  # expanded
    assert sub.latest_invoice.amount_paid == 1900
    assert event_types(client)[-5:] == [
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]


def test_create_without_a_working_card(client: stripe.StripeClient, sandbox: SandboxServer) -> None:
    customer = new_customer(client)
    incomplete = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": "price_sandbox_pro"}]}
    )
    assert incomplete.status == "incomplete"
    invoice = client.v1.invoices.retrieve(incomplete.latest_invoice)
    assert invoice.status == "open"

    failing = customer_with_card(client, sandbox, "4000000000000341")
    with pytest.raises(stripe.CardError) as info:
        client.v1.subscriptions.create(
            params={
                "customer": failing.id,
                "items": [{"price": "price_sandbox_pro"}],
                "payment_behavior": "error_if_incomplete",
            }
        )
    assert info.value.http_status == 402
    assert info.value.code == "card_declined"
    assert client.v1.subscriptions.list(params={"customer": failing.id, "status": "all"}).data == []

    # Incomplete subscriptions expire after 23 hours.
    advance(sandbox, seconds=24 * 3600)
    assert client.v1.subscriptions.retrieve(incomplete.id).status == "incomplete_expired"
    assert client.v1.invoices.retrieve(invoice.id).status == "void"


def test_paying_an_open_invoice_through_the_api(
    client: stripe.StripeClient, sandbox: SandboxServer
) -> None:
    customer = new_customer(client)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": "price_sandbox_pro"}]}
    )
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(sub.latest_invoice)  # no card on file
    httpx.post(
        f"{sandbox.url}/_sandbox/customers/{customer.id}/card", data={"number": "4242424242424242"}
    )
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"  # retried on card change
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(sub.latest_invoice)  # already paid


def test_list_filters_and_status_all(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_pro")
    _, other = subscribe(client, http, "price_sandbox_basic", email="bob@example.com")
    client.v1.subscriptions.cancel(other.id)

    assert [s.id for s in client.v1.subscriptions.list().data] == [sub.id]
    assert {s.id for s in client.v1.subscriptions.list(params={"status": "all"}).data} == {
        sub.id,
        other.id,
    }
    assert [s.id for s in client.v1.subscriptions.list(params={"status": "canceled"}).data] == [
        other.id
    ]
    by_price = client.v1.subscriptions.list(params={"price": "price_sandbox_pro"}).data
    assert [s.id for s in by_price] == [sub.id]
    page = client.v1.subscriptions.list(params={"status": "all", "limit": 1})
    assert page.has_more is True
    rest = client.v1.subscriptions.list(
        params={"status": "all", "limit": 1, "starting_after": page.data[0].id}
    )
    assert [s.id for s in rest.data] == [sub.id]
    paid = client.v1.invoices.list(params={"customer": customer.id, "status": "paid"}).data
    assert len(paid) == 1


def test_update_metadata_and_api_plan_change_with_deferred_prorations(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_basic")
    item_id = sub["items"].data[0].id
    updated = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item_id, "price": "price_sandbox_pro"}],
            "proration_behavior": "create_prorations",
            "metadata": {"plan": "pro"},
        },
    )
    assert updated["items"].data[0].price.id == "price_sandbox_pro"
    assert updated.metadata.to_dict() == {"user_id": "7", "plan": "pro"}
    event = client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]
    assert event.data.previous_attributes.metadata.to_dict() == {"plan": None}
    assert event.data.previous_attributes["items"].data[0].price.id == "price_sandbox_basic"
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 1

    # the prorations ride along on the next renewal invoice
    advance(sandbox, months=1)
    renewal = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    prorations = [line for line in renewal.lines.data if line.parent.type == "invoice_item_details"]
    assert len(prorations) == 2
    assert renewal.amount_paid == 9900 + sum(line.amount for line in prorations)

    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.subscriptions.update(
            sub.id, params={"items": [{"id": "si_missing", "price": "price_sandbox_pro"}]}
        )
    assert info.value.param == "items[0][id]"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(sub.id, params={"proration_behavior": "sometimes"})


def test_cancel_immediately(client: stripe.StripeClient, http: httpx.Client) -> None:
    customer, sub = subscribe(client, http)
    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled"
    assert canceled.canceled_at == canceled.ended_at
    assert canceled.cancellation_details.reason == "cancellation_requested"
    deleted = client.v1.events.list(params={"type": "customer.subscription.deleted"}).data
    assert [e.data.object.id for e in deleted] == [sub.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.cancel(sub.id)


def _upgrade(client: stripe.StripeClient, sub: stripe.Subscription, **params: str):
    return client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": sub["items"].data[0].id, "price": "price_sandbox_enterprise"}],
            "proration_behavior": "always_invoice",
            **params,
        },
    )


def test_update_error_if_incomplete_with_a_failing_card_changes_nothing(
    client: stripe.StripeClient, sandbox: SandboxServer, http: httpx.Client
) -> None:
    customer, sub = subscribe(client, http, price="price_sandbox_basic")
    httpx.post(
        f"{sandbox.url}/_sandbox/customers/{customer.id}/card", data={"number": "4000000000000341"}
    )
    events_before = len(client.v1.events.list(params={"limit": 100}).data)
    invoices_before = client.v1.invoices.list(params={"customer": customer.id}).data
    with pytest.raises(stripe.CardError) as info:
        _upgrade(client, sub, payment_behavior="error_if_incomplete")
    assert info.value.http_status == 402 and info.value.code == "card_declined"
    after = client.v1.subscriptions.retrieve(sub.id)
    assert after.status == "active"
    assert after["items"].data[0].price.id == "price_sandbox_basic"
    assert client.v1.invoices.list(params={"customer": customer.id}).data == invoices_before
    assert len(client.v1.events.list(params={"limit": 100}).data) == events_before

    # The default (allow_incomplete): the change is made and the subscription goes past_due.
    moved = _upgrade(client, sub)
    assert (moved.status, moved["items"].data[0].price.id) == (
        "past_due",
        "price_sandbox_enterprise",
    )


def test_update_error_if_incomplete_goes_through_when_paid_or_nothing_is_due(
    client: stripe.StripeClient, sandbox: SandboxServer, http: httpx.Client
) -> None:
    _, sub = subscribe(client, http, price="price_sandbox_basic")
    upgraded = _upgrade(
        client, sub, payment_behavior="error_if_incomplete", expand=["latest_invoice"]
    )
    assert upgraded.status == "active" and upgraded.latest_invoice.status == "paid"
    assert upgraded["items"].data[0].price.id == "price_sandbox_enterprise"

    failing, sub2 = subscribe(client, http, price="price_sandbox_pro", email="b@example.com")
    httpx.post(
        f"{sandbox.url}/_sandbox/customers/{failing.id}/card", data={"number": "4000000000000341"}
    )
    down = client.v1.subscriptions.update(  # a credit, nothing to pay now: no card needed
        sub2.id,
        params={
            "items": [{"id": sub2["items"].data[0].id, "price": "price_sandbox_basic"}],
            "proration_behavior": "always_invoice",
            "payment_behavior": "error_if_incomplete",
        },
    )
    assert down.status == "active" and down["items"].data[0].price.id == "price_sandbox_basic"


def test_update_payment_behavior_is_validated(
    client: stripe.StripeClient, sandbox: SandboxServer, http: httpx.Client
) -> None:
    _, sub = subscribe(client, http, price="price_sandbox_basic")
    for bad in ("sometimes", "pending_if_incomplete"):
        with pytest.raises(stripe.InvalidRequestError) as info:
            _upgrade(client, sub, payment_behavior=bad)
        assert info.value.param == "payment_behavior"
    assert client.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == (
        "price_sandbox_basic"
    )
    # default_incomplete: changed, its invoice left open for the customer to confirm.
    moved = _upgrade(client, sub, payment_behavior="default_incomplete", expand=["latest_invoice"])
    assert moved.status == "past_due" and moved.latest_invoice.status == "open"
