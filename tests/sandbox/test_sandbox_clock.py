"""The sandbox clock: renewals, failed payments, retries and scheduled cancellations."""

from __future__ import annotations

import time

import httpx
import stripe

from stripe_sandbox import SandboxServer

from .helpers import advance, event_types, subscribe


def set_card(sandbox: SandboxServer, customer: str, number: str) -> dict:
    response = httpx.post(
        f"{sandbox.url}/_sandbox/customers/{customer}/card", data={"number": number}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_clock_endpoint_starts_at_real_time_and_only_moves_forward(sandbox: SandboxServer) -> None:
    now = httpx.get(sandbox.url + "/_sandbox/clock").json()["now"]
    assert abs(now - time.time()) < 5
    moved = advance(sandbox, seconds=3600)
    assert moved["now"] >= now + 3600
    json_body = httpx.post(sandbox.url + "/_sandbox/clock/advance", json={"to": now + 7200})
    assert json_body.json()["now"] >= now + 7200
    backwards = httpx.post(sandbox.url + "/_sandbox/clock/advance", data={"to": now})
    assert backwards.status_code == 400


def test_renewal_creates_a_new_paid_invoice_and_moves_the_period(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_pro")
    first_item = sub["items"].data[0]
    result = advance(sandbox, seconds=first_item.current_period_end - int(time.time()) + 60)
    assert [e["type"] for e in result["events"]] == [
        "customer.subscription.updated",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]

    renewed = client.v1.subscriptions.retrieve(sub.id)
    item = renewed["items"].data[0]
    assert renewed.status == "active"
    assert item.current_period_start == first_item.current_period_end
    assert 28 * 86400 <= item.current_period_end - item.current_period_start <= 31 * 86400

    invoices = client.v1.invoices.list(params={"subscription": sub.id}).data
    assert len(invoices) == 2
    latest = invoices[0]
    assert latest.id == renewed.latest_invoice
    assert (latest.status, latest.billing_reason, latest.amount_paid) == (
        "paid",
        "subscription_cycle",
        9900,
    )
    assert latest.number != invoices[1].number
    assert latest.created == first_item.current_period_end  # it happened at the boundary
    line = latest.lines.data[0]
    assert (line.period.start, line.period.end) == (
        item.current_period_start,
        item.current_period_end,
    )
    assert latest.parent.subscription_details.subscription == sub.id

    updated = client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]
    old_items = updated.data.previous_attributes["items"]
    assert old_items.data[0].current_period_end == first_item.current_period_end


def test_three_month_jump_renews_three_times_in_order(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_basic")
    advance(sandbox, months=3)
    invoices = client.v1.invoices.list(params={"subscription": sub.id}).data
    assert [i.billing_reason for i in invoices] == ["subscription_cycle"] * 3 + [
        "subscription_create"
    ]
    assert all(i.status == "paid" for i in invoices)
    events = list(reversed(client.v1.events.list(params={"limit": 100}).data))
    created = [e.created for e in events]
    assert created == sorted(created)
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_failing_card_at_renewal_makes_the_subscription_past_due(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http)
    set_card(sandbox, customer.id, "4000000000000341")
    result = advance(sandbox, months=1)
    assert [e["type"] for e in result["events"]] == [
        "customer.subscription.updated",
        "invoice.created",
        "invoice.finalized",
        "invoice.payment_failed",
        "invoice.updated",
        "customer.subscription.updated",
    ]
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    failed = client.v1.invoices.list(params={"subscription": sub.id, "status": "open"}).data
    assert len(failed) == 1
    assert failed[0].attempt_count == 1
    assert failed[0].next_payment_attempt is not None
    assert client.v1.customers.retrieve(customer.id).delinquent is True
    last_update = client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]
    assert last_update.data.object.status == "past_due"
    assert last_update.data.previous_attributes.status == "active"


def test_retries_then_cancel_when_every_attempt_fails(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http)
    set_card(sandbox, customer.id, "4000000000000341")
    advance(sandbox, months=1, days=20)  # renewal + retries after 3, 5 and 7 days
    canceled = client.v1.subscriptions.retrieve(sub.id)
    assert canceled.status == "canceled"
    assert canceled.cancellation_details.reason == "payment_failed"
    failures = client.v1.events.list(params={"type": "invoice.payment_failed"}).data
    assert len(failures) == 4
    assert failures[0].data.object.next_payment_attempt is None


def test_fixing_the_card_through_the_control_endpoint_recovers(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http)
    set_card(sandbox, customer.id, "4000000000000341")
    advance(sandbox, months=1)
    fixed = set_card(sandbox, customer.id, "4242424242424242")
    assert [i["status"] for i in fixed["retried_invoices"]] == ["paid"]
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    assert client.v1.customers.retrieve(customer.id).delinquent is False


def test_cancel_at_period_end_then_advance_deletes(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http)
    client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    period_end = sub["items"].data[0].current_period_end
    result = advance(sandbox, months=2)
    assert [e["type"] for e in result["events"]] == ["customer.subscription.deleted"]
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert ended.status == "canceled"
    assert ended.ended_at == period_end
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 1
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    deleted = client.v1.events.list(params={"type": "customer.subscription.deleted"}).data[0]
    assert deleted.created == period_end
    assert "customer.subscription.deleted" in event_types(client)
