"""The admin drawer's billing part: what `load_detail` hands AdminState for a user with a
renewing, cancelling, past_due or canceled subscription, and for one with none, read from
a real database through the admin service's user detail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session

from billing_app.models import Invoice, Subscription
from billing_app.states import admin as admin_state
from billing_app.states import views
from tests.conftest import FrozenClock, _clear_caches
from tests.factories import make_user

START, END = datetime(2026, 11, 10, 8, tzinfo=UTC), datetime(2026, 12, 10, 8, tzinfo=UTC)
HOSTED = "http://127.0.0.1:12111/invoices/in_1/hosted"


def _customer(session: Session, email: str) -> int:
    return make_user(session, email=email, customer="cus_drawer1").id


def _subscribe(session: Session, uid: int, **fields: Any) -> None:
    base: dict[str, Any] = dict(
        user_id=uid,
        stripe_subscription_id="sub_drawer1",
        stripe_customer_id="cus_drawer1",
        plan="pro",
        status="active",
        current_period_start=START,
        current_period_end=END,
    )
    session.add(Subscription(**{**base, **fields}))
    session.commit()


def _invoice(session: Session, uid: int) -> None:
    session.add(
        Invoice(
            stripe_invoice_id="in_drawer1",
            user_id=uid,
            stripe_subscription_id="sub_drawer1",
            number="DRAWER-0001",
            status="paid",
            amount_due=9900,
            amount_paid=9900,
            period_start=START,
            period_end=END,
            hosted_invoice_url=HOSTED,
            invoice_pdf=HOSTED + "/pdf",
            created_at=START,
        )
    )
    session.commit()


def test_a_renewing_subscriber_shows_plan_price_period_ids_and_invoices(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "payer@example.com")
    _subscribe(session, uid)
    _invoice(session, uid)

    data = admin_state.load_detail(uid)
    sub: views.AdminSubscriptionView = data["subscription"]
    assert sub.has_subscription
    assert sub.headline == "Pro · $99.00 / month"
    # The users list's and the dashboard's wording and colour.
    assert (sub.status_label, sub.status_color) == ("Active", "grass")
    assert sub.ends_text == "Renews on Dec 10, 2026"
    assert sub.period_text == "Current period: Nov 10, 2026 – Dec 10, 2026"
    assert sub.grace_text == ""
    assert (sub.customer_id, sub.subscription_id) == ("cus_drawer1", "sub_drawer1")
    # The sandbox has no dashboard: ids are text only.
    assert (sub.customer_url, sub.subscription_url) == ("", "")

    (inv,) = data["invoices"]
    assert (inv.number, inv.date, inv.amount) == ("DRAWER-0001", "Nov 10, 2026", "$99.00")
    assert (inv.status_label, inv.status_color) == ("Paid", "grass")
    assert (inv.hosted_url, inv.pdf_url) == (HOSTED, HOSTED + "/pdf")


def test_a_cancel_scheduled_with_cancel_at_alone_says_cancels_on(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "leaving@example.com")
    # The customer portal's cancel: cancel_at set, the flag left false.
    cancel_at = datetime(2026, 11, 30, 8, tzinfo=UTC)
    _subscribe(session, uid, cancel_at=cancel_at, cancel_at_period_end=False)

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.ends_text == "Cancels on Nov 30, 2026"
    assert (sub.status_label, sub.headline) == ("Active", "Pro · $99.00 / month")


def test_past_due_shows_the_grace_end_and_when_it_has_passed(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "late@example.com")
    since = frozen_clock.now - timedelta(days=2)
    _subscribe(session, uid, status="past_due", past_due_since=since)

    sub = admin_state.load_detail(uid)["subscription"]
    assert (sub.status_label, sub.status_color) == ("Past due", "amber")
    assert sub.grace_text == "Grace period ends on Nov 20, 2026, then Free quotas"

    frozen_clock.set(frozen_clock.now + timedelta(days=10))
    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.grace_text == "Grace period ended on Nov 20, 2026: on Free quotas"


def test_a_canceled_subscription_reads_as_free_and_ended(
    session: Session, frozen_clock: FrozenClock
) -> None:
    uid = _customer(session, "gone@example.com")
    _subscribe(session, uid, status="canceled", canceled_at=START + timedelta(days=3))

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.headline == "Free plan · Pro subscription canceled"
    assert (sub.status_label, sub.status_color) == ("Canceled", "gray")
    assert sub.ends_text == "Ended Dec 10, 2026"
    assert sub.period_text.startswith("Last period: ")


def test_no_subscription_is_the_free_plan(session: Session) -> None:
    uid = make_user(session, email="browser@example.com").id

    data = admin_state.load_detail(uid)
    sub = data["subscription"]
    assert not sub.has_subscription
    assert sub.headline == "Free plan · no subscription"
    assert (sub.ends_text, sub.customer_id, sub.subscription_id) == ("", "", "")
    assert data["invoices"] == []


@pytest.mark.parametrize(
    ("key", "base"),
    [("sk_test_abc", "https://dashboard.stripe.com/test"),
     ("rk_live_abc", "https://dashboard.stripe.com")],
)  # fmt: skip
def test_real_stripe_links_the_ids_to_its_dashboard(
    session: Session, monkeypatch: pytest.MonkeyPatch, key: str, base: str
) -> None:
    uid = _customer(session, "linked@example.com")
    _subscribe(session, uid)
    monkeypatch.setenv("STRIPE_SECRET_KEY", key)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_abc")
    for plan in ("basic", "pro", "enterprise"):
        monkeypatch.setenv(f"STRIPE_PRICE_{plan.upper()}", f"price_{plan}")
    _clear_caches()

    sub = admin_state.load_detail(uid)["subscription"]
    assert sub.customer_url == f"{base}/customers/cus_drawer1"
    assert sub.subscription_url == f"{base}/subscriptions/sub_drawer1"
