"""The customer's credit balance outside its webhooks: `billing-app stripe sync` pulls it
(missed customer.updated events), never over a newer event's; a deleted customer takes
its credit with it."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from billing_app.cli import main as cli
from billing_app.errors import NoBillingAccount
from billing_app.gateway import get_gateway
from billing_app.models import User
from billing_app.services import billing, stripe_sync
from billing_app.states.billing import load_slow
from tests.factories import make_user
from tests.stripe.test_customer_balance import credit, customer
from tests.stripe.test_end_to_end import customer_of, flush, subscribe

T0 = 1_764_000_000


def stored(session, uid: int) -> tuple:
    session.expire_all()
    user = session.get(User, uid)
    out = (user.stripe_customer_id, user.stripe_balance, user.stripe_balance_currency)
    session.rollback()
    return out


@pytest.mark.parametrize("one_user", [True, False])
def test_sync_pulls_a_balance_whose_webhook_was_lost(session, sandbox, http, receiver, one_user):
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    sandbox.state.set_webhook_endpoint(None)  # the credit's customer.updated is lost
    try:
        get_gateway().client.v1.customers.update(cus, params={"balance": -7500})
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    assert stored(session, user.id)[1] == 0 and load_slow(user.id, 1).credit_text == ""

    if one_user:
        result = CliRunner().invoke(cli, ["stripe", "sync", "--user", user.email])
    else:
        result = CliRunner().invoke(cli, ["stripe", "sync"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["balances_changed"] == 1
    assert stored(session, user.id) == (cus, -7500, "usd")
    assert load_slow(user.id, 1).credit_text == credit("$75.00")
    again = stripe_sync.sync_from_stripe(session, None if one_user else user.id)
    assert again.balances_changed == 0 and again.errors == ()


@pytest.mark.parametrize("one_user", [True, False])
def test_sync_does_not_overwrite_a_newer_events_balance(
    session, sandbox, http, deliver, payloads, one_user
):
    """An event created after Stripe answered the sync (applied meanwhile) is newer than
    what the sync read: it stays."""
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    get_gateway().client.v1.customers.update(cus, params={"balance": -3000})
    flush(http, sandbox)
    newer = {**copy.deepcopy(sandbox.state.customers[cus]), "balance": -100}
    later = int(sandbox.state.now()) + 60
    assert deliver.send(payloads.event("customer.updated", newer, later)).status_code == 200
    report = stripe_sync.sync_from_stripe(session, user.id if one_user else None)
    assert report.errors == () and report.balances_changed == 0
    assert stored(session, user.id)[1] == -100


def test_sync_of_a_deleted_customer_forgets_it_and_its_credit(session, sandbox, http, receiver):
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    get_gateway().client.v1.customers.update(cus, params={"balance": -2000})
    flush(http, sandbox)
    assert load_slow(user.id, 1).credit_text == credit("$20.00")
    sandbox.state.set_webhook_endpoint(None)  # its customer.deleted is lost
    try:
        get_gateway().client.v1.customers.delete(cus)
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    report = stripe_sync.sync_from_stripe(session, user.id)
    assert report.balances_changed == 1
    assert stored(session, user.id) == (None, 0, None)
    assert load_slow(user.id, 1).credit_text == ""


def test_a_deleted_customer_takes_its_credit_with_it(session, deliver, payloads, stripe_fixtures):
    """The balance goes to 0 (not unknown: the invoices' ending balance would show the dead
    customer's credit again), and an older event of that customer changes nothing."""
    uid = make_user(session, email="h94-gone@example.com", customer="cus_h94_gone").id
    inv = payloads.invoice(
        inv_id="in_h94_gone",
        customer="cus_h94_gone",
        sub_id=None,
        status="paid",
        amount_due=0,
        total=-4000,
        starting_balance=0,
        ending_balance=-4000,
    )
    assert deliver.send(payloads.event("invoice.paid", inv, T0)).status_code == 200
    goodwill = customer(stripe_fixtures, "cus_h94_gone", -2500)
    assert deliver.send(payloads.event("customer.updated", goodwill, T0 + 5)).status_code == 200
    assert load_slow(uid, 1).credit_text == credit("$25.00")

    gone = {**stripe_fixtures["customer"], "id": "cus_h94_gone", "deleted": True}
    assert deliver.send(payloads.event("customer.deleted", gone, T0 + 10)).status_code == 200
    assert stored(session, uid) == (None, 0, None)
    assert load_slow(uid, 1).credit_text == ""

    # Linked again (an older subscription event may do that): its older balance is stale.
    row = session.get(User, uid)
    row.stripe_customer_id = "cus_h94_gone"
    session.add(row)
    session.commit()
    older = customer(stripe_fixtures, "cus_h94_gone", -9900)
    assert deliver.send(payloads.event("customer.updated", older, T0 + 8)).status_code == 200
    assert stored(session, uid)[1] == 0


def test_a_customer_found_gone_by_the_portal_takes_its_credit_too(session, sandbox, http, receiver):
    """No customer.deleted applied: the portal finds the customer gone and forgets it,
    credit and all, as the event would."""
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    get_gateway().client.v1.customers.update(cus, params={"balance": -1500})
    flush(http, sandbox)
    assert load_slow(user.id, 1).credit_text == credit("$15.00")
    sandbox.state.set_webhook_endpoint(None)
    try:
        get_gateway().client.v1.customers.delete(cus)
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    with pytest.raises(NoBillingAccount):
        billing.create_portal_session(session, user.id)
    assert stored(session, user.id) == (None, 0, None)
    assert load_slow(user.id, 1).credit_text == ""


@pytest.mark.parametrize("with_currency_first", [True, False])
def test_a_currency_set_in_the_same_second_needs_no_fetch(
    session, deliver, payloads, stripe_fixtures, monkeypatch, with_currency_first
):
    """A first subscription sets the customer's currency (a customer.updated of the same
    second as the card's): Stripe never unsets a currency, so the state with one is the
    later, whatever the delivery order, without asking Stripe."""
    uid = make_user(session, customer="cus_h94_cur").id

    def no_fetch(customer_id: str) -> dict:
        raise AssertionError("fetched the customer")

    monkeypatch.setattr(get_gateway(), "retrieve_customer", no_fetch)
    bare = customer(stripe_fixtures, "cus_h94_cur", 0, currency=None)
    usd = customer(stripe_fixtures, "cus_h94_cur", 0, currency="usd")
    pair = [usd, bare] if with_currency_first else [bare, usd]
    for obj in pair:
        r = deliver.send(payloads.event("customer.updated", obj, T0))
        assert r.status_code == 200, r.text
    assert stored(session, uid) == ("cus_h94_cur", 0, "usd")


def test_a_full_sync_ends_the_plan_of_a_customer_deleted_while_webhooks_were_lost(
    session, sandbox, http, receiver
):
    """Stripe's customer list leaves deleted customers out: `stripe sync` without --user
    still asks Stripe about every linked customer it did not list, so the subscriptions
    the deletion canceled end here too (the user kept Pro, and the dead link, forever)."""
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    sandbox.state.set_webhook_endpoint(None)  # customer.deleted and subscription.deleted lost
    try:
        get_gateway().client.v1.customers.delete(cus)
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
    assert billing_effective_plan(session, user.id) == "pro"

    report = stripe_sync.sync_from_stripe(session)
    assert report.errors == ()
    assert report.subscriptions_changed == 1 and report.balances_changed == 1
    assert stored(session, user.id) == (None, 0, None)
    assert billing_effective_plan(session, user.id) == "free"
    again = stripe_sync.sync_from_stripe(session)
    assert again.errors == () and again.subscriptions == 0


def billing_effective_plan(session, uid: int) -> str:
    from billing_app.services.subscriptions import effective_plan_key

    session.expire_all()
    plan = effective_plan_key(session, uid)
    session.rollback()
    return plan
