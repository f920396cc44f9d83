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


def test_a_new_past_due_wakes_the_sleeping_pass(session, deliver, payloads, monkeypatch):
    """PAST_DUE_GRACE_DAYS=0 and Stripe's clock a few seconds ahead of the app's: the grace
    ends just after the event is applied, while the pass, with no grace end known, sleeps
    its 600 s. The event's commit wakes it, and the paid quotas end within seconds."""
    import contextlib
    import threading
    import time

    from billing_app.services import stripe_sync
    from tests.conftest import _clear_caches

    monkeypatch.setenv("PAST_DUE_GRACE_DAYS", "0")
    _clear_caches()
    uid = make_user(session, email="h94-grace-wake@example.com", customer="cus_h94_wake").id
    base = {"sub_id": "sub_h94_wake", "customer": "cus_h94_wake", "user_id": uid}
    now = int(time.time())
    active = payloads.event("customer.subscription.created", payloads.subscription(**base), now)
    assert deliver.send(active).status_code == 200

    passed = threading.Event()
    one_pass = stripe_sync._grace_pass

    def counted_pass():
        try:
            return one_pass()
        finally:
            passed.set()

    monkeypatch.setattr(stripe_sync, "_grace_pass", counted_pass)
    loop = asyncio.new_event_loop()
    task = loop.create_task(grace_period_task())

    def run() -> None:  # a worker's event loop, as the app's lifespan runs the task
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert passed.wait(20), "the grace task made no first pass"
        time.sleep(0.2)  # and went to sleep: no grace end known, its 600 s
        past_due = payloads.subscription(**base, status="past_due")
        r = deliver.send(payloads.event("customer.subscription.updated", past_due, now + 3))
        assert r.status_code == 200, r.text
        assert metering.check(session, uid, "tokens", 20_000).limit == 1_000_000  # in grace
        session.rollback()
        deadline = time.monotonic() + 15
        while metering.check(session, uid, "tokens", 20_000).limit != 10_000:
            session.rollback()
            assert time.monotonic() < deadline, "the pass slept past the grace end"
            time.sleep(0.1)
        session.rollback()
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        loop.close()
