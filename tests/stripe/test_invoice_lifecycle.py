"""Invoices as a paying customer and an admin meet them, after webhook sequences built from
Stripe's own fixture objects."""

from __future__ import annotations

import time

from sqlmodel import select

from billing_app.models import Invoice
from billing_app.services import admin as admin_service
from billing_app.services import exports, stripe_sync
from billing_app.services.invoices import list_invoices
from billing_app.states.billing import load_slow
from tests.factories import make_user

T0 = 1_764_000_000


def _invoices(session):
    session.expire_all()
    rows = session.exec(select(Invoice).order_by(Invoice.id)).all()
    session.rollback()
    return rows


def _draft(payloads, inv_id, customer, sub_id):
    d = payloads.invoice(inv_id=inv_id, customer=customer, sub_id=sub_id, status="draft")
    d.update(number=None, hosted_invoice_url=None, invoice_pdf=None)
    return d


def test_a_deleted_draft_invoice_is_not_kept(session, deliver, payloads):
    """Stripe deletes a draft (`invoice.deleted`, drafts only): it no longer exists, so
    neither the customer's list nor the admin's list or CSV may keep showing it."""
    uid = make_user(session, customer="cus_del").id
    draft = _draft(payloads, "in_deleted_draft", "cus_del", "sub_del")
    assert deliver.send(payloads.event("invoice.created", draft, T0)).status_code == 200
    assert deliver.send(payloads.event("invoice.deleted", draft, T0 + 60)).status_code == 200
    assert list_invoices(session).total == 0  # the admin's list
    assert load_slow(uid, 1).invoice_total == 0  # the customer's
    assert "in_deleted_draft" not in "".join(exports.invoices_csv(session))
    session.rollback()
    # A copy of the draft's event delivered late does not bring it back.
    assert deliver.send(payloads.event("invoice.updated", draft, T0 + 30)).status_code == 200
    assert list_invoices(session).total == 0


def test_the_customer_is_not_shown_draft_invoices(session, deliver, payloads):
    """A draft (a renewal's, for about an hour) is no charge yet: its amount may still
    change, it has no number, no page and no PDF. The customer's list shows what was
    billed; the admin still sees drafts."""
    uid = make_user(session, customer="cus_dr").id
    paid = payloads.invoice(
        inv_id="in_paid_1", customer="cus_dr", sub_id="sub_dr", status="paid", amount_paid=9900
    )
    deliver.send(payloads.event("invoice.paid", paid, T0))
    deliver.send(
        payloads.event(
            "invoice.created", _draft(payloads, "in_draft_2", "cus_dr", "sub_dr"), T0 + 60
        )
    )
    shown = load_slow(uid, 1)
    assert [(i.number, i.status) for i in shown.invoices] == [("NUM-id_1", "paid")]
    assert shown.invoice_total == 1


def test_sync_never_reopens_an_invoice_paid_while_it_listed(
    session, deliver, payloads, monkeypatch
):
    """`stripe sync` lists a customer's invoices, then applies them. An invoice paid in
    between (its invoice.paid webhook applied meanwhile) must stay paid: Stripe never
    reopens a paid invoice, and the listed copy is older than the webhook's."""
    uid = make_user(session, customer="cus_sync").id
    base = dict(inv_id="in_race", customer="cus_sync", sub_id="sub_race")
    opened = payloads.invoice(**base, status="open")
    deliver.send(payloads.event("invoice.finalized", opened, int(time.time()) - 120))
    paid = payloads.invoice(**base, status="paid", amount_paid=9900)

    real = stripe_sync.get_gateway

    class Gateway:  # Stripe's answers, with the payment landing after the list was served
        def __getattr__(self, name):  # the webhook route verifies through the real one
            return getattr(real(), name)

        def iter_customers(self, **_):
            yield {"id": "cus_sync", "metadata": {"user_id": str(uid)}}

        def iter_subscriptions(self, **_):
            return iter(())

        def iter_invoices(self, **_):
            yield dict(opened)
            r = deliver.send(payloads.event("invoice.paid", paid, int(time.time()) + 1))
            assert r.status_code == 200, r.text

    monkeypatch.setattr(stripe_sync, "get_gateway", Gateway)
    report = stripe_sync.sync_from_stripe(session)
    assert report.errors == ()
    inv = _invoices(session)[0]
    assert (inv.status, inv.amount_paid) == ("paid", 9900)


def test_failed_payments_still_counts_an_unpaid_invoice_after_dunning_cancels(
    session, deliver, payloads
):
    """Every retry failed, so Stripe canceled the subscription (its default) and left the
    invoice open: the money is still owed and its payment still failed."""
    uid = make_user(session, customer="cus_dun").id
    sub = dict(sub_id="sub_dun", customer="cus_dun", user_id=uid)

    def subscription(change: str, status: str, at: int) -> None:
        obj = payloads.subscription(**sub, status=status)
        deliver.send(payloads.event(f"customer.subscription.{change}", obj, at))

    deliver.send(payloads.event("customer.subscription.created", payloads.subscription(**sub), T0))
    failed = payloads.invoice(inv_id="in_dun", customer="cus_dun", sub_id="sub_dun", status="open")
    failed["attempt_count"] = 1
    deliver.send(payloads.event("invoice.payment_failed", failed, T0 + 10))
    subscription("updated", "past_due", T0 + 10)
    assert admin_service.headline_stats(session)["failed_payments"] == 1
    failed["attempt_count"] = 4
    failed["next_payment_attempt"] = None
    deliver.send(payloads.event("invoice.payment_failed", failed, T0 + 900))
    subscription("deleted", "canceled", T0 + 900)
    assert _invoices(session)[0].status == "open"
    assert admin_service.headline_stats(session)["failed_payments"] == 1
