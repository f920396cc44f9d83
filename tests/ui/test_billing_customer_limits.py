"""The /billing page for a paying customer: a used-up meter said in words and numbers, the
usage reset date beside the billing date, and a plan set to cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from billing_app.clock import utcnow
from billing_app.plans import get_catalog
from billing_app.services import metering, quotas
from billing_app.services.periods import calendar_month
from billing_app.states import format as fmt
from billing_app.states import views
from billing_app.states.billing import load_live
from tests.factories import make_subscription, make_user


def test_a_meter_past_its_limit_is_labelled_with_exact_numbers() -> None:
    over = views.meter_view(
        {"metric": "api_calls", "used": 12_000, "limit": 10_000, "unlimited": False,
         "remaining": 0, "percent": 100.0}
    )  # fmt: skip
    assert over.limit_reached and (over.used_text, over.limit_text) == ("12,000", "10,000")
    assert (over.percent, over.percent_text) == (100, "120%")
    at = views.meter_view({"metric": "tokens", "used": 100, "limit": 100, "percent": 100.0})
    assert at.limit_reached  # the next request is refused: reached, not only "near"
    near = views.meter_view({"metric": "tokens", "used": 99, "limit": 100, "percent": 99.0})
    unlimited = views.meter_view({"metric": "tokens", "used": 5, "limit": 0, "unlimited": True})
    assert not near.limit_reached and not unlimited.limit_reached


def test_a_lowered_quota_names_the_meter_the_numbers_and_the_date(session: Session) -> None:
    user = make_user(session, email="h80-lowered@example.com")
    metering.record(session, user.id, "api_calls", 80)
    metering.record(session, user.id, "tokens", 8_500)
    quotas.set_override(session, user.id, "api_calls", 50, reason="abuse")
    session.commit()
    live = load_live(user.id)
    resets = fmt.date(calendar_month(utcnow()).end)
    # An admin's limit: an upgrade would not lift it, so it is not offered.
    assert live.limit_notices == [
        f"API calls: limit reached (80 of 50). API calls are refused until {resets}. "
        "This limit was set for your account: contact support to change it."
    ]
    shown = {m.metric: m for m in live.meters}
    assert shown["api_calls"].limit_reached and shown["api_calls"].used_text == "80"
    assert not shown["tokens"].limit_reached and shown["tokens"].color == "amber"
    # No billing date to tell it from: the plain date.
    assert live.resets_text == f"Resets on {resets}"


def test_the_top_plan_is_not_told_to_upgrade(session: Session) -> None:
    status = {"metric": "tokens", "label": "Tokens", "used": 12, "limit": 10,
              "unlimited": False, "resets_at": datetime(2027, 1, 1, tzinfo=UTC)}  # fmt: skip
    top = views.limit_notices([status], get_catalog(), "enterprise")
    assert top == [
        "Tokens: limit reached (12 of 10). Requests that use tokens are refused until Jan 1, 2027."
    ]
    assert views.limit_notices([{**status, "used": 9}], get_catalog(), "free") == []


def test_a_calendar_month_reset_beside_another_billing_date_says_why() -> None:
    month = {"period_start": datetime(2026, 12, 1, tzinfo=UTC),
             "resets_at": datetime(2027, 1, 1, tzinfo=UTC)}  # fmt: skip
    sub = {"status": "active", "current_period_end": datetime(2027, 1, 7, tzinfo=UTC)}
    assert views.usage_resets_text(month, sub) == (
        "Usage resets on the 1st of each month · next Jan 1, 2027"
    )
    # Set to cancel: the card's date is the end, still not the reset's.
    ending = {**sub, "ends_at": datetime(2026, 12, 20, tzinfo=UTC)}
    assert views.usage_resets_text(month, ending).startswith("Usage resets on the 1st")
    # A plan that resets with its billing period: one date, the same on both cards.
    billing = {"period_start": datetime(2026, 12, 7, tzinfo=UTC),
               "resets_at": datetime(2027, 1, 7, tzinfo=UTC)}  # fmt: skip
    assert views.usage_resets_text(billing, sub) == "Resets on Jan 7, 2027"
    # Renewing on the 1st too, or no plan being billed: nothing to tell apart.
    first = {**sub, "current_period_end": datetime(2027, 1, 1, tzinfo=UTC)}
    assert views.usage_resets_text(month, first) == "Resets on Jan 1, 2027"
    assert views.usage_resets_text(month, None) == "Resets on Jan 1, 2027"
    assert views.usage_resets_text(month, {**sub, "status": "canceled"}) == (
        "Resets on Jan 1, 2027"
    )


def test_a_subscribers_page_explains_the_reset_beside_its_renewal(session: Session) -> None:
    user = make_user(session, email="h80-renews@example.com")
    now = utcnow()
    month = calendar_month(now)
    renews = month.start + timedelta(days=6, hours=3)
    if renews <= now:
        renews = month.end + timedelta(days=6, hours=3)
    make_subscription(
        session, user.id, current_period_start=renews - timedelta(days=30),
        current_period_end=renews, cancel_at_period_end=True,
    )  # fmt: skip
    live = load_live(user.id)
    assert live.sub.cancels and live.sub.renews_text == f"Cancels on {fmt.date(renews)}"
    assert live.resets_text == (
        f"Usage resets on the 1st of each month · next {fmt.date(month.end)}"
    )
