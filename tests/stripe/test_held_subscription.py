"""An `incomplete` subscription (its first payment declined) as Stripe's webhooks bring it:
the page says a new plan cannot start beside it, Checkout is refused, and paying the invoice
(a working card) makes it the customer's live plan: one subscription, never two. Before it
refuses, Checkout asks Stripe whether the stored held row still is (its webhook may be
lost); one never charged (no payment method) waits for its first payment, nothing failed."""

from __future__ import annotations

import pytest
from sqlmodel import select

from billing_app.errors import Conflict
from billing_app.gateway import get_gateway
from billing_app.models import Subscription, User
from billing_app.services import billing
from billing_app.states.billing import load_live, load_slow
from tests.factories import make_user
from tests.stripe.test_end_to_end import (
    DECLINING_CARD,
    GOOD_CARD,
    advance,
    customer_of,
    flush,
    set_card,
)


def test_an_incomplete_subscription_blocks_checkout_until_its_invoice_is_paid(
    session, sandbox, http
):
    user = make_user(session)
    billing.create_checkout_session(session, user.id, "pro")  # makes the Stripe customer
    cus = customer_of(session, user.id)
    set_card(http, sandbox, cus, DECLINING_CARD)
    sub = get_gateway().client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": "price_sandbox_pro"}],
            "metadata": {"user_id": str(user.id)},
        }
    )
    assert sub.status == "incomplete"
    invoice = get_gateway().client.v1.invoices.retrieve(sub.latest_invoice)
    flush(http, sandbox)

    shown = load_live(user.id).sub
    assert (shown.plan_name, shown.held) == ("Free", True)
    assert shown.held_text.startswith("Your Pro subscription is waiting for its first payment")
    due = load_slow(user.id, 1).due  # the banner's amount and link
    assert (due.number, due.hosted_url) == (invoice.number, invoice.hosted_invoice_url)
    with pytest.raises(Conflict, match=f"Pay its open invoice {invoice.number} "):
        billing.create_checkout_session(session, user.id, "basic")

    set_card(http, sandbox, cus, GOOD_CARD.replace(" ", ""))  # retries the open invoice
    shown = load_live(user.id).sub
    assert (shown.plan_name, shown.is_subscriber, shown.held) == ("Pro", True, False)
    with pytest.raises(Conflict, match="You already subscribe to the Pro plan"):
        billing.create_checkout_session(session, user.id, "basic")
    assert len(session.exec(select(Subscription)).all()) == 1


def _waiting(session, sandbox, http):
    """A customer with an `incomplete` Pro subscription whose first invoice Stripe never
    charged (default_incomplete: no payment tried), stored from its webhooks."""
    user = make_user(session)
    billing.create_checkout_session(session, user.id, "pro")  # makes the Stripe customer
    cus = customer_of(session, user.id)
    sub = get_gateway().client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": "price_sandbox_pro"}],
            "metadata": {"user_id": str(user.id)},
            "payment_behavior": "default_incomplete",
        }
    )
    assert sub.status == "incomplete"
    flush(http, sandbox)
    return user, cus, sub, get_gateway().client.v1.invoices.retrieve(sub.latest_invoice)


def _stored_status(session, sub_id: str) -> str:
    session.expire_all()
    status = session.exec(
        select(Subscription.status).where(Subscription.stripe_subscription_id == sub_id)
    ).one()
    session.rollback()
    return status


def _ask_stripe_spy(session, monkeypatch) -> list[tuple[str, bool]]:
    """Each subscription the app asks Stripe for, and whether `session` had a transaction
    open then (on SQLite: the write lock every usage write and webhook would wait for)."""
    gateway = get_gateway()
    real = gateway.retrieve_subscription
    calls: list[tuple[str, bool]] = []

    def spy(subscription_id):
        calls.append((subscription_id, session.in_transaction()))
        return real(subscription_id)

    monkeypatch.setattr(gateway, "retrieve_subscription", spy)
    return calls


def test_a_subscription_never_charged_waits_for_its_first_payment(session, sandbox, http):
    """Nothing was attempted: the banner says so and links the invoice to pay."""
    user, _, _, invoice = _waiting(session, sandbox, http)
    assert invoice.attempt_count == 0
    shown = load_live(user.id).sub
    assert (shown.held, shown.awaits_first_payment) == (True, True)
    assert shown.alert_title == "Your Pro subscription is waiting for its first payment."
    assert shown.alert_action == "Add payment method"
    assert (shown.held_invoice_number, shown.held_invoice_url) == (
        invoice.number,
        invoice.hosted_invoice_url,
    )
    assert load_slow(user.id, 1).due.hosted_url == ""  # not a failed payment


def test_checkout_asks_stripe_before_refusing_and_is_refused_while_it_is_still_held(
    session, sandbox, http, monkeypatch
):
    user, _, sub, invoice = _waiting(session, sandbox, http)
    calls = _ask_stripe_spy(session, monkeypatch)
    session.get(User, user.id)  # the caller has read something: a transaction is open
    with pytest.raises(Conflict) as info:
        billing.create_checkout_session(session, user.id, "basic")
    assert (info.value.status_code, info.value.details) == (
        409,
        {"plan": "pro", "status": "incomplete"},
    )
    assert info.value.message == (
        "Your Pro subscription is waiting for its first payment: a new subscription would be "
        f"billed on top of it. Pay its open invoice {invoice.number} "
        f"({invoice.hosted_invoice_url}) to start it, or cancel that subscription in Manage "
        "subscription (the Stripe customer portal), then choose a plan."
    )
    assert calls == [(sub.id, False)]  # asked once, with no transaction open
    assert _stored_status(session, sub.id) == "incomplete"


@pytest.mark.parametrize("moved_to", ["incomplete_expired", "active"])
def test_a_held_row_stripe_has_moved_on_from_is_updated_and_checkout_goes_on_from_there(
    session, sandbox, http, receiver, monkeypatch, moved_to
):
    """Stripe expired the subscription (23 h unpaid), or it was paid, and that webhook was
    lost: the row still says `incomplete`. Checkout asks Stripe, stores its state, then
    starts (expired) or says the plan is already there (active): not the held 409 until
    the next webhook or `stripe sync`."""
    user, cus, sub, _ = _waiting(session, sandbox, http)
    sandbox.state.set_webhook_endpoint(None)  # Stripe's word on it never arrives
    try:
        if moved_to == "incomplete_expired":
            advance(http, sandbox, seconds=24 * 3600)
        else:
            set_card(http, sandbox, cus, GOOD_CARD.replace(" ", ""))  # pays the open invoice
        assert get_gateway().retrieve_subscription(sub.id)["status"] == moved_to
        assert _stored_status(session, sub.id) == "incomplete"
        calls = _ask_stripe_spy(session, monkeypatch)
        if moved_to == "incomplete_expired":
            url = billing.create_checkout_session(session, user.id, "basic")
            assert url.startswith(sandbox.url + "/checkout/")
        else:
            with pytest.raises(Conflict, match="^You already subscribe to the Pro plan. "):
                billing.create_checkout_session(session, user.id, "basic")
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    assert calls == [(sub.id, False)]
    assert _stored_status(session, sub.id) == moved_to
    assert load_live(user.id).sub.held is False
