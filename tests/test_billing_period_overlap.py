"""Plans that reset with their billing period: a user's periods overlap within a month
(the calendar month before the subscription began and after its plan ended, the billing
period in between), so each write's period is worked out from its own moment, also when
writes share a batch or a group commit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import Session, select

from billing_app import plans
from billing_app.errors import NotCancelable, QuotaExceeded
from billing_app.models import UsageCounter, UsageEvent
from billing_app.services import metering, metering_batch, stripe_sync
from billing_app.settings import get_settings
from tests.factories import make_user

START = datetime(2026, 11, 10, 8, tzinfo=UTC)  # the subscription's period: Nov 10 - Dec 10
END = datetime(2026, 12, 10, 8, tzinfo=UTC)


def _pro_resets_with_billing_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """README's own example configuration: pro follows the billing period, the other
    plans the calendar month."""
    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    get_settings.cache_clear()
    plans.get_catalog.cache_clear()


def _sub(user_id: int, plan: str, status: str = "active", **extra) -> dict:
    """A Stripe subscription object as a webhook carries it (current API shape)."""
    price = plans.get_catalog()[plan].stripe_price_id
    return {
        "id": f"sub_h2_{user_id}",
        "object": "subscription",
        "customer": f"cus_h2_{user_id}",
        "status": status,
        "created": int(START.timestamp()),
        "metadata": {"user_id": str(user_id)},
        "items": {
            "data": [
                {
                    "id": f"si_h2_{user_id}",
                    "price": {"id": price, "unit_amount": 100},
                    "quantity": 1,
                    "current_period_start": int(START.timestamp()),
                    "current_period_end": int(END.timestamp()),
                }
            ]
        },  # fmt: skip
        **extra,
    }


def _webhook(session: Session, obj: dict, at: datetime) -> None:
    stripe_sync.apply_subscription(session, obj, at)
    session.commit()


def _events_in(session: Session, user_id: int, start: datetime, end: datetime) -> int:
    """Oracle: the stored events' quantities whose occurred_at falls in [start, end)."""
    rows = session.exec(
        select(UsageEvent.occurred_at, UsageEvent.quantity).where(UsageEvent.user_id == user_id)
    ).all()
    session.rollback()
    return sum(q for at, q in rows if start <= at.astimezone(UTC) < end)


# ------------------------------------------------------------------ writes sharing a transaction


def test_writes_in_one_batch_straddling_the_subscription_start_keep_their_periods(
    session, frozen_clock, monkeypatch
):
    """One batch (or one group-commit transaction) with an event from before the pro
    subscription began and one from after: each must count in its own period, exactly
    as when the same two events are sent one by one."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session, customer=None)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(datetime(2026, 11, 10, 10, tzinfo=UTC))
    before = datetime(2026, 11, 10, 7, tzinfo=UTC)  # free plan, calendar month
    during = datetime(2026, 11, 10, 9, tzinfo=UTC)  # pro, billing period Nov 10 08:00

    # One by one: right.
    alone = metering.record(session, user.id, "tokens", 1, "alone", occurred_at=during)
    assert alone.status.period_start == START

    writes = metering_batch.validate_batch([
        {"user_id": user.id, "metric": "tokens", "quantity": 5, "idempotency_key": "b0",
         "occurred_at": before},
        {"user_id": user.id, "metric": "tokens", "quantity": 7, "idempotency_key": "b1",
         "occurred_at": during},
    ])  # fmt: skip
    r_before, r_during = metering_batch.record_batch(session, writes)
    assert r_before.status.period_start == datetime(2026, 11, 1, tzinfo=UTC)
    # The pro period's counter (what quotas and GET /usage read) must hold 1 + 7.
    summary = {m.metric: m for m in metering.summary(session, user.id)}
    assert summary["tokens"].used == _events_in(session, user.id, START, END) == 8
    assert r_during.status.period_start == START


def test_a_batch_straddling_the_subscription_start_does_not_let_consume_pass_the_limit(
    session, frozen_clock, monkeypatch
):
    """The effect on quotas: the pro period's work, batched together with one event from
    before the subscription, lands in the calendar month's counter; the pro period's
    counter (what consume decides on) never sees it, so consume grants past the limit."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(datetime(2026, 11, 20, tzinfo=UTC))
    writes = metering_batch.validate_batch([
        {"user_id": user.id, "metric": "scraping_tasks", "quantity": 1,
         "idempotency_key": "pre-sub", "occurred_at": datetime(2026, 11, 5, tzinfo=UTC)},
        {"user_id": user.id, "metric": "scraping_tasks", "quantity": 1_000,  # pro's limit
         "idempotency_key": "pro-work", "occurred_at": datetime(2026, 11, 19, tzinfo=UTC)},
    ])  # fmt: skip
    metering_batch.record_batch(session, writes)
    assert _events_in(session, user.id, START, END) == 1_000  # the pro period is used up
    with pytest.raises(QuotaExceeded):
        metering.consume(session, user.id, "scraping_tasks", 1_000, "more")


def test_single_posts_sharing_a_group_commit_keep_their_periods(engine, frozen_clock, monkeypatch):
    """Two plain POST /usage requests that the group-commit writer happens to put in one
    transaction: a late event from before the subscription, then the current one."""
    from billing_app.services.usage_writer import UsageWriter

    _pro_resets_with_billing_period(monkeypatch)
    with Session(engine, expire_on_commit=False) as s:
        user = make_user(s)
        _webhook(s, _sub(user.id, "pro"), START)
    frozen_clock.set(datetime(2026, 11, 20, tzinfo=UTC))
    writer = UsageWriter()
    with writer.paused():  # both queued while the writer is busy: one group
        late = datetime(2026, 11, 5, tzinfo=UTC)
        writer.submit(metering.prepare_write(user.id, "tokens", 1, "late", occurred_at=late))
        now = writer.submit(metering.prepare_write(user.id, "tokens", 9, "now"))
    assert now.result().status.period_start == START


# ------------------------------------------------------------------ a plan change mid-period


def test_a_downgrade_mid_period_keeps_the_usage_already_made(session, frozen_clock, monkeypatch):
    """Pro (billing period) -> basic (calendar month) in the customer portal mid-period:
    the tokens used this month do not vanish, and basic's limit is not granted afresh."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(datetime(2026, 11, 15, tzinfo=UTC))
    metering.consume(session, user.id, "tokens", 900_000, "pro-work")
    assert metering.check(session, user.id, "tokens", 1).used == 900_000

    frozen_clock.set(datetime(2026, 11, 16, tzinfo=UTC))
    _webhook(session, _sub(user.id, "basic"), datetime(2026, 11, 16, tzinfo=UTC))
    summary = {m.metric: m for m in metering.summary(session, user.id)}
    assert summary["tokens"].limit == 100_000
    # November's usage (the new period's) per the events themselves:
    nov = metering.calendar_month(frozen_clock.now)
    assert _events_in(session, user.id, nov.start, nov.end) == 900_000
    with pytest.raises(QuotaExceeded):  # 900,000 of 100,000 already used this month
        metering.consume(session, user.id, "tokens", 100_000, "basic-work")


def test_a_cancel_mid_period_does_not_grant_a_fresh_free_quota(session, frozen_clock, monkeypatch):
    """Pro (billing period) canceled immediately: the user is on free for the rest of
    November, having already used far more than free's 10,000 tokens in November."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(datetime(2026, 11, 15, tzinfo=UTC))
    metering.consume(session, user.id, "tokens", 500_000, "pro-work")
    at = datetime(2026, 11, 16, tzinfo=UTC)
    frozen_clock.set(at)
    _webhook(session, _sub(user.id, "pro", "canceled", canceled_at=int(at.timestamp()),
                           ended_at=int(at.timestamp())), at)  # fmt: skip
    c = metering.check(session, user.id, "tokens", 10_000)
    assert c.limit == 10_000
    assert not c.allowed, f"free quota granted afresh: used={c.used}"
    assert c.used == 500_000 and c.resets_at == END  # the billing period runs to its end
    frozen_clock.set(datetime(2026, 12, 10, 9, tzinfo=UTC))  # after it: free's month
    after = metering.check(session, user.id, "tokens", 1)
    assert (after.used, after.resets_at) == (0, datetime(2027, 1, 1, tzinfo=UTC))


def test_an_upgrade_to_a_billing_period_plan_starts_its_periods_at_the_renewal(
    session, frozen_clock, monkeypatch
):
    """Basic (calendar month) -> pro (billing period) mid-period: the month's usage stays
    counted under pro's limit until the renewal; the renewal starts pro's first period."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "basic"), START)
    frozen_clock.set(datetime(2026, 11, 15, tzinfo=UTC))
    metering.consume(session, user.id, "tokens", 90_000, "basic-work")
    frozen_clock.set(datetime(2026, 11, 16, tzinfo=UTC))
    _webhook(session, _sub(user.id, "pro"), datetime(2026, 11, 16, tzinfo=UTC))
    c = metering.check(session, user.id, "tokens", 1)
    assert (c.limit, c.used, c.resets_at) == (1_000_000, 90_000, datetime(2026, 12, 1, tzinfo=UTC))
    renewed = END + (END - START)
    frozen_clock.set(datetime(2026, 12, 10, 9, tzinfo=UTC))
    _webhook(
        session,
        _sub(
            user.id,
            "pro",
            items={
                "data": [
                    {
                        "id": f"si_h2_{user.id}",
                        "price": {
                            "id": plans.get_catalog()["pro"].stripe_price_id,
                            "unit_amount": 100,
                        },
                        "quantity": 1,
                        "current_period_start": int(END.timestamp()),
                        "current_period_end": int(renewed.timestamp()),
                    }
                ]
            },
        ),  # fmt: skip
        datetime(2026, 12, 10, 9, tzinfo=UTC),
    )
    first = metering.check(session, user.id, "tokens", 1)
    assert (first.used, first.resets_at) == (0, renewed)


# ------------------------------------------------------------------ cancelling an event


def _replaced_at_11(session: Session, user_id: int) -> None:
    """At 11:00 the pro subscription ends and a new one begins, its own period from then:
    10:00 now counts in the calendar month by the subscription, but was counted in the
    old billing period."""
    eleven = datetime(2026, 11, 10, 11, tzinfo=UTC)
    _webhook(session, _sub(user_id, "pro", status="canceled", ended_at=int(eleven.timestamp())),
             eleven)  # fmt: skip
    new = _sub(user_id, "pro", id=f"sub_h2_new_{user_id}")
    for item in new["items"]["data"]:
        item["current_period_start"] = int(eleven.timestamp())
        item["current_period_end"] = int(datetime(2026, 12, 10, 11, tzinfo=UTC).timestamp())
    _webhook(session, new, eleven)


def test_a_cancel_takes_the_units_off_the_period_that_counted_them(
    session, frozen_clock, monkeypatch
):
    """The period was worked out again from the subscription: after a new one began, that
    named a period that never counted the event (the one before the new subscription's,
    "ended"), and the cancel was refused with the units kept."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    frozen_clock.set(datetime(2026, 11, 10, 10, tzinfo=UTC))
    _webhook(session, _sub(user.id, "pro"), START)
    metering.record(session, user.id, "tokens", 5, "job")  # 10:00, the period from START
    frozen_clock.set(datetime(2026, 11, 10, 11, 30, tzinfo=UTC))
    _replaced_at_11(session, user.id)

    out = metering.cancel(session, user.id, "job")
    assert out.already_canceled is False
    used = {
        (c.period_start.astimezone(UTC), c.used)
        for c in session.exec(select(UsageCounter).where(UsageCounter.user_id == user.id))
    }
    assert used == {(START, 0)}


def test_a_cancel_on_a_day_two_periods_counted_is_refused_not_guessed(
    session, frozen_clock, monkeypatch
):
    """Usage from before the subscription (the calendar month) and the event (the billing
    period) on one day: both counters hold enough to take the event off, so which one
    counted it is not known from them; the subscription's answer now is no better (here
    a period that never was). Refused, nothing written."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    frozen_clock.set(datetime(2026, 11, 10, 10, tzinfo=UTC))
    early = datetime(2026, 11, 10, 7, tzinfo=UTC)  # before START: the free month
    metering.record(session, user.id, "tokens", 5, "early", occurred_at=early)
    _webhook(session, _sub(user.id, "pro"), START)
    metering.record(session, user.id, "tokens", 5, "job")  # 10:00, the period from START
    frozen_clock.set(datetime(2026, 11, 10, 11, 30, tzinfo=UTC))
    _replaced_at_11(session, user.id)

    def counters() -> set:
        rows = session.exec(select(UsageCounter).where(UsageCounter.user_id == user.id)).all()
        session.rollback()
        return {(c.period_start.astimezone(UTC), c.used) for c in rows}

    before = counters()
    assert before == {(datetime(2026, 11, 1, tzinfo=UTC), 5), (START, 5)}
    with pytest.raises(NotCancelable) as refused:
        metering.cancel(session, user.id, "job")
    assert refused.value.details["reason"] == "ambiguous_period"
    assert counters() == before
    event = session.exec(select(UsageEvent).where(UsageEvent.idempotency_key == "job")).one()
    assert event.canceled_at is None


def test_a_billing_period_plans_refusal_names_its_period_not_a_month(
    session, frozen_clock, monkeypatch
):
    """Pro resets with its billing period (Nov 10 - Dec 10 08:00): a refusal that said
    "Monthly ... limit" and "resets 2026-12-10" named a month that is not one."""
    _pro_resets_with_billing_period(monkeypatch)
    user = make_user(session)
    _webhook(session, _sub(user.id, "pro"), START)
    frozen_clock.set(datetime(2026, 11, 20, tzinfo=UTC))
    metering.consume(session, user.id, "scraping_tasks", 900, "work")
    partial = metering.check(session, user.id, "scraping_tasks", 200)
    assert partial.reason == (
        "Requested 200 scraping tasks but only 100 of this billing period's scraping task "
        "limit of 1,000 remain; resets 2026-12-10."
    )
    metering.consume(session, user.id, "scraping_tasks", 100, "rest")
    with pytest.raises(QuotaExceeded) as refused:
        metering.consume(session, user.id, "scraping_tasks", 1, "more")
    assert refused.value.message == (
        "Scraping task limit of 1,000 for this billing period reached; resets 2026-12-10."
    )
