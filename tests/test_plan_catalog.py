"""A changed plan catalog (BILLING_PLANS_JSON) reaches the users already on each plan at
the app's start: limits were copied to each user's quota rows only when the user was
created or changed plan, so raising Pro's tokens changed nothing for existing Pro users,
and free users never."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta

from sqlmodel import Session, delete, select

from billing_app.clock import utcnow
from billing_app.models import Quota, Subscription
from billing_app.plans import get_catalog
from billing_app.services import metering, quotas
from tests.conftest import _clear_caches
from tests.factories import make_subscription, make_user

NEW = {
    "free": {"limits": {"tokens": 20_000}},
    "pro": {"limits": {"tokens": 2_000_000, "api_calls": 0}},
}


def _limits(session, user_id: int) -> dict[str, tuple[int, str, int]]:
    got = {q.metric: (q.limit, q.source, q.plan_limit) for q in quotas.get_quotas(session, user_id)}
    session.rollback()
    return got


def _people(session) -> dict[str, int]:
    """One user per way of holding a plan."""
    free = make_user(session).id
    pro = make_user(session).id
    make_subscription(session, pro, plan="pro")
    basic = make_user(session).id
    make_subscription(session, basic, plan="basic")
    lapsed = make_user(session).id  # past_due beyond the grace days: free's limits
    make_subscription(
        session, lapsed, plan="pro", status="past_due", past_due_since=utcnow() - timedelta(days=30)
    )
    quotas.apply_plan(session, lapsed, "free")
    session.commit()
    graced = make_user(session).id  # past_due within the grace: still pro's
    make_subscription(session, graced, plan="pro", status="past_due", past_due_since=utcnow())
    ended = make_user(session).id
    make_subscription(session, ended, plan="pro", status="canceled")
    quotas.apply_plan(session, ended, "free")
    session.commit()
    override = make_user(session).id
    make_subscription(session, override, plan="pro")
    quotas.set_override(session, override, "tokens", 5, "trial")
    return {"free": free, "pro": pro, "basic": basic, "lapsed": lapsed, "graced": graced,
            "ended": ended, "override": override}  # fmt: skip


def test_a_changed_catalog_reaches_every_user_on_the_plan(session, monkeypatch):
    who = _people(session)
    before = {name: _limits(session, uid) for name, uid in who.items()}
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps(NEW))
    _clear_caches()

    changed = quotas.apply_catalog(session)
    session.commit()
    after = {name: _limits(session, uid) for name, uid in who.items()}
    for name in ("free", "lapsed", "ended"):
        assert after[name]["tokens"] == (20_000, "plan", 20_000), name
        assert after[name]["api_calls"] == before[name]["api_calls"], name  # unchanged
    for name in ("pro", "graced"):
        assert after[name]["tokens"] == (2_000_000, "plan", 2_000_000), name
        assert after[name]["api_calls"] == (0, "plan", 0), name  # now unlimited
    assert after["basic"] == before["basic"]  # its plan did not change
    assert after["override"]["tokens"] == (5, "admin", 2_000_000)  # the override stays
    # free x3 tokens, pro x2 x2 metrics, the override's plan_limit and its api_calls
    assert changed == 3 + 4 + 2
    assert quotas.apply_catalog(session) == 0  # nothing left to change


def test_the_app_applies_the_catalog_when_it_starts(session, monkeypatch):
    from billing_app import billing_app as module

    assert module.apply_plan_limits in module.app.get_lifespan_tasks()
    pro = make_user(session).id
    make_subscription(session, pro, plan="pro")
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps(NEW))
    _clear_caches()
    # Its own thread: earlier tests (Playwright's sync API) may leave a loop running here.
    runner = threading.Thread(target=asyncio.run, args=(module.apply_plan_limits(),))
    runner.start()
    runner.join()
    assert _limits(session, pro)["tokens"] == (2_000_000, "plan", 2_000_000)


def test_a_downgrade_committed_while_the_catalog_applies_keeps_the_new_plans_limits(
    session, engine, monkeypatch
):
    """A webhook's downgrade commits while the start's pass waits on its rows: under READ
    COMMITTED PostgreSQL re-checked only the quota row, not who is on which plan, and the
    basic user got pro's new limit (a serialization failure now, retried)."""
    uid = make_user(session).id
    make_subscription(session, uid, plan="pro")
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps({"pro": {"limits": {"tokens": 2_000_000}}}))
    _clear_caches()
    basic_tokens = get_catalog()["basic"].limit_for("tokens")

    # The downgrade's webhook (as apply_subscription does it): the row and the quotas.
    webhook = Session(engine)
    sub = webhook.exec(select(Subscription).where(Subscription.user_id == uid)).one()
    sub.plan = "basic"
    webhook.add(sub)
    quotas.apply_plan(webhook, uid, "basic")
    webhook.flush()

    done: list[int] = []
    start = threading.Thread(target=lambda: done.append(quotas.apply_catalog_now()))
    start.start()
    time.sleep(1.0)  # on PostgreSQL its UPDATE for pro waits for the webhook's row locks
    webhook.commit()
    webhook.close()
    start.join(30)
    assert done, "apply_catalog_now did not finish"

    tokens = {d.metric: d for d in quotas.get_quotas(session, uid)}["tokens"]
    session.rollback()
    assert (tokens.limit, tokens.plan_limit) == (basic_tokens, basic_tokens), tokens


def test_a_paid_user_missing_a_quota_row_gets_the_plans_limit_at_start(session, monkeypatch):
    """A user created before a metric existed has no row for it, and metering then applies
    Free's limit. The start's catalog pass, which "reaches every user already on a plan",
    leaves that Pro user on Free's limit."""
    uid = make_user(session).id
    make_subscription(session, uid, plan="pro")
    session.exec(delete(Quota).where(Quota.user_id == uid, Quota.metric == "scraping_tasks"))
    session.commit()
    quotas.apply_catalog_now()
    c = metering.check(session, uid, "scraping_tasks", 1)
    session.rollback()
    assert c.limit == get_catalog()["pro"].limit_for("scraping_tasks"), c
