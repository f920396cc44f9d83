"""The past_due grace pass wakes at the earliest grace end to come (at most its interval
apart), so a lapsed subscriber's paid quotas end within seconds of the grace, not up to
ten minutes later. The lifespan task runs here on a fake clock: each sleep moves it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from billing_app.services import metering
from billing_app.services.stripe_sync import (
    GRACE_CHECK_INTERVAL_SECONDS,
    grace_period_task,
    next_grace_end,
)
from tests.factories import make_subscription, make_user

GRACE = timedelta(days=7)  # PAST_DUE_GRACE_DAYS' default


class Stop(Exception):
    """Ends the task after the sleeps a test wants."""


def run_task(frozen_clock, sleeps: int, on_wake=None) -> list[float]:
    """Run the grace task until it has slept `sleeps` times; each sleep advances the app's
    clock by what was asked. Returns the waits asked for."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        frozen_clock.set(frozen_clock.now + timedelta(seconds=seconds))
        if on_wake is not None:
            on_wake()
        if len(waits) == sleeps:
            raise Stop

    with pytest.raises(Stop):
        asyncio.run(asyncio.wait_for(grace_period_task(sleep=sleep), timeout=30))
    return waits


def test_the_pass_wakes_just_after_the_next_grace_end(session, frozen_clock):
    uid = make_user(session, email="h81-grace-wake@example.com").id
    ends = frozen_clock.now + timedelta(seconds=90)
    make_subscription(session, uid, status="past_due", past_due_since=ends - GRACE)
    assert next_grace_end(session) == ends

    checks: list[tuple[bool, int]] = []

    def check() -> None:  # what a service's quota check answers on each wake
        answer = metering.check(session, uid, "tokens", 20_000)
        checks.append((answer.allowed, answer.limit))
        session.rollback()

    waits = run_task(frozen_clock, 2, on_wake=check)
    assert 90 <= waits[0] <= 92  # the grace end, not the 600 s interval
    assert waits[1] == GRACE_CHECK_INTERVAL_SECONDS  # no grace end left to wait for
    # Woken a second past the end, before its pass: Pro's; after that pass: Free's, refused.
    assert checks == [(True, 1_000_000), (False, 10_000)]


def test_the_pass_still_wakes_every_interval_for_new_past_due(session, frozen_clock):
    """A grace ending in days does not put the task to sleep for days: a subscription
    falling past_due meanwhile (with a shorter grace left) is seen within the interval."""
    uid = make_user(session, email="h81-grace-far@example.com").id
    make_subscription(
        session, uid, status="past_due", past_due_since=frozen_clock.now - timedelta(days=1)
    )
    assert run_task(frozen_clock, 1) == [GRACE_CHECK_INTERVAL_SECONDS]


def test_a_grace_already_over_is_not_waited_for(session, frozen_clock):
    uid = make_user(session, email="h81-grace-over@example.com").id
    make_subscription(session, uid, status="past_due", past_due_since=frozen_clock.now - GRACE * 2)
    assert next_grace_end(session) is None
    run_task(frozen_clock, 1)
    assert metering.check(session, uid, "tokens", 20_000).allowed is False
