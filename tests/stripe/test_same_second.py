"""Subscription events of the same second. Stripe's `created` is whole seconds and its
delivery order is not guaranteed, so two different states stamped with the same second are
settled by asking Stripe (the sandbox, over real HTTP) for the subscription as it is now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import select

from billing_app import clock
from billing_app.gateway import get_gateway
from billing_app.gateway.stripe_gateway import StripeGateway
from billing_app.models import StripeEvent, Subscription
from billing_app.services import billing, stripe_sync
from billing_app.services.subscriptions import get_subscription_dto
from tests.stripe.conftest import WEBHOOK_PATH
from tests.stripe.test_end_to_end import PRO, flush, limits, subscribe
from tests.stripe.test_webhook import T0, _customer_user

BASIC = {"tokens": 100_000, "api_calls": 1_000, "scraping_tasks": 100}


def _subscription_events(sandbox) -> list[dict[str, Any]]:
    with sandbox.state.lock:
        return [
            sandbox.state.event_view(e)
            for e in sandbox.state.events.values()
            if e["type"].startswith("customer.subscription.")
        ]


def _basic_then_pro_in_one_second(session, sandbox, http, receiver):
    """A basic subscription moved to pro within one second, its webhooks held back; returns
    the user, the sandbox subscription and its two events (created, updated)."""
    state = sandbox.state
    state.set_webhook_endpoint(None)
    try:
        with state.clock.frozen_at(state.now()):
            user = subscribe(session, http, sandbox, "basic")
            sub = next(iter(state.subscriptions.values()))
            get_gateway().change_subscription_price(
                subscription_id=sub["id"],
                item_id=sub["items"]["data"][0]["id"],
                price_id="price_sandbox_pro",
                proration_behavior="create_prorations",
                version="test",
            )
    finally:
        state.set_webhook_endpoint(receiver.url + WEBHOOK_PATH)
    created, updated = _subscription_events(sandbox)
    assert (created["type"], updated["type"]) == (
        "customer.subscription.created",
        "customer.subscription.updated",
    )
    assert created["created"] == updated["created"]
    return user, sub, created, updated


def test_an_older_state_of_the_same_second_delivered_last_does_not_win(
    session, sandbox, http, receiver, deliver
):
    user, _, created, updated = _basic_then_pro_in_one_second(session, sandbox, http, receiver)
    assert deliver.send(updated).status_code == 200
    assert deliver.send(created).status_code == 200  # late: the older, basic state
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.plan) == ("active", "pro")
    assert limits(session, user.id) == PRO


def test_a_failed_fetch_fails_the_delivery_and_its_retry_applies(
    session, sandbox, http, receiver, deliver
):
    user, sub, created, updated = _basic_then_pro_in_one_second(session, sandbox, http, receiver)
    assert deliver.send(updated).status_code == 200
    with sandbox.state.lock:  # Stripe cannot answer for the subscription for a while
        hidden = sandbox.state.subscriptions.pop(sub["id"])
    try:
        r = deliver.send(created)
    finally:
        with sandbox.state.lock:
            sandbox.state.subscriptions[sub["id"]] = hidden
    assert r.status_code == 500 and "Stripe will retry" in r.json()["error"]["message"]
    row = session.exec(
        select(StripeEvent).where(StripeEvent.stripe_event_id == created["id"])
    ).one()
    assert row.processed_at is None and "subscription" in (row.error or "")
    session.rollback()
    assert get_subscription_dto(session, user.id).plan == "pro"  # untouched, not basic

    assert deliver.send(created).status_code == 200  # Stripe's retry
    assert get_subscription_dto(session, user.id).plan == "pro"
    assert limits(session, user.id) == PRO


def test_no_fetch_for_a_same_second_event_of_the_same_state_or_a_terminal_one(
    session, deliver, payloads, monkeypatch
):
    fetched: list[str] = []
    real = StripeGateway.retrieve_subscription

    def counting(self: StripeGateway, subscription_id: str) -> dict[str, Any]:
        fetched.append(subscription_id)
        return real(self, subscription_id)

    monkeypatch.setattr(StripeGateway, "retrieve_subscription", counting)
    uid = _customer_user(session)
    base = dict(sub_id="sub_tie", customer="cus_test_1", user_id=uid)
    active = payloads.subscription(**base)
    canceled = payloads.subscription(**base, status="canceled")
    for event_type, obj in (
        ("customer.subscription.updated", active),
        ("customer.subscription.updated", active),  # another event, the same state
        ("customer.subscription.deleted", canceled),  # terminal: wins as it is
        ("customer.subscription.updated", active),  # never revives a canceled one
    ):
        assert deliver.send(payloads.event(event_type, obj, T0)).status_code == 200
    assert fetched == []
    assert session.exec(select(Subscription)).one().status == "canceled"


def test_an_event_in_the_same_second_as_a_local_refresh_is_not_dropped(session, sandbox, http):
    """change_plan writes Stripe's answer at once; a later change of that same second (here
    a cancel at period end) must still be applied when its webhook arrives."""
    user = subscribe(session, http, sandbox, "basic")
    assert limits(session, user.id) == BASIC
    state = sandbox.state
    # The app's clock as in production: sub-second, 0.7 s into the sandbox's second.
    clock.set_clock(lambda: datetime.fromtimestamp(state.now() + 0.7, UTC))
    with state.clock.frozen_at(state.now()):
        dto = billing.change_plan(session, user.id, "pro")
        assert (dto.plan, dto.cancel_at_period_end) == ("pro", False)
        sub = next(iter(state.subscriptions.values()))
        get_gateway().set_cancel_at_period_end(
            subscription_id=sub["id"], cancel=True, version="portal"
        )
        flush(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert (dto.plan, dto.cancel_at_period_end) == ("pro", True)


def test_a_sub_second_stamp_is_stored_as_its_whole_second(session, payloads):
    """Whatever stamp a caller passes (an API answer, a fetch), the stored one has Stripe's
    1 s resolution, so an event of that second ties instead of looking older."""
    uid = _customer_user(session)
    obj = payloads.subscription(sub_id="sub_stamp", customer="cus_test_1", user_id=uid)
    stamp = datetime.fromtimestamp(T0, UTC) + timedelta(milliseconds=700)
    stripe_sync.apply_subscription(session, obj, stamp, force=True)
    session.commit()
    stored = session.exec(select(Subscription)).one().updated_from_stripe_at
    session.rollback()
    assert stored is not None and stored.timestamp() == T0
