"""The /billing page after the last review: a change made in the portal said on coming back,
money with a real minus sign, an invoice row never without a period, the 80% warning worded
as it fires, a limit an admin set not answered with "upgrade", and each metric's refusal
said naturally."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlmodel import Session, select

from billing_app.components.layout import user_chip
from billing_app.models import Subscription
from billing_app.plans import get_catalog
from billing_app.services import metering, quotas
from billing_app.states import format as fmt
from billing_app.states import views
from billing_app.states.billing import BillingState, load_live
from tests.factories import make_subscription, make_user
from tests.ui.test_state_db_down import run
from tests.ui.test_states import cookie_for, state_for

END = datetime(2027, 1, 7, tzinfo=UTC)
ACTIVE = {"status": "active", "plan": "basic", "plan_name": "Basic", "amount": 1900,
          "currency": "usd", "current_period_end": END, "cancel_at_period_end": False}  # fmt: skip


def _shown(**sub: object) -> views.SubscriptionView:
    return views.subscription_view({**ACTIVE, **sub}, get_catalog())


def test_each_portal_change_is_said_in_words() -> None:
    basic = _shown()
    assert views.portal_change_text(basic, _shown(plan="pro", plan_name="Pro")) == (
        "Your plan is now Pro."
    )
    cancels = _shown(cancel_at_period_end=True, ends_at=END)
    assert views.portal_change_text(basic, cancels) == (
        "Your Basic plan will be canceled on Jan 7, 2027."
    )
    assert views.portal_change_text(cancels, basic) == (
        "Your Basic plan is no longer set to cancel. It renews on Jan 7, 2027."
    )
    ended = _shown(status="canceled", canceled_at=END)
    assert views.portal_change_text(basic, ended) == (
        "Your Basic subscription has ended. You are on the Free plan."
    )
    assert views.portal_change_text(_shown(status="past_due"), basic) == (
        "Your payment went through: your Basic plan is active."
    )
    assert views.portal_change_text(basic, _shown()) == ""  # nothing changed: no notice


def test_a_portal_plan_change_whose_payment_failed_is_not_told_as_done() -> None:
    """Switching to Pro in the portal with a card that then declines leaves the plan Pro
    but past due: the green notice must not read as a success above the failure."""
    pro_unpaid = _shown(plan="pro", plan_name="Pro", status="past_due")
    assert views.portal_change_text(_shown(), pro_unpaid) == (
        "Your plan is now Pro. Its payment failed: see below to pay it."
    )
    # Already past due before: the plan change alone is news.
    before = _shown(status="past_due")
    assert views.portal_change_text(before, pro_unpaid) == "Your plan is now Pro."


def test_coming_back_from_the_portal_says_what_changed_once(session: Session) -> None:
    uid = make_user(session, email="h92-portal@example.com").id
    make_subscription(session, uid, plan="basic", sub_id="sub_h92_portal",
                      current_period_end=END)  # fmt: skip
    cookie = cookie_for(session, uid)
    st = state_for(BillingState, cookie=cookie, path="/billing")
    asyncio.run(st.on_load())
    run(BillingState.event_handlers["refresh"].fn, st)
    assert st.loaded and st.sub.plan == "basic" and st.portal_notice == ""

    # Back from the portal (its return URL), before its webhook arrived: nothing yet.
    st.router = state_for(BillingState, cookie=cookie, path="/billing?portal=return").router
    redirect = asyncio.run(st.on_load())
    assert dict((str(k), str(v)) for k, v in redirect.args)["replace"] == "true"
    st.router = state_for(BillingState, cookie=cookie, path="/billing").router
    asyncio.run(st.on_load())
    run(BillingState.event_handlers["refresh"].fn, st)
    assert st.portal_notice == ""
    # The webhook moves the plan: the next read says so, not only the heading.
    row = session.exec(select(Subscription).where(Subscription.user_id == uid)).one()
    row.plan = "pro"
    session.add(row)
    session.commit()
    run(BillingState.event_handlers["refresh"].fn, st)
    assert st.sub.plan_name == "Pro" and st.portal_notice == "Your plan is now Pro."
    # A reload (a new socket) does not show it again, nor does a later change.
    st.router = state_for(BillingState, cookie=cookie, path="/billing", socket="sock-2").router
    asyncio.run(st.on_load())
    assert st.portal_notice == ""
    row = session.exec(select(Subscription).where(Subscription.user_id == uid)).one()
    row.cancel_at_period_end = True
    session.add(row)
    session.commit()
    run(BillingState.event_handlers["refresh"].fn, st)
    assert st.portal_notice == ""


def test_negative_money_reads_with_a_minus_sign() -> None:
    assert fmt.money(-500) == "\u2212$5.00"
    assert fmt.money(-150_000, "jpy") == "\u2212¥150,000"
    assert fmt.money(-1900, "sek") == "\u221219.00 SEK"
    credit = views.invoice_view(
        {"status": "paid", "total": -1234, "amount_due": 0, "amount_paid": 0, "currency": "usd"}
    )
    assert (credit.amount, credit.status_label) == ("\u2212$12.34", "Credit")


def test_an_invoice_row_always_has_a_period() -> None:
    day = datetime(2026, 12, 7, 15, tzinfo=UTC)
    none = views.invoice_view({"status": "paid", "total": 0, "amount_due": 0, "amount_paid": 0})
    assert none.period == "—"
    one_day = views.invoice_view(
        {"status": "paid", "total": -500, "period_start": day, "period_end": day}
    )
    assert one_day.period == "Dec 7, 2026"  # not "Dec 7, 2026 – Dec 7, 2026"
    assert views.invoice_view({"status": "paid", "period_end": END}).period == "Jan 7, 2027"
    both = views.invoice_view({"status": "paid", "period_start": day, "period_end": END})
    assert both.period == "Dec 7, 2026 – Jan 7, 2027"


def _meter(metric: str, used: int, limit: int) -> views.MeterView:
    return views.meter_view({"metric": metric, "used": used, "limit": limit})


def test_the_80_percent_warning_says_at_80_or_more_as_it_fires() -> None:
    at = [_meter("tokens", 8_000, 10_000)]  # exactly 80%: warned
    assert views.near_limit_text(at).startswith(
        "You have used 80% or more of a limit this period. Tokens: 8,000 of 10,000 (80%)."
    )
    assert views.usage_alert_text(at) == "80% or more used: Tokens."
    assert "over 80" not in views.near_limit_text(at).lower()


def test_a_limit_an_admin_set_is_not_answered_with_upgrade(session: Session) -> None:
    uid = make_user(session, email="h92-override@example.com").id
    metering.record(session, uid, "tokens", 600)
    metering.record(session, uid, "api_calls", 100)  # Free's own limit, used up
    quotas.set_override(session, uid, "tokens", 500, reason="trial cap")
    session.commit()
    notices = load_live(uid).limit_notices
    assert len(notices) == 2
    tokens = next(n for n in notices if n.startswith("Tokens"))
    assert "upgrade" not in tokens and tokens.endswith(
        "This limit was set for your account: contact support to change it."
    )
    calls = next(n for n in notices if n.startswith("API calls"))
    assert calls.endswith(", or until you upgrade your plan.")  # the plan's limit: it would


def test_each_metrics_refusal_reads_naturally() -> None:
    resets = datetime(2027, 1, 1, tzinfo=UTC)
    statuses = [
        {"metric": m, "used": 10, "limit": 10, "resets_at": resets}
        for m in ("tokens", "api_calls", "scraping_tasks")
    ]
    assert views.limit_notices(statuses, get_catalog(), "enterprise") == [
        "Tokens: limit reached (10 of 10). Requests that use tokens are refused until Jan 1, 2027.",
        "API calls: limit reached (10 of 10). API calls are refused until Jan 1, 2027.",
        "Scraping tasks: limit reached (10 of 10). New scraping tasks are refused until "
        "Jan 1, 2027.",
    ]


def test_a_phone_header_says_who_is_signed_in() -> None:
    """Below md the chip shows the avatar's letter only: it is a button named for the
    account, whose popover gives the name and email."""
    compiled = str(user_chip())
    assert '+", signed in")' in compiled and '"account-button"' in compiled
    assert "Signed in as" in compiled and "account-details" in compiled


def test_a_used_up_meter_of_a_plan_set_to_cancel_says_to_resume_before_upgrading() -> None:
    """The plan buttons read "Resume to switch to ..." then: the notice says the same."""
    used_up = [_meter("api_calls", 1_000, 1_000)]
    (live,) = views.limit_notices(used_up, get_catalog(), "basic")
    (ending,) = views.limit_notices(used_up, get_catalog(), "basic", cancels=True)
    assert live.endswith(", or until you upgrade your plan.")
    assert ending.endswith(", or until you resume your subscription and upgrade it.")
    (top,) = views.limit_notices(used_up, get_catalog(), "enterprise", cancels=True)
    assert "upgrade" not in top  # nothing dearer to move to
