"""/billing read the same way throughout: money with cents and its period as one phrase,
full numbers on the plan cards, the past-due banner naming what is owed and what its date
is, proper dashes, and an empty chart said in words."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session

from billing_app.models import Invoice, Subscription
from billing_app.pages.billing import notices, plan_summary
from billing_app.plans import get_catalog
from billing_app.services import invoices
from billing_app.states import views
from billing_app.states.billing import BillingState
from tests.factories import make_user
from tests.ui.test_states import state_for

END = datetime(2027, 2, 7, tzinfo=UTC)
PRO = {"plan": "pro", "plan_name": "Pro", "current_period_end": END, "amount": 9900,
       "currency": "usd", "cancel_at_period_end": False}  # fmt: skip


def test_plan_cards_write_money_with_cents_and_full_numbers_as_the_page_does() -> None:
    basic = next(p for p in views.plan_views(get_catalog(), "free") if p.key == "basic")
    assert (basic.price, basic.price_label) == ("$19.00", "$19.00 per month")  # as invoices
    assert basic.features == ["100,000 tokens", "1,000 API calls", "100 scraping tasks"]
    pro = views.subscription_view({**PRO, "status": "active"}, get_catalog())
    assert (pro.price, pro.price_label) == ("$99.00 / month", "$99.00 per month")


def test_pro_is_put_forward_as_popular_only_when_it_is_not_a_step_down() -> None:
    """On Enterprise, Pro's solid "Popular" button would push a downgrade."""

    def popular(current: str) -> list[str]:
        return [p.key for p in views.plan_views(get_catalog(), current) if p.highlight]

    assert popular("free") == popular("basic") == popular("pro") == ["pro"]
    assert popular("enterprise") == []


def test_past_due_names_each_date_for_what_it_is() -> None:
    grace = datetime(2027, 1, 14, tzinfo=UTC)
    sub = {**PRO, "status": "past_due", "grace_ends_at": grace}
    shown = views.subscription_view(sub, get_catalog())
    assert shown.grace_text.startswith(
        "Your plan stays active until Jan 14, 2027, the end of its grace period."
    )
    assert shown.renews_text == "Payment failed · billing period ends Feb 7, 2027"


def test_the_past_due_banner_gets_the_amount_and_invoice_still_owed(session: Session) -> None:
    uid = make_user(session, email="h85.due@polish.test", customer="cus_h85due").id
    other = make_user(session, email="h85.other@polish.test", customer="cus_h85other").id
    session.add(
        Subscription(user_id=uid, stripe_subscription_id="sub_h85due",
                     stripe_customer_id="cus_h85due", plan="pro", status="past_due")
    )  # fmt: skip
    common = dict(stripe_subscription_id="sub_h85due", currency="usd", status="open")
    session.add_all(
        [
            Invoice(stripe_invoice_id="in_h85_paid", user_id=uid, number="H85-0001",
                    **{**common, "status": "paid"}, amount_due=9900, amount_paid=9900,
                    created_at=datetime(2026, 11, 7, tzinfo=UTC)),
            Invoice(stripe_invoice_id="in_h85_due", user_id=uid, number="H85-0002", **common,
                    amount_due=9900, amount_paid=0, amount_remaining=9900, attempt_count=1,
                    hosted_invoice_url="https://invoice.example/h85",
                    created_at=datetime(2026, 12, 7, tzinfo=UTC)),
            Invoice(stripe_invoice_id="in_h85_other", user_id=other, number="H85-0003",
                    currency="usd", status="open", amount_due=500, amount_paid=0,
                    attempt_count=1, created_at=datetime(2026, 12, 8, tzinfo=UTC)),
        ]
    )  # fmt: skip
    session.commit()
    due = views.due_view(invoices.payment_due(session, uid))
    assert due == views.DueView(
        text="$99.00 is due on invoice H85-0002.",
        number="H85-0002",
        hosted_url="https://invoice.example/h85",
    )
    assert views.due_view(None) == views.DueView()
    compiled = str(notices())
    assert "View invoice" in compiled and '["hosted_url"]' in compiled


def test_the_page_uses_dashes_not_hyphens_and_no_free_badge_beside_free() -> None:
    compiled = str(notices())  # JavaScript: non-ASCII escaped
    assert compiled.count("Thanks \\u2014 your") == 2 and "Thanks - " not in compiled
    assert '"Free"' not in str(plan_summary())  # the heading says it; no badge repeats it


def test_the_chart_is_empty_until_the_chosen_metric_has_usage() -> None:
    state = state_for(BillingState)
    assert state.chart_empty
    state.history = [{"day": "2026-12-01", "metric": "api_calls", "quantity": 3}]
    assert state.chart_empty  # tokens are shown: none yet
    state.set_chart_metric("api_calls")
    assert not state.chart_empty
