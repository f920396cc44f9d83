"""Invoices as a paying customer and an admin meet them, after webhook sequences built from
Stripe's own fixture objects."""

from __future__ import annotations

import csv
import io
import time

import sqlalchemy as sa
from sqlmodel import select

from billing_app.models import Invoice
from billing_app.services import admin as admin_service
from billing_app.services import auth, billing, exports, stripe_sync
from billing_app.services.invoices import list_invoices
from billing_app.states.billing import load_slow
from tests.factories import make_user
from tests.stripe.test_end_to_end import advance, subscribe

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


def test_a_finalized_event_delivered_after_the_failed_payment_of_its_second_keeps_it_failed(
    session, deliver, payloads
):
    """A first invoice finalized and its payment declined in the same second (a checkout
    with a declined card, an `incomplete` subscription, so nothing else marks it):
    delivered failure first, `invoice.finalized` (attempt 0) wrote its count back to 0,
    and the failed payment vanished from the admin's count and the customer's badge.
    Stripe never lowers a count."""
    uid = make_user(session, customer="cus_tie").id
    sub = dict(sub_id="sub_tie", customer="cus_tie", user_id=uid)
    obj = payloads.subscription(**sub, status="incomplete")
    deliver.send(payloads.event("customer.subscription.created", obj, T0))
    inv = payloads.invoice(inv_id="in_tie", customer="cus_tie", sub_id="sub_tie", status="open")
    declined = {**inv, "attempt_count": 1}
    assert deliver.send(payloads.event("invoice.payment_failed", declined, T0)).status_code == 200
    assert deliver.send(payloads.event("invoice.finalized", inv, T0)).status_code == 200
    assert [i.attempt_count for i in _invoices(session)] == [1]
    assert admin_service.headline_stats(session)["failed_payments"] == 1
    assert [i.status_label for i in load_slow(uid, 1).invoices] == ["Payment failed"]


def test_credits_balance_payments_and_part_payments_read_as_what_was_owed(
    session, deliver, payloads, receiver, http
):
    """A downgrade's proration invoice totals less than zero: Stripe credits the customer's
    balance, pays nothing and marks it paid. Later invoices are paid (in part) from that
    balance, so amount_paid is 0 or less than the total. Every list (the customer's page,
    the API, the admin's CSV) shows the invoice's total and how it was settled, not
    "$0.00 Paid"."""
    uid = make_user(session, customer="cus_cr").id
    admin = make_user(session, admin=True)
    sub = dict(customer="cus_cr", sub_id="sub_cr")
    invoices = [  # oldest first, as Stripe sends them at finalization and payment
        payloads.invoice(inv_id="in_cred", **sub, status="paid", amount_due=0, total=-4000,
                         subtotal=-4000, starting_balance=0, ending_balance=-4000),
        payloads.invoice(inv_id="in_covr", **sub, status="paid", amount_due=0, total=1900,
                         subtotal=1900, starting_balance=-4000, ending_balance=-2100),
        payloads.invoice(inv_id="in_part", **sub, status="paid", amount_due=1700,
                         amount_paid=1700, total=1900, subtotal=1900, starting_balance=-200,
                         ending_balance=0),
        payloads.invoice(inv_id="in_open", **sub, status="open", amount_due=1900,
                         amount_paid=700, total=1900, subtotal=1900, starting_balance=0,
                         ending_balance=0),
    ]  # fmt: skip
    for n, inv in enumerate(invoices):
        inv["created"] = T0 + 100 * n
        event = "invoice.paid" if inv["status"] == "paid" else "invoice.updated"
        r = deliver.send(payloads.event(event, inv, T0 + 100 * n))
        assert r.status_code == 200, r.text

    shown = load_slow(uid, 1).invoices
    assert [(i.number, i.amount, i.amount_note, i.status_label) for i in shown] == [
        ("NUM-open", "$19.00", "$12.00 still due", "Open"),
        ("NUM-part", "$19.00", "$2.00 paid from balance", "Paid"),
        ("NUM-covr", "$19.00", "paid from balance", "Paid"),
        ("NUM-cred", "−$40.00", "credited to balance", "Credit"),
    ]

    def client_of(user_id: int) -> dict[str, str]:
        return {"cookie": f"{auth.SESSION_COOKIE}={auth.new_session(session, user_id)}"}

    r = http.get(receiver.url + "/api/billing/invoices", headers=client_of(uid))
    assert r.status_code == 200, r.text
    money = (
        *("total", "amount_due", "amount_paid", "amount_remaining"),
        *("paid_from_balance", "credited_to_balance", "starting_balance", "ending_balance"),
    )
    assert [[i["number"], *(i[k] for k in money)] for i in r.json()["items"]] == [
        ["NUM-open", 1900, 1900, 700, 1200, 0, 0, 0, 0],
        ["NUM-part", 1900, 1700, 1700, 0, 200, 0, -200, 0],
        ["NUM-covr", 1900, 0, 0, 0, 1900, 0, -4000, -2100],
        ["NUM-cred", -4000, 0, 0, 0, 0, 4000, 0, -4000],
    ]

    r = http.get(receiver.url + "/api/billing/admin/invoices.csv", headers=client_of(admin.id))
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    csv_money = money[:6]
    assert [[row["number"], *(row[k] for k in csv_money)] for row in rows] == [
        ["NUM-open", "19.00", "19.00", "7.00", "12.00", "0.00", "0.00"],
        ["NUM-part", "19.00", "17.00", "17.00", "0.00", "2.00", "0.00"],
        ["NUM-covr", "19.00", "0.00", "0.00", "0.00", "19.00", "0.00"],
        ["NUM-cred", "-40.00", "0.00", "0.00", "0.00", "0.00", "40.00"],
    ]


def test_a_downgrade_in_the_sandbox_credits_the_balance_and_sync_fills_older_rows(
    session, sandbox, http
):
    """The sandbox as Stripe: a mid-period downgrade (create_prorations) credits the unused
    Pro time on the renewal, whose total is negative (paid, nothing charged); the balance
    then pays the next renewal in full (amount_paid 0). Rows from before migration 0013
    (no total) get the amounts from `stripe sync`."""
    user = subscribe(session, http, sandbox, "pro")
    advance(http, sandbox, days=15)
    billing.change_plan(session, user.id, "basic")
    advance(http, sandbox, days=16)  # the renewal: Basic's month less Pro's unused half
    advance(http, sandbox, days=31)  # paid by the credit left
    remote = sorted(sandbox.state.invoices.values(), key=lambda i: i["created"])
    assert len(remote) == 3
    pro, credit, covered = remote
    assert credit["total"] < 0 and credit["amount_paid"] == 0 and credit["status"] == "paid"
    assert covered["total"] == 1900 and covered["amount_paid"] == 0
    assert covered["status"] == "paid" and covered["starting_balance"] == credit["total"]

    def shown() -> list[tuple[str, str, str]]:
        return [(i.amount, i.amount_note, i.status_label) for i in load_slow(user.id, 1).invoices]

    credited = f"−${-credit['total'] / 100:,.2f}"
    expected = [
        ("$19.00", "paid from balance", "Paid"),
        (credited, "credited to balance", "Credit"),
        ("$99.00", "", "Paid"),
    ]
    assert shown() == expected
    stored = [(i.total, i.amount_remaining, i.ending_balance) for i in reversed(_invoices(session))]
    assert stored == [(i["total"], 0, i["ending_balance"]) for i in reversed(remote)]

    # As rows stored before migration 0013 read until their next event: as before.
    cols = ("total", "amount_remaining", "starting_balance", "ending_balance")
    session.exec(sa.update(Invoice).values(dict.fromkeys(cols)))
    session.commit()
    assert [a for a, _, _ in shown()] == ["$0.00", "$0.00", "$99.00"]
    report = stripe_sync.sync_from_stripe(session, user.id)
    assert report.errors == () and report.invoices_changed == 3
    assert shown() == expected


def test_the_dashboard_shows_the_credit_balance_stripe_holds(session, sandbox, http):
    """A downgrade's credit is money the customer has with Stripe: the dashboard said so only
    as a "credited to balance" invoice row, never how much is left after renewals it paid.
    What it shows is the sandbox customer's own balance, after each invoice."""
    user = subscribe(session, http, sandbox, "pro")
    assert load_slow(user.id, 1).credit_text == ""  # paid by card: no credit
    advance(http, sandbox, days=15)
    billing.change_plan(session, user.id, "basic")

    (customer_id,) = [c["id"] for c in sandbox.state.customers.values() if c["email"] == user.email]

    def held() -> str:
        customer = sandbox.state.customers[customer_id]
        assert customer["balance"] < 0, customer["balance"]
        return f"${-customer['balance'] / 100:,.2f}"

    advance(http, sandbox, days=16)  # the renewal credits Pro's unused half
    shown = load_slow(user.id, 1).credit_text
    assert shown == f"Credit balance: {held()}, used first for your next invoices."
    advance(http, sandbox, days=31)  # Basic's $19.00 paid from it: less is left
    assert load_slow(user.id, 1).credit_text == (
        f"Credit balance: {held()}, used first for your next invoices."
    )
    assert held() != shown.split()[2].rstrip(",")
