"""Webhook storms: one Stripe event sequence delivered shuffled and duplicated, hundreds of
orderings (hypothesis), mixed with API answers (a plan change's, `stripe sync`) of the
subscription as Stripe showed it at some moment, with the app's clock minutes off Stripe's;
the final state is always the newest events'. Builds on the Stripe
tests' helpers (tests/stripe/conftest.py: real HTTP to the app's webhook route, Stripe's
signature scheme, payloads from Stripe's own fixture objects)."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from billing_app import clock
from billing_app.gateway.parsing import StripeAnswer
from billing_app.models import Invoice, Quota, StripeEvent, Subscription
from billing_app.services import stripe_sync
from tests.factories import make_user
from tests.reliability.conftest import RUN_SLOW, report
from tests.stripe.conftest import (  # noqa: F401  (fixtures, used by name)
    _sandbox_server,
    deliver,  # noqa: F811
    http,
    payloads,
    receiver,
    stripe_fixtures,
)

T0 = 1_764_000_000
FREE = {"tokens": 10_000, "api_calls": 100, "scraping_tasks": 10}
UNLIMITED = {"tokens": 0, "api_calls": 0, "scraping_tasks": 0}
EXAMPLES = int(os.environ.get("STORM_EXAMPLES", "500" if RUN_SLOW else "100"))
_seq = itertools.count(1)


def _answers(pl, uid: int, n: int, ends_canceled: bool) -> list[StripeAnswer]:
    """The subscription as Stripe's API showed it at moments between (and on) the events'."""
    base = dict(sub_id=f"sub_storm_{n}", customer=f"cus_storm_{n}", user_id=uid)
    p1, p2 = (T0, T0 + 2_592_000), (T0 + 2_592_000, T0 + 5_184_000)
    states = [
        (T0 + 120, pl.subscription(**base, price="price_sandbox_pro", period=p1)),
        (
            T0 + 151,
            pl.subscription(**base, status="past_due", price="price_sandbox_pro", period=p1),
        ),
        (T0 + 250, pl.subscription(**base, price="price_sandbox_enterprise", period=p2)),
    ]
    if ends_canceled:
        canceled = pl.subscription(
            **base, status="canceled", price="price_sandbox_enterprise", period=p2
        )
        states.append((T0 + 400, canceled))
    return [StripeAnswer(obj, datetime.fromtimestamp(at, UTC)) for at, obj in states]


def _sequence(pl, uid: int, n: int, ends_canceled: bool) -> list[dict]:
    sub, cus, inv = f"sub_storm_{n}", f"cus_storm_{n}", f"in_storm_{n}"
    base = dict(sub_id=sub, customer=cus, user_id=uid)
    p1, p2 = (T0, T0 + 2_592_000), (T0 + 2_592_000, T0 + 5_184_000)
    failed = pl.invoice(inv_id=inv, customer=cus, sub_id=sub, status="open")
    failed["attempt_count"] = 1
    paid = pl.invoice(inv_id=inv, customer=cus, sub_id=sub, status="paid", amount_paid=9900)
    ev = pl.event
    events = [
        ev(
            "customer.subscription.created",
            pl.subscription(**base, price="price_sandbox_basic", period=p1),
            T0,
        ),
        ev(
            "customer.subscription.updated",
            pl.subscription(**base, price="price_sandbox_pro", period=p1),
            T0 + 100,
        ),
        ev("invoice.payment_failed", failed, T0 + 150),
        ev(
            "customer.subscription.updated",
            pl.subscription(**base, status="past_due", price="price_sandbox_pro", period=p1),
            T0 + 151,
        ),
        ev("invoice.paid", paid, T0 + 200),
        ev(
            "customer.subscription.updated",
            pl.subscription(**base, price="price_sandbox_enterprise", period=p2),
            T0 + 201,
        ),
    ]
    if ends_canceled:
        events.append(
            ev(
                "customer.subscription.deleted",
                pl.subscription(
                    **base, status="canceled", price="price_sandbox_enterprise", period=p2
                ),
                T0 + 300,
            )
        )
    return events


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), ends_canceled=st.booleans())
def test_shuffled_duplicated_deliveries_end_on_the_newest_state(
    data,
    ends_canceled,
    session,
    deliver,  # noqa: F811
    payloads,  # noqa: F811
):
    n = next(_seq)
    user = make_user(session, customer=f"cus_storm_{n}")
    events = _sequence(payloads, user.id, n, ends_canceled)
    copies = data.draw(st.lists(st.integers(1, 3), min_size=len(events), max_size=len(events)))
    deliveries = [e for e, c in zip(events, copies, strict=True) for _ in range(c)]
    order = data.draw(st.permutations(range(len(deliveries))))
    # API answers at drawn points of the storm, the app's clock up to 10 minutes off.
    answers = _answers(payloads, user.id, n, ends_canceled)
    picked = data.draw(st.lists(st.sampled_from(range(len(answers))), max_size=4))
    slots = data.draw(st.lists(st.integers(0, len(order)), min_size=len(picked)))
    skew = timedelta(seconds=data.draw(st.integers(-600, 600)))
    clock.set_clock(lambda: datetime.now(UTC) + skew)
    statuses = []
    try:
        for step, i in enumerate([*order, None]):
            for a, slot in zip(picked, slots, strict=False):
                if slot == step:
                    stripe_sync.apply_answer(session, answers[a])
                    session.commit()
            if i is not None:
                statuses.append(deliver.send(deliveries[i]).status_code)
    finally:
        clock.set_clock(None)
    assert set(statuses) == {200}, statuses

    session.expire_all()
    subs = session.exec(select(Subscription).where(Subscription.user_id == user.id)).all()
    inv = session.exec(select(Invoice).where(Invoice.stripe_invoice_id == f"in_storm_{n}")).all()
    stored = session.exec(
        select(StripeEvent).where(
            StripeEvent.stripe_event_id.in_([e["id"] for e in events])  # type: ignore[attr-defined]
        )
    ).all()
    limits = {
        q.metric: q.limit for q in session.exec(select(Quota).where(Quota.user_id == user.id)).all()
    }
    session.rollback()
    wrong_state = int(
        len(subs) != 1
        or (subs[0].status, subs[0].plan)
        != (("canceled", "enterprise") if ends_canceled else ("active", "enterprise"))
    )
    duplicated = len(subs) - 1 + max(0, len(inv) - 1) + len(stored) - len(events)
    if n % 50 == 1 or wrong_state or duplicated:
        report(
            "webhook storm",
            example=n,
            deliveries=len(deliveries),
            wrong_state=wrong_state,
            duplicated=duplicated,
            unprocessed=sum(1 for s in stored if s.processed_at is None),
        )
    assert wrong_state == 0, [(s.status, s.plan) for s in subs]
    assert duplicated == 0
    assert all(s.processed_at is not None for s in stored)
    assert len(inv) == 1 and (inv[0].status, inv[0].amount_paid) == ("paid", 9900)
    assert limits == (FREE if ends_canceled else UNLIMITED)
