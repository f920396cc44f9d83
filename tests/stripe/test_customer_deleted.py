"""A customer deleted in Stripe: Stripe sends customer.deleted and the canceled
subscriptions' customer.subscription.deleted in no set order. Whatever the order, the
user is left without the dead customer, and a later checkout or portal visit works."""

from __future__ import annotations

import pytest
from sqlmodel import select

from billing_app.errors import NoBillingAccount
from billing_app.gateway import get_gateway
from billing_app.models import Subscription, User
from billing_app.services import billing
from tests.factories import make_user
from tests.stripe.test_end_to_end import advance, customer_of, pay, subscribe

T0 = 1_764_000_000


def test_the_customer_deleted_first_is_not_linked_again_by_its_subscriptions_end(
    session, deliver, payloads, stripe_fixtures
):
    uid = make_user(session, customer="cus_gone").id
    base = {"sub_id": "sub_gone", "customer": "cus_gone", "user_id": uid}
    created = payloads.event("customer.subscription.created", payloads.subscription(**base), T0)
    assert deliver.send(created).status_code == 200
    customer = {**stripe_fixtures["customer"], "id": "cus_gone", "deleted": True}
    assert deliver.send(payloads.event("customer.deleted", customer, T0 + 10)).status_code == 200
    ended = payloads.subscription(**base, status="canceled")
    deleted = payloads.event("customer.subscription.deleted", ended, T0 + 10)
    assert deliver.send(deleted).status_code == 200
    session.expire_all()
    assert session.exec(select(Subscription.status)).one() == "canceled"
    assert session.get(User, uid).stripe_customer_id is None


def test_a_checkout_for_a_customer_stripe_no_longer_has_makes_a_new_one(
    session, sandbox, http, deliver
):
    """The deletion's two events delivered in reverse order (and, as it may be, an
    older event linking the customer again): the next checkout still works."""
    user = subscribe(session, http, sandbox)
    gone = customer_of(session, user.id)
    url = sandbox.state.config.webhook_url
    sandbox.state.set_webhook_endpoint(None)  # hold the deliveries, to reorder them
    try:
        get_gateway().client.v1.customers.delete(gone)
    finally:
        sandbox.state.set_webhook_endpoint(url)
    events = {e["type"]: e for e in sandbox.state.events.values()}
    assert deliver.send(events["customer.deleted"]).status_code == 200
    assert deliver.send(events["customer.subscription.deleted"]).status_code == 200
    advance(http, sandbox, seconds=3600)  # not an idempotent replay of the first checkout

    def link_again() -> None:  # what a late, older event or a reconciliation could do
        stored = session.get(User, user.id)
        stored.stripe_customer_id = gone
        session.add(stored)
        session.commit()

    link_again()
    with pytest.raises(NoBillingAccount, match="no billing account"):
        billing.create_portal_session(session, user.id)
    assert session.get(User, user.id).stripe_customer_id is None
    session.rollback()

    link_again()
    checkout = billing.create_checkout_session(session, user.id, "pro")
    assert checkout.startswith(sandbox.url + "/checkout/")
    assert customer_of(session, user.id) != gone
    assert pay(http, checkout).status_code == 303


def test_a_payment_links_client_reference_id_does_not_link_a_strangers_customer(
    session, deliver, payloads, stripe_fixtures
):
    """A Payment Link on the same Stripe account takes client_reference_id from its URL:
    anyone can put a user's id there. The user is not linked to the payer's customer."""
    uid = make_user(session).id
    link_session = {
        **stripe_fixtures["checkout.session"],
        "id": "cs_link",
        "client_reference_id": str(uid),
        "customer": "cus_stranger",
        "metadata": {},
        "subscription": None,
    }
    event = payloads.event("checkout.session.completed", link_session, T0)
    assert deliver.send(event).status_code == 200
    session.expire_all()
    assert session.get(User, uid).stripe_customer_id is None
