"""/billing as a paying customer lives it: the Checkout thank-you does not stay beside the
banner of a payment that failed since."""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import Session, select

from billing_app.models import Subscription
from billing_app.states.billing import BillingState, load_live
from tests.factories import make_subscription, make_user
from tests.ui.test_states import cookie_for, state_for


def _set_status(session: Session, sub_id: str, status: str) -> None:
    row = session.exec(
        select(Subscription).where(Subscription.stripe_subscription_id == sub_id)
    ).one()
    row.status = status
    session.add(row)
    session.commit()


def _back_from_checkout(session: Session, uid: int) -> BillingState:
    """The page as it stands after Checkout's return: its thank-you shown."""
    cookie = cookie_for(session, uid)
    st = state_for(BillingState, cookie=cookie, path="/billing?checkout=success&session_id=cs_1")
    asyncio.run(st.on_load())
    st.router = state_for(BillingState, cookie=cookie, path="/billing").router
    asyncio.run(st.on_load())
    st._apply_live(load_live(uid))
    assert st.checkout_notice == "success"
    return st


def test_the_checkout_thank_you_goes_when_the_plan_falls_past_due(session: Session) -> None:
    uid = make_user(session, email="renewal.fails@example.com").id
    make_subscription(session, uid, plan="pro", status="active", sub_id="sub_renewal_fails")
    st = _back_from_checkout(session, uid)

    _set_status(session, "sub_renewal_fails", "past_due")  # a renewal failed meanwhile
    st._apply_live(load_live(uid))
    assert st.sub.past_due
    assert st.checkout_notice == ""


@pytest.mark.parametrize("status", ["active", "incomplete"])
def test_the_checkout_thank_you_stays_while_the_plan_is_paid_or_awaits_its_webhook(
    session: Session, status: str
) -> None:
    """`incomplete`: Stripe's Checkout subscription before its payment's webhook lands."""
    uid = make_user(session, email=f"{status}.buyer@example.com").id
    make_subscription(session, uid, plan="pro", status="active", sub_id=f"sub_{status}")
    st = _back_from_checkout(session, uid)

    _set_status(session, f"sub_{status}", status)
    st._apply_live(load_live(uid))
    assert st.sub.is_subscriber == (status == "active") and st.sub.held == (status != "active")
    assert st.checkout_notice == "success"
