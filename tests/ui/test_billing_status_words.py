"""What /billing (and the admin drawer, one view model) says for the subscription statuses
that are neither renewing nor canceled, and what a shown page does once its session no
longer signs anyone in."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlmodel import Session

from billing_app.models import User
from billing_app.services import auth
from billing_app.states import admin as admin_state
from billing_app.states import format as fmt
from billing_app.states.billing import load_live
from tests.conftest import FrozenClock
from tests.factories import make_subscription
from tests.ui.test_admin_drawer import END, _customer, _Locked, _subscribe
from tests.ui.test_state_races import POLL, REFRESH, _dashboard, numbers, one_tick, page_of


@pytest.mark.parametrize("status", ["incomplete", "incomplete_expired", "paused", "unpaid"])
def test_only_a_canceled_subscription_reads_as_ended(
    session: Session, frozen_clock: FrozenClock, status: str
) -> None:
    """The drawer said "Ended Dec 10, 2026", weeks ahead, of a subscription that is paused,
    unpaid or still waiting for its first payment: none of them has ended."""
    uid = _customer(session, f"{status}@example.com")
    _subscribe(session, uid, status=status)
    assert END > frozen_clock.now  # its period's end is still to come

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.headline == f"Free plan · Pro subscription {fmt.status_label(status).lower()}"
    assert sub.ends_text == ""
    shown = load_live(uid).sub
    assert (shown.renews_text, shown.ended_text, shown.plan_name) == ("", "", "Free")


def test_a_trial_says_when_it_ends_not_that_it_renews(
    session: Session, frozen_clock: FrozenClock
) -> None:
    """Nothing is paid during a trial: "Renews on" read as a paid plan carrying on, when that
    date is the first charge."""
    uid = _customer(session, "trial@example.com")
    make_subscription(
        session,
        uid,
        status="trialing",
        current_period_start=frozen_clock.now,
        current_period_end=frozen_clock.now + timedelta(days=14),
    )
    shown = load_live(uid).sub
    assert shown.is_subscriber and shown.plan_name == "Pro"
    assert shown.renews_text == "Trial ends on Nov 29, 2026"
    assert admin_state.load_detail(uid)["subscription"].ends_text == "Trial ends on Nov 29, 2026"


@pytest.mark.parametrize("how", ["password_reset", "account_deleted"])
def test_a_shown_page_whose_session_ended_says_it_stopped_updating(
    session: Session, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The poller stopped without a word (the bars, marked Live, frozen), and Next moved the
    pager to "page 2" over page 1's invoices."""
    st, uid = _dashboard(session)
    if how == "password_reset":
        auth.set_password(session, uid, "a-new-password-1")  # signs out her sessions
    else:
        user = session.get(User, uid)
        session.delete(user)
        session.commit()

    one_tick(monkeypatch)
    asyncio.run(POLL(_Locked(st)))
    assert "You are signed out" in st.error
    assert st.loaded  # not sent away: a Sign out in this tab is on its way to /login

    st.dismiss_error()
    st.next_invoices()
    asyncio.run(REFRESH(_Locked(st)))
    assert "You are signed out" in st.error
    assert (st.invoice_page, numbers(st.invoices)) == (1, page_of(1))
