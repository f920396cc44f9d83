"""An `incomplete` subscription (its first payment declined) as Stripe's webhooks bring it:
the page says a new plan cannot start beside it, Checkout is refused, and paying the invoice
(a working card) makes it the customer's live plan: one subscription, never two."""

from __future__ import annotations

import pytest
from sqlmodel import select

from billing_app.errors import Conflict
from billing_app.gateway import get_gateway
from billing_app.models import Subscription
from billing_app.services import billing
from billing_app.states.billing import load_live, load_slow
from tests.factories import make_user
from tests.stripe.test_end_to_end import DECLINING_CARD, GOOD_CARD, customer_of, flush, set_card


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
