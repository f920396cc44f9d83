"""The lists behind the user drawer agree with it: when the drawer's fresh read of its
user finds the users row or the Invoices tab saying something else of that user (a
webhook landed since they were read), the list that differs is read again, and only it;
a quota saved in the drawer reads the users list again, not the invoices."""

from __future__ import annotations

import asyncio

from sqlmodel import Session, select

from billing_app.models import Invoice, Subscription
from billing_app.states import admin as admin_state
from billing_app.states.admin import AdminState
from tests.factories import make_subscription, make_user
from tests.ui.test_admin_drawer import LOAD_DETAIL, _Locked
from tests.ui.test_states import cookie_for, state_for

REFRESH_ALL = AdminState.event_handlers["refresh_all"].fn
RELOAD_USERS = AdminState.event_handlers["reload_users"].fn
RELOAD_INVOICES = AdminState.event_handlers["reload_invoices"].fn


def _console(session: Session) -> tuple[AdminState, int, int]:
    """A console read with a past-due customer owing $99.00 on a failed payment, and a
    customer with a paid invoice."""
    admin = make_user(session, email="boss-h96@example.com", admin=True)
    late = make_user(session, email="late-h96@example.com").id
    fine = make_user(session, email="fine-h96@example.com").id
    make_subscription(session, late, plan="pro", status="past_due", sub_id="sub_h96_late")
    make_subscription(session, fine, plan="pro", status="active", sub_id="sub_h96_fine")
    invoices = ((late, "sub_h96_late", 1, "open"), (fine, "sub_h96_fine", 2, "paid"))
    for uid, sid, n, status in invoices:
        session.add(
            Invoice(stripe_invoice_id=f"in_h96_{n}", user_id=uid, number=f"H96-{n}",
                    stripe_subscription_id=sid, currency="usd", status=status, total=9900,
                    amount_due=9900, amount_paid=9900 if status == "paid" else 0,
                    attempt_count=1)
        )  # fmt: skip
    session.commit()
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
    asyncio.run(REFRESH_ALL(_Locked(st)))
    return st, late, fine


def _row(st: AdminState, uid: int) -> admin_state.views.AdminUserView:
    return next(u for u in st.users if u.id == uid)


def _paid_by_webhook(session: Session, uid: int) -> None:
    """What invoice.paid and customer.subscription.updated leave behind."""
    invoice = session.exec(select(Invoice).where(Invoice.user_id == uid)).one()
    invoice.status, invoice.amount_paid, invoice.amount_remaining = "paid", 9900, 0
    sub = session.exec(select(Subscription).where(Subscription.user_id == uid)).one()
    sub.status, sub.past_due_since = "active", None
    session.commit()


def test_a_drawer_that_reads_a_payment_the_lists_missed_has_them_read_again(
    session: Session,
) -> None:
    st, late, _fine = _console(session)
    assert (_row(st, late).status_label, _row(st, late).owed_text) == ("Past due", "$99.00 owed")
    failed = next(i for i in st.invoices if i.user_id == late)
    assert failed.status_label == "Payment failed"

    _paid_by_webhook(session, late)
    asyncio.run(st.open_user(late))
    out = asyncio.run(LOAD_DETAIL(_Locked(st)))
    assert st.detail_invoices[0].status_label == "Paid"
    # Both lists said otherwise of this user: both are read again.
    assert out == [AdminState.reload_users, AdminState.reload_invoices]
    asyncio.run(RELOAD_USERS(_Locked(st)))
    asyncio.run(RELOAD_INVOICES(_Locked(st)))
    assert (_row(st, late).status_label, _row(st, late).owed_text) == ("Active", "")
    assert next(i for i in st.invoices if i.user_id == late).status_label == "Paid"
    failed_card = next(c for c in st.stats if c.label == "Failed payments")
    assert failed_card.value == "0"
    # Now they agree: opening the drawer again reads nothing else.
    asyncio.run(st.open_user(late))
    assert asyncio.run(LOAD_DETAIL(_Locked(st))) is None


def test_only_the_list_that_differs_is_read_again(session: Session) -> None:
    st, late, fine = _console(session)
    # Nothing changed: the drawer reads its user and nothing else.
    asyncio.run(st.open_user(fine))
    assert asyncio.run(LOAD_DETAIL(_Locked(st))) is None

    # A new invoice for the customer the tab is narrowed to (its newest first): only the
    # Invoices tab; the users row says the same as before (active, nothing owed).
    st.show_user_invoices()
    asyncio.run(RELOAD_INVOICES(_Locked(st)))
    assert [i.number for i in st.invoices] == ["H96-2"]
    session.add(Invoice(stripe_invoice_id="in_h96_3", user_id=fine, number="H96-3",
                        currency="usd", status="paid", total=1900, amount_due=1900,
                        amount_paid=1900))  # fmt: skip
    session.commit()
    asyncio.run(st.open_user(fine))
    assert asyncio.run(LOAD_DETAIL(_Locked(st))) == [AdminState.reload_invoices]

    # Usage moves all the time (the list says when it read it): not a reason to re-read.
    from billing_app.services import metering

    metering.record(session, late, "tokens", 500)
    st.users = admin_state.load_users("", "all", "all", "-created", 1)["rows"]
    metering.record(session, late, "tokens", 500)
    asyncio.run(st.open_user(late))
    assert asyncio.run(LOAD_DETAIL(_Locked(st))) is None


def test_a_quota_saved_in_the_drawer_reads_the_users_again_not_the_invoices(
    session: Session,
) -> None:
    st, late, _fine = _console(session)
    asyncio.run(st.open_user(late))
    assert asyncio.run(LOAD_DETAIL(_Locked(st))) is None
    st.set_override_limit("5000")
    st.set_override_reason("pilot")
    out = asyncio.run(st.save_override())
    assert out == [AdminState.load_detail, AdminState.reload_users]
    assert asyncio.run(LOAD_DETAIL(_Locked(st))) is None  # the invoices are as listed
    asyncio.run(RELOAD_USERS(_Locked(st)))
    assert next(m for m in _row(st, late).meters if m.metric == "tokens").limit_text == "5,000"
