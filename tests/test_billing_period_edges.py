"""Billing periods at their edges: subscriptions that never began, a renewal first seen
with a plan change, Stripe's anchors, writes at a boundary, overrides across changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing_app import plans
from billing_app.errors import QuotaExceeded
from billing_app.services import metering, quotas
from billing_app.services.periods import Period, billing_period_at, period_of
from tests.factories import make_user
from tests.test_billing_period_overlap import (
    END,
    START,
    _events_in,
    _pro_resets_with_billing_period,
    _sub,
    _webhook,
)


def _d(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def _pro_sub(user_id: int, plan: str, start: datetime, end: datetime, **extra) -> dict:
    """_sub with another period (and plan)."""
    price = plans.get_catalog()[plan].stripe_price_id
    item = {
        "id": f"si_edge_{user_id}",
        "price": {"id": price, "unit_amount": 100},
        "quantity": 1,
        "current_period_start": int(start.timestamp()),
        "current_period_end": int(end.timestamp()),
    }
    return _sub(user_id, plan, items={"data": [item]}, **extra)


# ------------------------------------------------------------------ 1. an incomplete subscription


@pytest.mark.parametrize("status", ["incomplete", "incomplete_expired"])
def test_a_subscription_that_never_started_does_not_reset_the_free_month(
    session, frozen_clock, monkeypatch, status
):
    """A free user who has used 9,000 of free's 10,000 tokens this month starts a pro
    subscription whose first payment fails (`incomplete`, then `incomplete_expired`). The
    subscription never granted pro: the user is still on free's calendar month, with
    9,000 used. A billing period of a subscription that never began must not hand out a
    fresh free quota (nor hide the month's usage)."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    frozen_clock.set(_d(2026, 11, 5))
    metering.consume(session, user.id, "tokens", 9_000, "free-work")
    frozen_clock.set(START)
    _webhook(session, _sub(user.id, "pro", status), START)
    frozen_clock.set(START + timedelta(hours=1))
    c = metering.check(session, user.id, "tokens", 2_000)
    assert c.limit == 10_000
    assert (c.used, c.allowed) == (9_000, False), f"fresh free quota: used={c.used}"


def test_a_failed_resubscribe_after_a_cancel_does_not_reset_the_canceled_period(
    session, frozen_clock, monkeypatch
):
    """Pro (billing period) canceled at once on Nov 16 with 500,000 tokens used: the user is
    on free until Dec 10 in that billing period (README). A new pro checkout whose payment
    fails (`incomplete`) must not move them to a fresh, empty period."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(_d(2026, 11, 15))
    metering.consume(session, user.id, "tokens", 500_000, "pro-work")
    at = _d(2026, 11, 16)
    frozen_clock.set(at)
    _webhook(session, _sub(user.id, "pro", "canceled", canceled_at=int(at.timestamp()),
                           ended_at=int(at.timestamp())), at)  # fmt: skip
    retry = _pro_sub(user.id, "pro", _d(2026, 11, 17), _d(2026, 12, 17), status="incomplete")
    retry["id"] = f"sub_edge_{user.id}_retry"
    retry["created"] = int(_d(2026, 11, 17).timestamp())
    frozen_clock.set(_d(2026, 11, 17, 1))
    _webhook(session, retry, _d(2026, 11, 17))
    c = metering.check(session, user.id, "tokens", 10_000)
    assert (c.limit, c.used, c.allowed) == (10_000, 500_000, False), f"used={c.used}"


# ------------------------------------------------------------ 2. renewal + downgrade in one state


RENEWED_END = _d(2027, 1, 10, 8)  # the period after END: Dec 10 08:00 - Jan 10 08:00


def _renewal_then_downgrade(session, frozen_clock, monkeypatch, *, in_order: bool) -> int:
    """Pro (billing period) renews on Dec 10; on Dec 15 the user downgrades to basic.
    Returns the user id. `in_order`: the renewal's webhook lands before the downgrade's;
    otherwise it is late (Stripe retries for 3 days) or lost, and the first state the app
    sees of the new period already carries basic (the downgrade's webhook, the answer to
    the app's own change_plan, or `stripe sync`)."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    renewal = _pro_sub(user.id, "pro", END, RENEWED_END)
    downgrade = _pro_sub(user.id, "basic", END, RENEWED_END)
    if in_order:
        _webhook(session, renewal, END)
    frozen_clock.set(_d(2026, 12, 12))
    # In the new period (before its webhook, it counts in the period stepped from Nov 10's)
    metering.consume(session, user.id, "tokens", 900_000, "pro-work-dec")
    assert metering.check(session, user.id, "tokens", 1).resets_at == RENEWED_END
    frozen_clock.set(_d(2026, 12, 15))
    _webhook(session, downgrade, _d(2026, 12, 15))
    if not in_order:
        _webhook(session, renewal, END)  # late: stale, dropped
    return user.id


@pytest.mark.parametrize("in_order", [True, False], ids=["in-order", "renewal-late"])
def test_a_downgrade_seen_together_with_the_renewal_does_not_grant_a_fresh_month(
    session, frozen_clock, monkeypatch, in_order
):
    """The period Dec 10 - Jan 10 began on pro (billing period); the downgrade on Dec 15
    is mid-period, so it keeps counting in that period with basic's limits (README,
    Metering guarantees). The 900,000 tokens already used in it stay used, whatever order
    the two webhooks arrive in."""
    user_id = _renewal_then_downgrade(session, frozen_clock, monkeypatch, in_order=in_order)
    c = metering.check(session, user_id, "tokens", 1_000)
    assert c.limit == 100_000
    assert (c.used, c.allowed, c.resets_at) == (900_000, False, RENEWED_END), (
        f"used={c.used} resets_at={c.resets_at}"
    )
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user_id, "tokens", 100_000, "basic-work")


def test_a_sync_after_a_missed_renewal_and_a_downgrade_keeps_the_periods_usage(
    session, frozen_clock, monkeypatch
):
    """`billing-app stripe sync` (force=True, stamped with the fetch) after the renewal's
    and the downgrade's webhooks were both missed: the fetched state holds the new period
    and basic at once."""
    from billing_app.services import stripe_sync

    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(END + timedelta(minutes=10))
    metering.consume(session, user.id, "tokens", 900_000, "pro-work-gap")
    frozen_clock.set(END + timedelta(days=2))
    stripe_sync.apply_subscription(
        session,
        _pro_sub(user.id, "basic", END, RENEWED_END),
        frozen_clock.now.replace(microsecond=0),
        force=True,
    )
    session.commit()
    c = metering.check(session, user.id, "tokens", 1)
    assert (c.limit, c.used, c.resets_at) == (100_000, 900_000, RENEWED_END)


# ------------------------------------------------------------------ 3. stepping (Stripe's anchors)


def _stored(start: datetime, end: datetime, anchor: datetime):
    """A live pro subscription row as period_of reads it."""
    from types import SimpleNamespace

    return SimpleNamespace(
        status="active", plan="pro", period_reset="billing_period", current_period_start=start,
        current_period_end=end, cancel_at=None, cancel_at_period_end=False,
        created_at=anchor, billing_cycle_anchor=anchor,
    )  # fmt: skip


def test_quarterly_anchor_on_the_31st_returns_to_the_31st(monkeypatch):
    """Stripe, quarterly, billing_cycle_anchor Mar 31: Mar 31 -> Jun 30 -> Sep 30 -> Dec 31.
    In the renewal gap after the stored Jun 30 - Sep 30, the period runs to Dec 31."""
    from billing_app.services.periods import period_of

    _pro_resets_with_billing_period(monkeypatch)
    sub = _stored(_d(2026, 6, 30, 8), _d(2026, 9, 30, 8), _d(2026, 3, 31, 8))
    assert period_of(sub, _d(2026, 10, 1)) == Period(_d(2026, 9, 30, 8), _d(2026, 12, 31, 8))


def test_yearly_anchor_on_feb_29_returns_to_feb_29(monkeypatch):
    """Stripe, yearly, anchor Feb 29 2024: ... Feb 28 2027 -> Feb 29 2028."""
    from billing_app.services.periods import period_of

    _pro_resets_with_billing_period(monkeypatch)
    sub = _stored(_d(2026, 2, 28), _d(2027, 2, 28), _d(2024, 2, 29))
    assert period_of(sub, _d(2027, 3, 1)) == Period(_d(2027, 2, 28), _d(2028, 2, 29))


def test_a_backdated_write_into_the_previous_quarter_counts_in_its_period(
    session, frozen_clock, monkeypatch
):
    """Quarterly pro anchored on Mar 31 (subscription created Mar 31): the period Mar 31 -
    Jun 30 was counted under the key Mar 31 while it was current. Once the stored period is
    Jun 30 - Sep 30, a late event dated Mar 31 12:00 must land in that same period (Mar 31),
    not in a phantom period starting Mar 30."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    q1 = (_d(2026, 3, 31, 8), _d(2026, 6, 30, 8))
    created = {"created": int(q1[0].timestamp())}
    frozen_clock.set(_d(2026, 4, 2))
    _webhook(session, _pro_sub(user.id, "pro", *q1, **created), q1[0])
    first = metering.record(session, user.id, "tokens", 5, "live", occurred_at=_d(2026, 4, 1))
    assert first.status.period_start == q1[0]
    frozen_clock.set(_d(2026, 7, 2))
    _webhook(session, _pro_sub(user.id, "pro", _d(2026, 6, 30, 8), _d(2026, 9, 30, 8),
                               billing_cycle_anchor=int(q1[0].timestamp()), **created),
             _d(2026, 6, 30, 8))  # fmt: skip
    late = metering.record(session, user.id, "tokens", 7, "late", occurred_at=_d(2026, 3, 31, 12))
    assert late.status.period_start == q1[0], late.status.period_start


def test_a_weekly_period_ending_on_the_anchors_day_stays_a_week(monkeypatch):
    """Weekly, anchored Thu Jan 1: Sep 24 -> Oct 1 ends on the anchor's day of the month,
    which is no reason to step by months (the gap after Oct 1 counted in Oct 1 - Nov 1)."""
    _pro_resets_with_billing_period(monkeypatch)
    sub = _stored(_d(2026, 9, 24), _d(2026, 10, 1), _d(2026, 1, 1))
    assert period_of(sub, _d(2026, 10, 2)) == Period(_d(2026, 10, 1), _d(2026, 10, 8))


def test_weekly_backdated_write_counts_in_its_own_week(monkeypatch):
    _pro_resets_with_billing_period(monkeypatch)
    sub = _stored(_d(2026, 9, 24), _d(2026, 10, 1), _d(2026, 1, 1))
    assert period_of(sub, _d(2026, 9, 20)) == Period(_d(2026, 9, 17), _d(2026, 9, 24))


def test_daily_period_across_a_month_stays_a_day(monkeypatch):
    _pro_resets_with_billing_period(monkeypatch)
    sub = _stored(_d(2026, 1, 31), _d(2026, 2, 1), _d(2026, 1, 1))
    assert period_of(sub, _d(2026, 2, 1, 12)) == Period(_d(2026, 2, 1), _d(2026, 2, 2))


# ------------------------------------------------------------------ checked edges (pass)


@pytest.mark.parametrize(
    ("known", "at", "expected"),
    [
        # monthly, anchor 31: Jan 31 -> Feb 28 -> Mar 31 -> Apr 30
        ((_d(2026, 1, 31), _d(2026, 2, 28)), _d(2026, 3, 1), (_d(2026, 2, 28), _d(2026, 3, 31))),
        ((_d(2026, 2, 28), _d(2026, 3, 31)), _d(2026, 4, 30), (_d(2026, 4, 30), _d(2026, 5, 31))),
        ((_d(2026, 3, 31), _d(2026, 4, 30)), _d(2026, 2, 27), (_d(2026, 1, 31), _d(2026, 2, 28))),
        # monthly, anchor 30 and 29 across February (leap and not)
        ((_d(2026, 1, 30), _d(2026, 2, 28)), _d(2026, 3, 29), (_d(2026, 2, 28), _d(2026, 3, 30))),
        ((_d(2028, 1, 29), _d(2028, 2, 29)), _d(2028, 3, 1), (_d(2028, 2, 29), _d(2028, 3, 29))),
        ((_d(2027, 2, 28), _d(2027, 3, 29)), _d(2027, 2, 1), (_d(2027, 1, 29), _d(2027, 2, 28))),
        # yearly from Feb 29: the next is Feb 28
        ((_d(2024, 2, 29), _d(2025, 2, 28)), _d(2025, 3, 1), (_d(2025, 2, 28), _d(2026, 2, 28))),
        # weekly: exact instants, boundary belongs to the next period
        ((_d(2026, 11, 2, 8), _d(2026, 11, 9, 8)), _d(2026, 11, 16, 8),
         (_d(2026, 11, 16, 8), _d(2026, 11, 23, 8))),
        ((_d(2026, 11, 2, 8), _d(2026, 11, 9, 8)), _d(2026, 11, 2, 7, 59),
         (_d(2026, 10, 26, 8), _d(2026, 11, 2, 8))),
        # many periods away, both ways (monthly)
        ((_d(2026, 1, 31), _d(2026, 2, 28)), _d(2028, 2, 29, 12),
         (_d(2028, 2, 29), _d(2028, 3, 31))),
        ((_d(2026, 1, 31), _d(2026, 2, 28)), _d(2024, 3, 30), (_d(2024, 2, 29), _d(2024, 3, 31))),
    ],
)  # fmt: skip
def test_stepping_matches_stripe(known, at, expected):
    assert billing_period_at(Period(*known), at) == Period(*expected)


def test_a_write_exactly_at_the_period_end_counts_in_the_next_period(
    session, frozen_clock, monkeypatch
):
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(END)
    r = metering.record(session, user.id, "tokens", 3, "edge")
    assert (r.status.period_start, r.status.resets_at) == (END, RENEWED_END)
    just_before = metering.record(
        session, user.id, "tokens", 4, "edge-1", occurred_at=END - timedelta(microseconds=1)
    )
    assert just_before.status.period_start == START
    _webhook(session, _pro_sub(user.id, "pro", END, RENEWED_END), END)
    c = metering.check(session, user.id, "tokens", 1)
    assert c.used == 3 == _events_in(session, user.id, END, RENEWED_END)


def test_a_non_utc_occurred_at_counts_in_its_utc_period(session, frozen_clock, monkeypatch):
    from datetime import timezone

    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(_d(2026, 11, 12))
    # 09:30 at +02:00 is 07:30 UTC: before the period began at 08:00 UTC (free's month)
    at = datetime(2026, 11, 10, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    r = metering.record(session, user.id, "tokens", 1, "tz", occurred_at=at)
    assert r.status.period_start == _d(2026, 11, 1)


def test_past_due_then_active_keeps_the_period_and_its_usage(session, frozen_clock, monkeypatch):
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(_d(2026, 11, 20))
    metering.consume(session, user.id, "tokens", 600_000, "w1")
    _webhook(session, _sub(user.id, "pro", "past_due"), _d(2026, 11, 20, 1))
    _webhook(session, _sub(user.id, "pro", "past_due"), _d(2026, 11, 20, 1))  # duplicate
    _webhook(session, _sub(user.id, "pro"), _d(2026, 11, 21))
    c = metering.check(session, user.id, "tokens", 1)
    assert (c.used, c.limit, c.resets_at) == (600_000, 1_000_000, END)


def test_an_admin_override_holds_across_a_plan_change_and_the_renewal(
    session, frozen_clock, monkeypatch
):
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(_d(2026, 11, 20))
    quotas.set_override(session, user.id, "tokens", 50_000, "trial")
    metering.consume(session, user.id, "tokens", 40_000, "w1")
    _webhook(session, _sub(user.id, "basic"), _d(2026, 11, 21))
    c = metering.check(session, user.id, "tokens", 20_000)
    assert (c.limit, c.used, c.allowed) == (50_000, 40_000, False)
    frozen_clock.set(END + timedelta(hours=1))
    _webhook(session, _pro_sub(user.id, "basic", END, RENEWED_END), END)
    c = metering.check(session, user.id, "tokens", 20_000)
    assert (c.limit, c.used, c.allowed) == (50_000, 0, True)  # the month's: known rule switch
