"""The webhook endpoint over real HTTP: signatures, exactly-once, ordering, failures."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlmodel import Session, func, select

from billing_app.db import compile_for_driver
from billing_app.models import Invoice, Quota, StripeEvent, Subscription, User
from billing_app.services import stripe_sync
from billing_app.services.dto import WebhookResult
from billing_app.services.subscriptions import get_subscription_dto
from tests.factories import make_user
from tests.stripe.conftest import sign

T0 = 1_764_000_000  # 2025-11-24: events' `created`


def _customer_user(session: Session, customer: str = "cus_test_1") -> int:
    return make_user(session, customer=customer).id


def _count(session: Session, model: type) -> int:
    n = session.exec(select(func.count()).select_from(model)).one()
    session.rollback()
    return n


def _limits(session: Session, user_id: int) -> dict[str, int]:
    session.expire_all()  # read what the server wrote, not this session's copies
    rows = session.exec(select(Quota).where(Quota.user_id == user_id)).all()
    limits = {q.metric: q.limit for q in rows}
    session.rollback()  # (objects expire on rollback: read them first)
    return limits


PRO = {"tokens": 1_000_000, "api_calls": 10_000, "scraping_tasks": 1_000}
FREE = {"tokens": 10_000, "api_calls": 100, "scraping_tasks": 10}
UNLIMITED = {"tokens": 0, "api_calls": 0, "scraping_tasks": 0}


# ---------------------------------------------------------------- rejected deliveries


def test_bad_signature_is_400_and_writes_nothing(session, deliver, payloads):
    uid = _customer_user(session)
    sub = payloads.subscription(sub_id="sub_bad", customer="cus_test_1", user_id=uid)
    body = json.dumps(payloads.event("customer.subscription.created", sub, T0)).encode()
    for header in (sign(body, secret="whsec_wrong"), "t=1,v1=deadbeef", "garbage", None):
        r = deliver.raw(body, header)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_signature"
    # A valid signature over different bytes (body tampered after signing).
    r = deliver.raw(body.replace(b"active", b"past_due"), sign(body))
    assert r.status_code == 400
    assert _count(session, StripeEvent) == 0
    assert _count(session, Subscription) == 0


def test_refused_and_failed_deliveries_reach_the_log(
    session, deliver, payloads, monkeypatch, caplog
):
    """The review: with a wrong STRIPE_WEBHOOK_SECRET every delivery was refused and the
    app's log said nothing; a delivery whose apply failed (500) said nothing either."""
    uid = _customer_user(session)
    sub = payloads.subscription(sub_id="sub_log", customer="cus_test_1", user_id=uid)
    body = json.dumps(payloads.event("customer.subscription.created", sub, T0)).encode()
    caplog.set_level(logging.WARNING, logger="billing_app.api.webhook")
    assert deliver.raw(body, sign(body, secret="whsec_wrong")).status_code == 400
    (refusal,) = [r for r in caplog.records if r.name == "billing_app.api.webhook"]
    assert refusal.levelno == logging.WARNING
    assert "400 invalid_signature" in refusal.getMessage()
    assert "check STRIPE_WEBHOOK_SECRET" in refusal.getMessage()

    caplog.clear()
    monkeypatch.setattr(stripe_sync, "apply_subscription", _raise_hiccup)
    assert deliver.raw(body, sign(body)).status_code == 500
    (failure,) = [r for r in caplog.records if r.name == "billing_app.api.webhook"]
    assert failure.levelno == logging.ERROR
    assert "500 processing_failed" in failure.getMessage()
    assert "database hiccup" in failure.getMessage()


def _raise_hiccup(*args: object, **kwargs: object) -> None:
    raise RuntimeError("database hiccup")


def test_stale_timestamp_is_rejected(session, deliver, payloads):
    uid = _customer_user(session)
    sub = payloads.subscription(sub_id="sub_old", customer="cus_test_1", user_id=uid)
    body = json.dumps(payloads.event("customer.subscription.created", sub, T0)).encode()
    r = deliver.raw(body, sign(body, timestamp=int(time.time()) - 301))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_signature"
    assert _count(session, StripeEvent) == 0
    # Within the 300 s tolerance it is accepted.
    assert deliver.raw(body, sign(body, timestamp=int(time.time()) - 250)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2]", b'{"id": "evt_1"}', b'"text"', b"\xff\xfe\x00", b"null"],
)
def test_malformed_body_with_valid_signature_is_400(session, deliver, body):
    r = deliver.raw(body, sign(body))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("invalid_payload", "invalid_signature")
    assert _count(session, StripeEvent) == 0


def test_unknown_type_is_acknowledged_and_ignored(session, deliver, payloads, stripe_fixtures):
    evt = payloads.event("price.created", stripe_fixtures["price"], T0)
    r = deliver.send(evt)
    assert r.status_code == 200
    assert r.json() == {"received": True, "ignored": True}
    assert deliver.send(evt).json() == {"received": True, "duplicate": True}


def test_event_for_unknown_customer_is_acknowledged(session, deliver, payloads):
    sub = payloads.subscription(sub_id="sub_x", customer="cus_nobody", user_id=None)
    r = deliver.send(payloads.event("customer.subscription.created", sub, T0))
    assert r.status_code == 200 and r.json()["ignored"] is True
    assert _count(session, Subscription) == 0


def test_a_delivery_stores_the_event_and_its_objects_as_the_orm_reads_them(
    session, deliver, payloads
):
    """The webhook's statements run on the driver's cursor (db.driver_rows), on both
    databases: what they write reads back through the ORM as written: the payload equal
    to the event, timestamps in UTC, the subscription and its quotas."""
    uid = _customer_user(session)
    sub = payloads.subscription(sub_id="sub_rows", customer="cus_test_1", user_id=uid)
    sub["metadata"] = {"note": 'é 中 "quoted"', "big": str(2**62)}
    evt = payloads.event("customer.subscription.created", sub, T0)
    assert deliver.send(evt).json() == {"received": True}
    stored = session.exec(select(StripeEvent)).one()
    assert stored.payload == evt
    assert stored.created is not None and stored.created.timestamp() == T0
    assert stored.created.utcoffset() == stored.received_at.utcoffset() == timedelta(0)
    row = session.exec(select(Subscription)).one()
    assert (row.user_id, row.status, row.plan) == (uid, "active", "pro")
    assert row.updated_from_stripe_at is not None
    assert row.updated_from_stripe_at.timestamp() == T0
    assert _limits(session, uid) == PRO


@pytest.mark.parametrize("dialect", [postgresql_psycopg.dialect(), sqlite_dialect.dialect()])
def test_a_statement_missing_a_parameter_is_refused_before_it_runs(dialect):
    """The driver's cursor gets the compiled SQL alone, so SQLAlchemy fills in no column
    default there: a parameter left out (here `attempts`, whose default is 0) is an error
    up front, not a NULL written."""
    claim = stripe_sync._event_claim(dialect.name)
    row = {
        "stripe_event_id": "evt_1",
        "type": "invoice.paid",
        "created": None,
        "payload": {},
        "received_at": None,
        "processed_at": None,
    }
    with pytest.raises(ValueError, match="attempts"):
        compile_for_driver(dialect, claim, frozenset(row))
    found = compile_for_driver(dialect, claim, frozenset({**row, "attempts": 1}))
    assert "ON CONFLICT (stripe_event_id) DO NOTHING" in found.sql
    assert ("%(attempts)s" if dialect.name == "postgresql" else ":attempts") in found.sql


def test_deliveries_waiting_on_the_database_do_not_hold_up_the_other_routes(
    session, deliver, receiver, payloads, monkeypatch
):
    """Deliveries run on threads of their own: more deliveries than those threads, all
    stuck (as on a database that hangs), leave the loop's executor free for the fast
    lane's batches and key lookups, which still answer at once."""
    from billing_app.api import webhook
    from billing_app.services import api_keys

    release = threading.Event()
    stuck = threading.Semaphore(0)

    def hang(_session, _payload, _signature):
        stuck.release()
        release.wait(30)
        return WebhookResult(200, {"received": True})

    monkeypatch.setattr(webhook, "handle_webhook", hang)
    uid = _customer_user(session)
    key = api_keys.create_key(session, name="svc", service_name="svc")[1]
    n = webhook._threads.get()._max_workers + 2
    sub = payloads.subscription(sub_id="sub_hang", customer="cus_test_1", user_id=uid)
    evt = payloads.event("customer.subscription.created", sub, T0)
    with ThreadPoolExecutor(n) as pool:
        waiting = [pool.submit(deliver.send, evt) for _ in range(n)]
        try:
            for _ in range(n - 2):  # every delivery thread is taken
                assert stuck.acquire(timeout=10)
            started = time.monotonic()
            r = httpx.post(
                receiver.url + "/api/billing/usage/batch",
                json={"events": [{"user_id": uid, "metric": "api_calls", "quantity": 1}]},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            assert r.status_code == 201, r.text
            assert time.monotonic() - started < 5
            assert not any(f.done() for f in waiting)  # the deliveries are still stuck
        finally:
            release.set()
        assert all(f.result().status_code == 200 for f in waiting)


# ---------------------------------------------------------------- exactly once


def test_sequential_duplicate_is_applied_once(session, deliver, payloads, monkeypatch):
    uid = _customer_user(session)
    calls = []
    original = stripe_sync.apply_event
    monkeypatch.setattr(stripe_sync, "apply_event", lambda s, p: calls.append(1) or original(s, p))
    sub = payloads.subscription(sub_id="sub_dup", customer="cus_test_1", user_id=uid)
    evt = payloads.event("customer.subscription.created", sub, T0)
    assert deliver.send(evt).json() == {"received": True}
    assert deliver.send(evt).json() == {"received": True, "duplicate": True}
    assert len(calls) == 1
    row = session.exec(select(StripeEvent)).one()
    assert row.attempts == 1 and row.processed_at is not None and row.error is None
    assert _limits(session, uid) == PRO


def test_concurrent_duplicates_are_applied_once(session, deliver, payloads, monkeypatch):
    uid = _customer_user(session)
    calls = []
    lock = threading.Lock()
    original = stripe_sync.apply_event

    def counting(s, p):
        with lock:
            calls.append(1)
        time.sleep(0.05)  # widen the window in which the copies overlap
        return original(s, p)

    monkeypatch.setattr(stripe_sync, "apply_event", counting)
    sub = payloads.subscription(sub_id="sub_conc", customer="cus_test_1", user_id=uid)
    evt = payloads.event("customer.subscription.created", sub, T0)
    barrier = threading.Barrier(8)

    def send(_):
        barrier.wait()
        return deliver.send(evt)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    firsts = [r for r in responses if not r.json().get("duplicate")]
    assert len(firsts) == 1
    assert len(calls) == 1
    assert _count(session, StripeEvent) == 1
    assert _count(session, Subscription) == 1
    assert _limits(session, uid) == PRO


def test_failure_is_recorded_returns_500_and_a_retry_applies(
    session, deliver, payloads, monkeypatch
):
    uid = _customer_user(session)
    original = stripe_sync.apply_subscription
    state = {"fail": True}

    def flaky(*args, **kwargs):
        if state["fail"]:
            raise RuntimeError("database hiccup")
        return original(*args, **kwargs)

    monkeypatch.setattr(stripe_sync, "apply_subscription", flaky)
    sub = payloads.subscription(sub_id="sub_flaky", customer="cus_test_1", user_id=uid)
    evt = payloads.event("customer.subscription.created", sub, T0)
    r = deliver.send(evt)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "processing_failed"
    row = session.exec(select(StripeEvent)).one()
    assert row.processed_at is None and row.attempts == 1
    assert "database hiccup" in row.error
    session.rollback()
    assert _count(session, Subscription) == 0
    assert _limits(session, uid) == FREE

    state["fail"] = False
    r = deliver.send(evt)  # Stripe's retry of the same event
    assert r.status_code == 200 and r.json() == {"received": True}
    row = session.exec(select(StripeEvent)).one()
    assert row.processed_at is not None and row.error is None and row.attempts == 2
    session.rollback()
    assert _limits(session, uid) == PRO


# ---------------------------------------------------------------- ordering


def _sub_events(payloads, uid):
    base = dict(sub_id="sub_order", customer="cus_test_1", user_id=uid)
    p1, p2 = (T0, T0 + 2_592_000), (T0 + 2_592_000, T0 + 5_184_000)
    return (
        [
            payloads.event("customer.subscription.created", payloads.subscription(**base), T0),
            payloads.event(
                "customer.subscription.updated",
                payloads.subscription(**base, price="price_sandbox_enterprise", period=p2),
                T0 + 100,
            ),
            payloads.event(
                "customer.subscription.deleted",
                payloads.subscription(
                    **base, status="canceled", price="price_sandbox_enterprise", period=p2
                ),
                T0 + 200,
            ),
        ],
        p1,
        p2,
    )


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_subscription_events_in_any_order_end_the_same(session, deliver, payloads, order):
    uid = _customer_user(session)
    events, _, p2 = _sub_events(payloads, uid)
    for i in order:
        assert deliver.send(events[i]).status_code == 200
    sub = session.exec(select(Subscription)).one()
    assert (sub.status, sub.plan) == ("canceled", "enterprise")
    assert sub.current_period_end.timestamp() == p2[1]
    assert _count(session, Subscription) == 1
    assert _limits(session, uid) == FREE
    assert get_subscription_dto(session, uid).effective_plan == "free"


@pytest.mark.parametrize("order", list(itertools.permutations(range(2))))
def test_created_and_updated_in_any_order_end_on_the_update(session, deliver, payloads, order):
    """customer.subscription.updated before .created must create the row, and .created
    arriving later must not roll the upgrade back."""
    uid = _customer_user(session)
    events, _, _ = _sub_events(payloads, uid)
    for i in order:
        deliver.send(events[i])
    sub = session.exec(select(Subscription)).one()
    assert (sub.status, sub.plan) == ("active", "enterprise")
    assert _limits(session, uid) == UNLIMITED


def test_same_second_deleted_wins(session, deliver, payloads):
    uid = _customer_user(session)
    events, _, _ = _sub_events(payloads, uid)
    deleted, updated = events[2], events[1]
    updated["created"] = deleted["created"]
    deliver.send(deleted)
    deliver.send(updated)
    assert session.exec(select(Subscription)).one().status == "canceled"


def _invoice_events(payloads, uid):
    base = dict(inv_id="in_order", customer="cus_test_1", sub_id="sub_order")
    failed = payloads.invoice(**base, status="open")
    failed["attempt_count"] = 1
    paid = payloads.invoice(**base, status="paid", amount_paid=9900)
    sub = dict(sub_id="sub_order", customer="cus_test_1", user_id=uid)
    return [
        payloads.event("invoice.payment_failed", failed, T0 + 10),
        payloads.event(
            "customer.subscription.updated",
            payloads.subscription(**sub, status="past_due"),
            T0 + 10,
        ),
        payloads.event("invoice.paid", paid, T0 + 50),
        payloads.event("customer.subscription.updated", payloads.subscription(**sub), T0 + 50),
    ]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_paid_and_failed_in_any_order_end_paid(session, deliver, payloads, order):
    uid = _customer_user(session)
    events = _invoice_events(payloads, uid)
    for i in order:
        assert deliver.send(events[i]).status_code == 200
    inv = session.exec(select(Invoice)).one()
    assert (inv.status, inv.amount_paid, inv.user_id) == ("paid", 9900, uid)
    assert inv.stripe_subscription_id == "sub_order"
    sub = session.exec(select(Subscription)).one()
    assert sub.status == "active" and sub.past_due_since is None
    assert _limits(session, uid) == PRO


def test_same_second_paid_wins_over_failed(session, deliver, payloads):
    uid = _customer_user(session)
    failed, _, paid, _ = _invoice_events(payloads, uid)
    failed["created"] = paid["created"]
    deliver.send(paid)
    deliver.send(failed)
    assert session.exec(select(Invoice)).one().status == "paid"


def test_older_invoice_shape_is_read(session, deliver, payloads):
    uid = _customer_user(session)
    deliver.send(
        payloads.event(
            "customer.subscription.created",
            payloads.subscription(
                sub_id="sub_legacy", customer="cus_test_1", user_id=uid, old_shape=True
            ),
            T0,
        )
    )
    inv = payloads.invoice(
        inv_id="in_legacy",
        customer="cus_other",
        sub_id="sub_legacy",
        status="paid",
        old_shape=True,
    )
    deliver.send(payloads.event("invoice.paid", inv, T0 + 1))
    row = session.exec(select(Invoice)).one()
    assert (row.user_id, row.stripe_subscription_id) == (uid, "sub_legacy")
    sub = session.exec(select(Subscription)).one()
    assert sub.current_period_start is not None and sub.plan == "pro"


def test_replay_reapplies_stored_events_idempotently(session, deliver, payloads):
    uid = _customer_user(session)
    events, _, _ = _sub_events(payloads, uid)
    for evt in events[:2]:
        deliver.send(evt)
    # Local state damaged (e.g. restored from an old backup): replay repairs it.
    sub = session.exec(select(Subscription)).one()
    session.delete(sub)
    session.commit()
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(T0 - 1, UTC)
    assert stripe_sync.replay_events(session, since) == 2
    assert stripe_sync.replay_events(session, since) == 2
    sub = session.exec(select(Subscription)).one()
    assert (sub.status, sub.plan) == ("active", "enterprise")
    assert _limits(session, uid) == UNLIMITED
    assert stripe_sync.replay_events(session, datetime.fromtimestamp(T0 + 500, UTC)) == 0


def test_admin_override_survives_plan_changes(session, deliver, payloads):
    from billing_app.services import quotas

    uid = _customer_user(session)
    quotas.set_override(session, uid, "tokens", 5, reason="abuse")
    events, _, _ = _sub_events(payloads, uid)
    for evt in events:
        deliver.send(evt)
    assert _limits(session, uid) == {**FREE, "tokens": 5}
    row = session.exec(select(Quota).where(Quota.user_id == uid, Quota.metric == "tokens")).one()
    assert (row.source, row.plan_limit) == ("admin", FREE["tokens"])
    session.rollback()


def test_customer_deleted_unlinks_the_user(session, deliver, payloads, stripe_fixtures):
    uid = _customer_user(session, "cus_gone")
    cus = {**stripe_fixtures["customer"], "id": "cus_gone", "deleted": True}
    assert deliver.send(payloads.event("customer.deleted", cus, T0)).json() == {"received": True}
    session.expire_all()
    assert session.get(User, uid).stripe_customer_id is None
    session.rollback()
