"""A subscription that grants nothing now but comes back, billed, once its open invoice is
paid (Stripe's `unpaid`, `incomplete`, and `paused` by a failed payment): Checkout is
refused beside it, and /billing says why and what to do instead of offering "Upgrade to"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from billing_app.errors import Conflict
from billing_app.models import Invoice
from billing_app.services import admin, billing, metering, stripe_sync, subscriptions
from billing_app.states.billing import load_live, load_slow
from tests.conftest import FrozenClock
from tests.factories import make_subscription, make_user

HOSTED = "https://invoice.stripe.com/i/held_1"


def _open_invoice(session: Session, uid: int, sub_id: str, **fields: object) -> None:
    row: dict[str, object] = dict(
        stripe_invoice_id=f"in_held_{uid}",
        user_id=uid,
        stripe_subscription_id=sub_id,
        number="INV-HELD-1",
        status="open",
        amount_due=9900,
        total=9900,
        amount_remaining=9900,
        attempt_count=1,
        hosted_invoice_url=HOSTED,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    session.add(Invoice(**{**row, **fields}))
    session.commit()


def _held_customer(session: Session, status: str, invoice: bool = True) -> int:
    uid = make_user(session, email=f"{status}@example.com", customer=f"cus_{status}").id
    make_subscription(session, uid, plan="pro", status=status, sub_id=f"sub_{status}")
    if invoice:
        _open_invoice(session, uid, f"sub_{status}")
    return uid


@pytest.mark.parametrize(
    ("status", "why", "pays"),
    [
        ("unpaid", "is unpaid", "get your plan back"),
        ("incomplete", "is waiting for its first payment", "start it"),
        ("paused", "is paused with a payment due", "settle it"),
    ],
)
def test_checkout_beside_a_subscription_with_an_invoice_to_pay_is_refused(
    session: Session, status: str, why: str, pays: str
) -> None:
    """Paying the old invoice later would bill that subscription beside the new one. No
    Stripe answers here: refused on what this database says (tests/stripe asks the sandbox)."""
    uid = _held_customer(session, status)
    with pytest.raises(Conflict) as info:
        billing.create_checkout_session(session, uid, "basic")
    err = info.value
    assert err.status_code == 409 and err.details == {"plan": "pro", "status": status}
    assert err.message == (
        f"Your Pro subscription {why}: a new subscription would be billed on top of it. "
        f"Pay its open invoice INV-HELD-1 ({HOSTED}) to {pays}, or cancel that "
        "subscription in Manage subscription (the Stripe customer portal), then choose a plan."
    )


def test_an_unpaid_subscription_is_held_before_its_invoice_has_synced(session: Session) -> None:
    """Stripe keeps an unpaid (or incomplete) subscription's invoice open by definition."""
    uid = _held_customer(session, "unpaid", invoice=False)
    held = subscriptions.held_subscription(session, uid)
    assert held is not None and (held.status, held.invoice_number) == ("unpaid", None)
    with pytest.raises(Conflict, match="Pay its open invoice to get your plan back"):
        billing.create_checkout_session(session, uid, "pro")


def test_a_paused_subscription_without_an_invoice_holds_nothing(session: Session) -> None:
    """Guard: paused at a trial's end or on request, it creates no invoices until resumed;
    there is nothing to pay that would bring it back, so a new plan may start."""
    uid = _held_customer(session, "paused", invoice=False)
    assert subscriptions.held_subscription(session, uid) is None
    assert load_live(uid).sub.held is False
    # Nor does an open invoice with nothing left to pay.
    _open_invoice(session, uid, "sub_paused", amount_remaining=0)
    assert subscriptions.held_subscription(session, uid) is None


@pytest.mark.parametrize("status", ["unpaid", "incomplete", "paused"])
def test_the_page_says_why_no_plan_can_start_and_shows_the_banner(
    session: Session, status: str
) -> None:
    uid = _held_customer(session, status)
    sub = load_live(uid).sub
    assert (sub.plan_name, sub.is_subscriber, sub.held) == ("Free", False, True)
    pays = {"incomplete": "start it", "unpaid": "get your plan back"}.get(status, "settle it")
    assert sub.held_text.startswith("Your Pro subscription ")
    assert sub.held_text.endswith(
        f"so you have the Free plan's limits. Pay the invoice to {pays}, or cancel that "
        "subscription in Manage subscription."
    )
    assert sub.held_plans_text == (
        "A new plan cannot start while your Pro subscription has an invoice to pay: you would "
        "be billed for both. Pay that invoice, or cancel that subscription in Manage "
        "subscription, then choose a plan here."
    )
    assert sub.grace_text == ""  # the banner's words are held_text's alone
    # The banner names the amount and the invoice's page (the past-due banner's own data).
    due = load_slow(uid, 1).due
    assert (due.text, due.hosted_url) == ("$99.00 is due on invoice INV-HELD-1.", HOSTED)


def test_a_live_subscription_beside_an_old_held_one_shows_as_live(session: Session) -> None:
    """Guard: the live plan is what the page shows (its buttons open the portal)."""
    uid = _held_customer(session, "unpaid")
    make_subscription(
        session,
        uid,
        plan="basic",
        status="active",
        sub_id="sub_new",
        created_at=datetime.now(UTC) + timedelta(seconds=1),
    )
    sub = load_live(uid).sub
    assert (sub.plan_name, sub.is_subscriber, sub.held, sub.held_text) == (
        "Basic",
        True,
        False,
        "",
    )


@pytest.mark.parametrize("how", ["unpaid", "past_due_after_grace"])
def test_a_used_up_meter_on_free_limits_for_a_failed_payment_says_pay_not_upgrade(
    session: Session, frozen_clock: FrozenClock, how: str
) -> None:
    """On Free's limits because a payment failed, "or until you upgrade your plan" sent the
    customer to a Checkout that is refused (held) or to a plan they already have (past due
    after its grace): paying the failed invoice is what brings the plan's limits back."""
    if how == "unpaid":
        uid = _held_customer(session, "unpaid")
    else:
        uid = make_user(session, email="late@example.com", customer="cus_late").id
        since = frozen_clock.now - timedelta(days=60)
        make_subscription(session, uid, plan="pro", status="past_due", past_due_since=since)
    assert stripe_sync.refresh_quotas(session, uid) == "free"  # as the webhook or grace pass
    session.commit()
    metering.record(session, uid, "api_calls", 100)  # Free's limit, used up
    notices = load_live(uid).limit_notices
    assert len(notices) == 1 and notices[0].startswith("API calls: limit reached (100 of 100).")
    assert notices[0].endswith(", or until the failed payment is paid."), notices[0]


# ------------------------------------------------- an older held one beside a newer ended one


@pytest.mark.parametrize("held_status", ["unpaid", "incomplete"])
def test_an_older_held_subscription_is_current_over_a_newer_canceled_one(
    session: Session, held_status: str
) -> None:
    """Checkout is refused for the held one: the plan card, the admin list (its SQL filter
    and its rows) and the quotas all take it as the current one, not the newer canceled
    one, so the page does not show one subscription and refuse for another."""
    uid = _held_customer(session, held_status)
    _newer(session, uid, plan="basic", status="canceled", sub_id="sub_newer_canceled")
    sub = subscriptions.current_subscription(session, uid)
    assert sub is not None and sub.stripe_subscription_id == f"sub_{held_status}"
    assert subscriptions.plan_key_for(sub) == "free"
    session.rollback()
    assert _current_in_sql(session, uid) == [held_status]
    listed = admin.list_users(session, admin.UserFilters(status=held_status))
    assert [(u.id, u.status, u.plan) for u in listed.items] == [(uid, held_status, "free")]
    assert admin.list_users(session, admin.UserFilters(status="canceled")).total == 0
    assert stripe_sync.refresh_quotas(session, uid) == "free"
    session.rollback()

    shown = load_live(uid).sub
    assert (shown.status, shown.plan_name, shown.held) == (held_status, "Free", True)
    assert shown.ended_text == ""  # not "Your Basic subscription ended on ..."
    with pytest.raises(Conflict) as info:
        billing.create_checkout_session(session, uid, "basic")
    assert info.value.details == {"plan": "pro", "status": held_status}


def test_a_live_subscription_stays_current_over_a_newer_held_one(session: Session) -> None:
    """Guard: live first, held only second."""
    uid = make_user(session, email="both@example.com", customer="cus_both").id
    make_subscription(session, uid, plan="basic", status="active", sub_id="sub_live")
    _newer(session, uid, plan="pro", status="incomplete", sub_id="sub_newer_incomplete")
    sub = subscriptions.current_subscription(session, uid)
    assert sub is not None and (sub.stripe_subscription_id, sub.status) == ("sub_live", "active")
    session.rollback()
    assert _current_in_sql(session, uid) == ["active"]


def _newer(session: Session, uid: int, **sub: str) -> None:
    """A subscription made a second after the user's others."""
    make_subscription(session, uid, created_at=datetime.now(UTC) + timedelta(seconds=1), **sub)


def _current_in_sql(session: Session, uid: int) -> list[str]:
    """The status current_table() (the admin list's rule, in SQL) takes as current."""
    cur = subscriptions.current_table()
    found = session.exec(select(cur.c.status).where(cur.c.user_id == uid, cur.c.rn == 1)).all()
    session.rollback()
    return list(found)


# ------------------------------------------------------- waiting for a first payment, not failed


def test_an_incomplete_subscription_never_charged_waits_for_its_first_payment(
    session: Session,
) -> None:
    """No payment method, so Stripe never tried its first invoice (attempt_count 0): the
    banner says it waits to be paid, links that invoice, and claims no failed payment."""
    uid = _held_customer(session, "incomplete", invoice=False)
    _open_invoice(session, uid, "sub_incomplete", attempt_count=0)
    held = subscriptions.held_subscription(session, uid)
    assert held is not None and held.payment_attempted is False
    assert subscriptions.held_banner(held) == subscriptions.HeldBanner(
        title="Your Pro subscription is waiting for its first payment.",
        text="Until it is paid you have the Free plan's limits. Pay its invoice to start it, "
        "or cancel that subscription in Manage subscription.",
        action="Add payment method",
    )
    sub = load_live(uid).sub
    assert (sub.held, sub.awaits_first_payment) == (True, True)
    assert sub.alert_title == "Your Pro subscription is waiting for its first payment."
    assert sub.held_text == subscriptions.held_banner(held).text
    assert sub.alert_action == "Add payment method"
    # Not a failed payment, so the failed-payment line is empty: the banner links this one.
    assert load_slow(uid, 1).due.hosted_url == ""
    assert (sub.held_invoice_url, sub.held_invoice_number) == (HOSTED, "INV-HELD-1")


def test_an_incomplete_subscription_without_its_invoice_yet_says_pay_in_the_portal(
    session: Session,
) -> None:
    """Its invoice not synced yet: no link to give, so the portal is where to pay."""
    uid = _held_customer(session, "incomplete", invoice=False)
    sub = load_live(uid).sub
    assert sub.alert_title == "Your Pro subscription is waiting for its first payment."
    assert sub.held_text == (
        "Until it is paid you have the Free plan's limits. Add a payment method in Manage "
        "subscription to pay it and start it, or cancel that subscription in Manage "
        "subscription."
    )
    assert (sub.held_invoice_url, sub.alert_action) == ("", "Add payment method")


@pytest.mark.parametrize(
    ("status", "attempts"), [("incomplete", 1), ("unpaid", 0), ("unpaid", 3), ("paused", 1)]
)
def test_a_held_subscription_whose_payment_was_tried_still_says_it_failed(
    session: Session, status: str, attempts: int
) -> None:
    """A declined first payment (attempted), and unpaid or paused ones (their payments
    failed before; an unpaid one's newest invoice is left unattempted): the failed words."""
    uid = _held_customer(session, status, invoice=False)
    _open_invoice(session, uid, f"sub_{status}", attempt_count=attempts)
    sub = load_live(uid).sub
    assert sub.held is True and sub.awaits_first_payment is False
    assert (sub.alert_title, sub.alert_action) == ("Your last payment failed.", "Fix payment")
    assert sub.held_text.startswith(f"Your Pro subscription {subscriptions.held_words(status)[0]}")


def test_a_used_up_meter_beside_a_first_payment_not_made_names_no_failure(
    session: Session,
) -> None:
    uid = _held_customer(session, "incomplete", invoice=False)
    _open_invoice(session, uid, "sub_incomplete", attempt_count=0)
    assert stripe_sync.refresh_quotas(session, uid) == "free"
    session.commit()
    metering.record(session, uid, "api_calls", 100)  # Free's limit, used up
    notices = load_live(uid).limit_notices
    assert len(notices) == 1
    assert notices[0].endswith(", or until your subscription's first payment is made."), notices
