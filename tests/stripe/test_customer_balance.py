"""The customer's credit balance as Stripe holds it: customer.created/updated carry the
Customer's `balance` (negative: a credit), so a credit an admin adds in Stripe (goodwill,
a refund to the balance) shows on the billing page at once, not after the next invoice.
Newest event wins, whatever the delivery order; the invoices stand in until one is seen."""

from __future__ import annotations

import asyncio
import copy
import itertools

import pytest

from billing_app.gateway import get_gateway
from billing_app.models import User
from billing_app.states.billing import BillingState, load_slow
from tests.factories import make_user
from tests.stripe.test_end_to_end import customer_of, flush, subscribe
from tests.ui.test_state_db_down import run
from tests.ui.test_states import cookie_for, state_for

T0 = 1_764_000_000


def customer(stripe_fixtures, cus_id: str, balance: int, currency: str | None = "usd") -> dict:
    obj = copy.deepcopy(stripe_fixtures["customer"])
    obj.update(id=cus_id, balance=balance, currency=currency)
    return obj


def credit(amount: str) -> str:
    return f"Credit balance: {amount}, used first for your next invoices."


def stored_balance(session, uid: int) -> int | None:
    session.expire_all()
    balance = session.get(User, uid).stripe_balance
    session.rollback()
    return balance


def test_an_admins_credit_shows_without_an_invoice(session, deliver, payloads, stripe_fixtures):
    uid = make_user(session, email="h81-credit@example.com", customer="cus_h81_credit").id
    assert load_slow(uid, 1).credit_text == ""
    goodwill = customer(stripe_fixtures, "cus_h81_credit", -2500)
    r = deliver.send(payloads.event("customer.updated", goodwill, T0))
    assert r.status_code == 200 and r.json() == {"received": True}
    assert load_slow(uid, 1).credit_text == credit("$25.00")


def test_the_billing_page_state_shows_the_credit(session, deliver, payloads, stripe_fixtures):
    """What the /billing page binds (BillingState.credit_text), after its refresh."""
    uid = make_user(session, email="h81-state@example.com", customer="cus_h81_state").id
    st = state_for(BillingState, cookie=cookie_for(session, uid), path="/billing")
    asyncio.run(st.on_load())
    run(BillingState.event_handlers["refresh"].fn, st)
    assert st.loaded and st.credit_text == ""
    goodwill = customer(stripe_fixtures, "cus_h81_state", -123_456)
    assert deliver.send(payloads.event("customer.updated", goodwill, T0)).status_code == 200
    run(BillingState.event_handlers["refresh"].fn, st)
    assert st.credit_text == credit("$1,234.56")


def test_the_customers_balance_wins_over_the_invoices(session, deliver, payloads, stripe_fixtures):
    """An invoice's ending balance is the credit left when it was finalized; a customer
    event after it (the credit refunded, or spent) is newer. Until one arrives, the
    invoice's figure stands in."""
    uid = make_user(session, email="h81-wins@example.com", customer="cus_h81_wins").id
    inv = payloads.invoice(
        inv_id="in_h81_wins",
        customer="cus_h81_wins",
        sub_id="sub_h81_wins",
        status="paid",
        amount_due=0,
        total=-4000,
        starting_balance=0,
        ending_balance=-4000,
    )
    assert deliver.send(payloads.event("invoice.paid", inv, T0)).status_code == 200
    assert load_slow(uid, 1).credit_text == credit("$40.00")  # no customer event yet
    refunded = customer(stripe_fixtures, "cus_h81_wins", 0)
    assert deliver.send(payloads.event("customer.updated", refunded, T0 + 60)).status_code == 200
    assert load_slow(uid, 1).credit_text == ""
    # A customer with no currency yet (none set before the credit): the plans' currency.
    unset = customer(stripe_fixtures, "cus_h81_wins", -1250, currency=None)
    assert deliver.send(payloads.event("customer.updated", unset, T0 + 120)).status_code == 200
    assert load_slow(uid, 1).credit_text == credit("$12.50")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_customer_events_in_any_order_end_on_the_newest(
    session, deliver, payloads, stripe_fixtures, order
):
    uid = make_user(session, customer="cus_h81_order").id
    events = [
        payloads.event("customer.created", customer(stripe_fixtures, "cus_h81_order", 0), T0),
        payloads.event(
            "customer.updated", customer(stripe_fixtures, "cus_h81_order", -5000), T0 + 10
        ),
        payloads.event(
            "customer.updated", customer(stripe_fixtures, "cus_h81_order", -1500), T0 + 20
        ),
    ]
    for i in order:
        assert deliver.send(events[i]).status_code == 200
    # Each delivered again (Stripe retries): acknowledged once, nothing changes.
    for i in order:
        assert deliver.send(events[i]).json() == {"received": True, "duplicate": True}
    assert stored_balance(session, uid) == -1500
    assert load_slow(uid, 1).credit_text == credit("$15.00")


def test_a_customer_of_no_user_is_acknowledged_and_ignored(
    session, deliver, payloads, stripe_fixtures
):
    stranger = customer(stripe_fixtures, "cus_h81_nobody", -999)
    r = deliver.send(payloads.event("customer.updated", stranger, T0))
    assert r.status_code == 200 and r.json() == {"received": True, "ignored": True}


def test_a_credit_set_in_the_sandbox_reaches_the_dashboard(session, sandbox, http):
    """End to end: the sandbox sets the customer's balance as Stripe's API does
    (`POST /v1/customers/{id}` with `balance`) and sends customer.updated, signed, to the
    app's webhook; the billing page's credit follows at once, and so does a debit."""
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    assert load_slow(user.id, 1).credit_text == ""
    get_gateway().client.v1.customers.update(cus, params={"balance": -7500})
    flush(http, sandbox)
    assert load_slow(user.id, 1).credit_text == credit("$75.00")
    get_gateway().client.v1.customers.update(cus, params={"balance": 0})
    flush(http, sandbox)
    assert load_slow(user.id, 1).credit_text == ""


@pytest.mark.parametrize("stale_first", [True, False])
def test_two_balances_of_one_second_are_settled_by_asking_stripe(
    session, sandbox, http, deliver, payloads, stale_first
):
    """Stripe's `created` has 1 s resolution: two customer.updated of one second with
    different balances say nothing about which is newer. The app fetches the customer."""
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    get_gateway().client.v1.customers.update(cus, params={"balance": -3000})  # what Stripe has
    flush(http, sandbox)
    current = copy.deepcopy(sandbox.state.customers[cus])
    stale = {**current, "balance": -100}
    at = sandbox.state.now()
    pair = [stale, current] if stale_first else [current, stale]
    for obj in pair:
        assert deliver.send(payloads.event("customer.updated", obj, at)).status_code == 200
    assert load_slow(user.id, 1).credit_text == credit("$30.00")
