"""The console's polish (h93's review): quota changes with their time, what a past-due
customer owes in their row, when the figures were read, and percentages an admin reads
as rounded (the same rule as /billing's meters)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlmodel import Session

from billing_app.models import Invoice
from billing_app.services import admin, metering, quotas
from billing_app.states import admin as admin_state
from billing_app.states import views
from billing_app.states.admin import AdminState
from tests.factories import make_subscription, make_user
from tests.ui.test_admin_drawer import _Locked
from tests.ui.test_states import cookie_for, state_for

REFRESH_ALL = AdminState.event_handlers["refresh_all"].fn
RELOAD_USERS = AdminState.event_handlers["reload_users"].fn


def test_the_drawers_quota_changes_say_when_in_utc_newest_first(
    session: Session, frozen_clock
) -> None:
    """Two changes on one day read the same date and nothing more: which came last?"""
    user = make_user(session, email="audit-h93@example.com")
    frozen_clock.set(datetime(2026, 11, 15, 9, 5, tzinfo=UTC))
    quotas.set_override(session, user.id, "tokens", 5_000, "trial")
    frozen_clock.set(datetime(2026, 11, 15, 14, 30, tzinfo=UTC))
    quotas.set_override(session, user.id, "tokens", 9_000, "launch")
    audit = admin_state.load_detail(user.id)["audit"]
    assert [(a.when, a.reason) for a in audit] == [
        ("Nov 15, 2026, 14:30 UTC", "launch"),
        ("Nov 15, 2026, 09:05 UTC", "trial"),
    ]


def _failed_invoice(session: Session, user_id: int, sid: str, n: int, **fields: object) -> None:
    session.add(
        Invoice(stripe_invoice_id=f"in_h93_{n}", user_id=user_id, number=f"H93-{n}",
                stripe_subscription_id=sid, currency="usd", **fields)  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_past_due_row_says_what_the_customer_owes(session: Session) -> None:
    """The failed payments the Failed payments card counts, summed per user in one query
    for the page: not a paid invoice, not another customer's."""
    late = make_user(session, email="late-h93@example.com")
    fine = make_user(session, email="fine-h93@example.com")
    make_subscription(session, late.id, plan="pro", status="past_due", sub_id="sub_h93_late")
    make_subscription(session, fine.id, plan="pro", status="active", sub_id="sub_h93_fine")
    _failed_invoice(
        session,
        late.id,
        "sub_h93_late",
        1,
        status="open",
        attempt_count=1,
        total=9900,
        amount_due=9900,
        amount_paid=0,
        amount_remaining=4900,
    )
    _failed_invoice(
        session,
        late.id,
        "sub_h93_late",
        2,
        status="paid",
        total=9900,
        amount_due=9900,
        amount_paid=9900,
    )
    _failed_invoice(session, fine.id, "sub_h93_fine", 3, status="paid", total=9900,
                    amount_due=9900, amount_paid=9900)  # fmt: skip
    session.commit()

    page = admin.list_users(session, admin.UserFilters(q="late-h93"))
    (row,) = page.items
    assert (row.status, row.amount_owed, row.currency) == ("past_due", 4900, "usd")
    rows = admin_state.load_users("", "all", "all", "email", 1)["rows"]
    owed = {r.email: r.owed_text for r in rows}
    assert owed["late-h93@example.com"] == "$49.00 owed"
    assert owed["fine-h93@example.com"] == ""
    # The card's total is the rows' sum.
    card = next(c for c in admin_state.load_stats() if c.label == "Failed payments")
    assert card.hint.startswith("$49.00 still owed")


def test_the_cards_and_list_say_when_they_were_read_and_refresh_moves_it(
    session: Session, frozen_clock
) -> None:
    boss = make_user(session, email="boss-h93@example.com", admin=True)
    st = state_for(AdminState, cookie=cookie_for(session, boss.id), path="/admin/billing")
    asyncio.run(st.on_load())
    frozen_clock.set(datetime(2026, 11, 15, 9, 5, 59, tzinfo=UTC))
    asyncio.run(REFRESH_ALL(_Locked(st)))
    assert st.as_of == "As of 09:05 UTC"
    assert st.as_of_title == "Figures read Nov 15, 2026, 09:05 UTC"
    frozen_clock.set(datetime(2026, 11, 15, 14, 30, tzinfo=UTC))
    asyncio.run(REFRESH_ALL(_Locked(st)))  # the Refresh button
    assert st.as_of == "As of 14:30 UTC"
    frozen_clock.set(datetime(2026, 11, 15, 14, 42, tzinfo=UTC))
    asyncio.run(RELOAD_USERS(_Locked(st)))  # a search or a filter reads the cards too
    assert st.as_of == "As of 14:42 UTC"


@pytest.mark.parametrize(
    ("used", "limit", "text"),
    [(495, 1_000, "50%"), (494, 1_000, "49%"), (1, 1_000, "<1%"), (4, 1_000, "<1%"),
     (5, 1_000, "1%"), (0, 1_000, "0%"), (9_995, 10_000, "99%"), (999_999, 1_000_000, "99%"),
     (7_995, 10_000, "79%"), (8_000, 10_000, "80%"), (8_005, 10_000, "80%"),
     (10_000, 10_000, "100%"), (10_004, 10_000, "100%+"), (10_050, 10_000, "101%")],
)  # fmt: skip
def test_a_meters_percent_rounds_half_up_but_never_across_a_line(
    used: int, limit: int, text: str
) -> None:
    """49.5% is 50%; yet under the limit never 100%, under 80 % (the amber, the warning,
    the "Near a limit (80%+)" filter) never 80%, and any use never 0%."""
    m = views.meter_view({"metric": "tokens", "used": used, "limit": limit, "unlimited": False})
    assert m.percent_text == text
    assert (m.color == "amber") == (limit * 4 <= used * 5 < limit * 5)


def test_the_admin_column_and_billing_read_one_percent(session: Session) -> None:
    """The admin's usage column and the customer's /billing meter are one view model."""
    user = make_user(session, email="half-h93@example.com")
    quotas.set_override(session, user.id, "tokens", 1_000, "pilot")
    metering.record(session, user.id, "tokens", 495)
    (row,) = admin_state.load_users("half-h93", "all", "all", "email", 1)["rows"]
    admin_text = {m.metric: m.percent_text for m in row.meters}["tokens"]
    billing = {m.metric: m for m in metering.summary(session, user.id)}["tokens"]
    session.rollback()
    assert admin_text == views.meter_view(billing).percent_text == "50%"
