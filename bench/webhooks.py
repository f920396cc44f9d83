"""Signed Stripe deliveries for the webhook benchmark, built with the Stripe tests' helpers
(tests/stripe/conftest.py: `Payloads` from Stripe's own fixture objects, `sign`)."""

from __future__ import annotations

import json
import random
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench import seed

T0 = 1_764_000_000


def build_deliveries(
    engine: Engine, n_events: int = 3000, dup_every: int = 5
) -> tuple[list[dict[str, Any]], int]:
    """`n_events` distinct subscription events for real customers, every `dup_every`-th
    delivered twice (in a shuffled order); returns (deliveries, distinct count)."""
    from tests.stripe.conftest import DATA, Payloads, sign

    payloads = Payloads(json.loads((DATA / "stripe_fixtures.json").read_text()))
    n_customers = max(1, n_events // 3)
    ids = seed.seed_users(engine, n_customers, plan="free", prefix="stripe")
    with engine.begin() as conn:
        conn.execute(
            sa.text('UPDATE "user" SET stripe_customer_id = :c WHERE id = :u'),
            [{"c": f"cus_bench_{u}", "u": u} for u in ids],
        )
    events = []
    for i in range(n_events):
        uid = ids[i % n_customers]
        step = i // n_customers  # created, then updates, per customer
        kind = "customer.subscription.created" if step == 0 else "customer.subscription.updated"
        price = ("price_sandbox_basic", "price_sandbox_pro", "price_sandbox_enterprise")[step % 3]
        obj = payloads.subscription(
            sub_id=f"sub_bench_{uid}", customer=f"cus_bench_{uid}", user_id=uid, price=price
        )
        events.append(payloads.event(kind, obj, T0 + step * 10))
    deliveries = []
    for i, evt in enumerate(events):
        body = json.dumps(evt)
        d = {"body": body, "headers": {"Stripe-Signature": sign(body.encode())}}
        deliveries.append(d)
        if i % dup_every == 0:
            deliveries.append(d)
    random.Random(7).shuffle(deliveries)
    return deliveries, len(events)


def webhook_state(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        stored, processed, errors = conn.execute(
            sa.text(
                "SELECT count(*), count(processed_at), "
                "sum(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) FROM stripe_event"
            )
        ).one()
    return {"stored": int(stored), "processed": int(processed), "errors": int(errors or 0)}
