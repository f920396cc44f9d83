"""Admin endpoints: users list/detail, quota overrides with audit, invoices, API keys, stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing_app.db import session_scope
from billing_app.models import Invoice, Subscription
from billing_app.services import admin, metering, quotas
from tests.factories import make_subscription, make_user


def _sub(user_id: int, plan: str, status: str, n: int = 0) -> None:
    with session_scope() as s:
        make_subscription(s, user_id, plan=plan, status=status, sub_id=f"sub_{user_id}_{n}")


def test_users_list_search_filter_sort_paginate(actors, frozen_clock):
    with session_scope() as s:
        carol = make_user(s, email="carol@acme.com")
        metering.record(s, carol.id, "tokens", 5000)
        metering.record(s, actors.b.id, "tokens", 700)
        metering.record(s, actors.a.id, "api_calls", 30)
    _sub(actors.a.id, "pro", "active")
    _sub(actors.b.id, "basic", "canceled")
    c = actors.cookie_client(actors.admin)
    r = c.get("/api/billing/admin/users")
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 4
    assert [u["email"] for u in page["items"]] == [
        "alice@example.com",
        "bob@example.com",
        "carol@acme.com",
        "root@example.com",
    ]
    alice = page["items"][0]
    assert alice["plan"] == "pro" and alice["plan_name"] == "Pro" and alice["status"] == "active"
    calls = next(u for u in alice["usage"] if u["metric"] == "api_calls")
    assert calls == {
        "metric": "api_calls",
        "label": "API calls",
        "used": 30,
        "limit": 10_000,
        "unlimited": False,
        "percent": 0.3,
    }
    bob = page["items"][1]
    assert bob["plan"] == "free" and bob["status"] == "canceled"
    assert page["items"][2]["status"] == "none"

    def emails(**params):
        r = c.get("/api/billing/admin/users", params=params)
        assert r.status_code == 200, r.text
        return [u["email"] for u in r.json()["items"]]

    assert emails(q="CAR") == ["carol@acme.com"]
    assert emails(q="@acme") == ["carol@acme.com"]
    assert emails(q="%") == []  # wildcards are literal
    assert emails(plan="pro") == ["alice@example.com"]
    assert emails(plan="free") == ["bob@example.com", "carol@acme.com", "root@example.com"]
    assert emails(status="none") == ["carol@acme.com", "root@example.com"]
    assert emails(sort="-usage_tokens")[:2] == ["carol@acme.com", "bob@example.com"]
    assert emails(sort="-email")[0] == "root@example.com"
    assert emails(sort="usage_api_calls")[-1] == "alice@example.com"
    p2 = c.get("/api/billing/admin/users", params={"per_page": 3, "page": 2}).json()
    assert p2["pages"] == 2 and [u["email"] for u in p2["items"]] == ["root@example.com"]
    for bad in ({"sort": "password"}, {"plan": "gold"}, {"status": "x"}, {"per_page": 0}):
        r = c.get("/api/billing/admin/users", params=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_closest_to_a_limit_lists_who_is_near_or_over_a_quota_first(actors, frozen_clock):
    """The admin's morning question, "who is about to hit a quota?": the users ordered by
    the fullest share of a limit any of their metrics has used, by the limit the list's
    meters show (an override's, else the plan's). Unlimited usage, however large, and an
    override that lifted a limit, rank below; the raw "Most tokens" sort put them first."""
    with session_scope() as s:
        big = make_user(s, email="big@example.com", plan="enterprise")
        over = make_user(s, email="over@example.com", plan="pro")
        near = make_user(s, email="near@example.com")
        lifted = make_user(s, email="lifted@example.com")
        metering.record(s, big.id, "tokens", 50_000_000)  # unlimited
        metering.record(s, over.id, "tokens", 1_200_000)  # 120% of Pro's 1,000,000
        metering.record(s, near.id, "api_calls", 95)  # 95% of Free's 100
        metering.record(s, near.id, "tokens", 1_000)  # 10%: the fullest one counts
        metering.record(s, lifted.id, "tokens", 9_000)  # 90% of Free's, but lifted:
        quotas.set_override(s, lifted.id, "tokens", 90_000, "trial of a bigger plan")
        metering.record(s, actors.a.id, "scraping_tasks", 50)  # 50% of Basic's 100
    c = actors.cookie_client(actors.admin)

    def emails(sort):
        r = c.get("/api/billing/admin/users", params={"sort": sort})
        assert r.status_code == 200, r.text
        return [u["email"] for u in r.json()["items"]]

    assert emails("-quota")[:4] == [
        "over@example.com",
        "near@example.com",
        "alice@example.com",
        "lifted@example.com",
    ]
    assert emails("quota")[-1] == "over@example.com"
    assert emails("-usage_tokens")[0] == "big@example.com"  # what the raw sort gives


def test_list_users_has_no_n_plus_one(session, actors):
    """A page costs six queries whatever its size."""
    import sqlalchemy as sa

    from billing_app.db import get_engine

    for i in range(30):
        make_user(session, email=f"bulk{i:02d}@example.com")
    statements: list[str] = []

    def count(_conn, _cur, statement, *_args):
        statements.append(statement)

    engine = get_engine()
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope() as s:
            page = admin.list_users(s, admin.UserFilters(sort="-usage_tokens"), per_page=25)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(page.items) == 25
    selects = [st for st in statements if st.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 6, selects  # count, page, counters, quotas, subscriptions, owed


def test_deep_and_searched_pages_match_an_independent_ordering(session, actors):
    """Pages are slices of ORDER BY email, id, whatever plan the database picks to read
    them. 600 of the 603 users share the prefix searched; ids are not in email order."""
    import sqlalchemy as sa

    from billing_app.models import User

    session.add_all(
        User(email=f"bulk{(i * 7919) % 600:04d}.{i % 7}@example.com", display_name=f"b{i}")
        for i in range(600)
    )
    session.commit()
    ordered = session.execute(sa.text('SELECT id, email FROM "user" ORDER BY email, id')).all()
    session.rollback()
    c = actors.cookie_client(actors.admin)

    def page(**params):
        r = c.get("/api/billing/admin/users", params={"per_page": 50, **params})
        assert r.status_code == 200, r.text
        body = r.json()
        return body["total"], [(u["id"], u["email"]) for u in body["items"]]

    everyone = [tuple(row) for row in ordered]
    assert page(page=7) == (len(everyone), everyone[300:350])
    assert page(page=13) == (len(everyone), everyone[600:])
    bulk = [row for row in everyone if row[1].startswith("bulk")]
    assert len(bulk) == 600
    assert page(q="bulk") == (600, bulk[:50])
    assert page(q="BULK", page=5) == (600, bulk[200:250])
    assert page(q="bulk", sort="-email", page=2) == (600, bulk[::-1][50:100])
    assert page(q="bulk02") == (100, [row for row in bulk if row[1].startswith("bulk02")][:50])


def test_user_detail_and_quota_override_with_audit(actors, frozen_clock):
    with session_scope() as s:
        metering.record(s, actors.a.id, "tokens", 50)
        s.add(
            Invoice(
                stripe_invoice_id="in_1",
                user_id=actors.a.id,
                status="paid",
                amount_due=1900,
                amount_paid=1900,
            )
        )
        s.commit()
    c = actors.cookie_client(actors.admin)
    r = c.put(
        f"/api/billing/admin/users/{actors.a.id}/quota",
        json={"metric": "tokens", "limit": 5, "reason": "abuse investigation"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "admin" and r.json()["limit"] == 5
    d = c.get(f"/api/billing/admin/users/{actors.a.id}").json()
    assert d["user"]["email"] == "alice@example.com" and d["plan"] == "free"
    assert d["audit_log"][0]["reason"] == "abuse investigation"
    assert d["audit_log"][0]["actor_user_id"] == actors.admin.id
    assert d["audit_log"][0]["old_limit"] == 100_000 and d["audit_log"][0]["new_limit"] == 5
    assert {q["metric"]: q["source"] for q in d["quotas"]}["tokens"] == "admin"
    assert {m["metric"]: m["used"] for m in d["usage"]}["tokens"] == 50
    assert d["invoices"][0]["stripe_invoice_id"] == "in_1"
    # the override now binds the service API
    svc = actors.key_client(actors.service_key)
    r = svc.post(
        "/api/billing/usage/consume",
        json={"user_id": actors.a.id, "metric": "tokens", "quantity": 1},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"
    clear = c.put(
        f"/api/billing/admin/users/{actors.a.id}/quota",
        json={"metric": "tokens", "limit": None, "reason": "resolved"},
    )
    assert clear.json()["source"] == "plan" and clear.json()["limit"] == 100_000
    for bad in (
        {"metric": "tokens", "limit": 5},
        {"metric": "tokens", "limit": 5, "reason": ""},
        {"metric": "gpus", "limit": 5, "reason": "x"},
        {"metric": "tokens", "limit": -1, "reason": "x"},
    ):
        r = c.put(f"/api/billing/admin/users/{actors.a.id}/quota", json=bad)
        assert r.status_code == 422, bad
    huge = {"metric": "tokens", "limit": 10**13, "reason": "x"}
    r = c.put(f"/api/billing/admin/users/{actors.a.id}/quota", json=huge)
    assert r.status_code == 422 and "1000000000000" in r.text.replace(",", ""), r.text
    assert c.get("/api/billing/admin/users/999999").status_code == 404
    missing = c.put(
        "/api/billing/admin/users/999999/quota",
        json={"metric": "tokens", "limit": 1, "reason": "x"},
    )
    assert missing.status_code == 404


def test_admin_invoices_filter(actors):
    with session_scope() as s:
        for i, (uid, st) in enumerate(
            [(actors.a.id, "paid"), (actors.b.id, "open"), (actors.b.id, "uncollectible")]
        ):
            s.add(
                Invoice(
                    stripe_invoice_id=f"in_{i}",
                    user_id=uid,
                    status=st,
                    amount_due=100,
                    created_at=datetime(2026, 2, i + 1, tzinfo=UTC),
                )
            )
        s.commit()
    c = actors.cookie_client(actors.admin)
    all_ = c.get("/api/billing/admin/invoices").json()
    assert all_["total"] == 3 and all_["items"][0]["stripe_invoice_id"] == "in_2"
    opened = c.get("/api/billing/admin/invoices", params={"status": "open"}).json()
    assert [i["stripe_invoice_id"] for i in opened["items"]] == ["in_1"]
    mine = c.get("/api/billing/admin/invoices", params={"user_id": actors.a.id}).json()
    assert [i["stripe_invoice_id"] for i in mine["items"]] == ["in_0"]


def test_api_keys_create_list_revoke(actors):
    c = actors.cookie_client(actors.admin)
    r = c.post("/api/billing/admin/api-keys", json={"name": "scraper", "service_name": "scraper"})
    assert r.status_code == 201, r.text
    key = r.json()
    assert key["secret"].startswith(f"bk_live_{key['prefix']}_") and key["kind"] == "service"
    listed = c.get("/api/billing/admin/api-keys").json()["items"]
    assert key["id"] in [k["id"] for k in listed] and all("secret" not in k for k in listed)
    assert "secret_hash" not in listed[0]
    mine = c.get("/api/billing/admin/api-keys", params={"user_id": actors.a.id}).json()["items"]
    assert [(k["name"], k["user_email"]) for k in mine] == [("alice key", "alice@example.com")]
    svc = actors.key_client(key["secret"])
    body = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    assert svc.post("/api/billing/usage", json=body).status_code == 201
    rev = c.delete(f"/api/billing/admin/api-keys/{key['id']}")
    assert rev.status_code == 200 and rev.json()["revoked_at"] is not None
    assert svc.post("/api/billing/usage", json=body).status_code == 401
    user_key = c.post("/api/billing/admin/api-keys", json={"name": "k", "user_id": actors.b.id})
    assert user_key.status_code == 201 and user_key.json()["kind"] == "user"
    for bad in (
        {"name": "x"},
        {"name": "x", "user_id": actors.b.id, "service_name": "s"},
        {"name": "x", "service_name": "s", "scopes": ["admin"]},
    ):
        assert c.post("/api/billing/admin/api-keys", json=bad).status_code == 422, bad
    assert (
        c.post("/api/billing/admin/api-keys", json={"name": "x", "user_id": 999999}).status_code
        == 404
    )
    assert c.delete("/api/billing/admin/api-keys/999999").status_code == 404


def test_stats(actors):
    with session_scope() as s:
        users = [make_user(s, email=f"s{i}@example.com") for i in range(4)]
    _sub(users[0].id, "pro", "active")
    _sub(users[1].id, "pro", "active")
    _sub(users[2].id, "basic", "trialing")
    _sub(users[3].id, "enterprise", "past_due")
    with session_scope() as s:
        s.add(
            Invoice(
                stripe_invoice_id="in_f",
                user_id=users[3].id,
                status="open",
                stripe_subscription_id=f"sub_{users[3].id}_0",
                amount_due=49900,
            )
        )
        s.add(Invoice(stripe_invoice_id="in_ok", user_id=users[0].id, status="paid"))
        s.commit()
    c = actors.cookie_client(actors.admin)
    st = c.get("/api/billing/admin/stats").json()
    assert st["total_users"] == 7
    # past_due within grace still grants Enterprise: a subscriber, as in MRR below.
    assert st["subscribers_by_plan"] == {"basic": 1, "pro": 2, "enterprise": 1}
    assert st["active_subscribers"] == 4
    assert st["mrr"] == 2 * 9900 + 49900  # past_due within grace still billed; trials not
    assert st["failed_payments"] == 1 and st["past_due_subscriptions"] == 1


def test_past_due_counts_what_the_lists_past_due_filter_lists(actors):
    """The "Past due" number is of users whose current subscription is past due: one
    who has subscribed again since (an older one left past due) is not counted."""
    with session_scope() as s:
        again, late = (make_user(s, email=f"{n}@example.com") for n in ("again", "late"))
    _sub(again.id, "basic", "past_due", 0)
    _sub(again.id, "pro", "active", 1)  # the newer: what the list shows for them
    _sub(late.id, "pro", "past_due", 0)
    c = actors.cookie_client(actors.admin)
    listed = c.get("/api/billing/admin/users", params={"status": "past_due"}).json()
    assert [u["email"] for u in listed["items"]] == ["late@example.com"]
    assert c.get("/api/billing/admin/stats").json()["past_due_subscriptions"] == listed["total"]


def test_stats_count_subscribers_as_the_plan_they_grant_now(actors):
    """One definition: a subscriber is a user whose current subscription grants its plan
    now (active, trialing, past_due within the grace period), as the users list's plan
    filter and subscriptions.plan_key_for say; MRR is those billed (not trials)."""
    from datetime import timedelta

    from sqlmodel import select

    from billing_app.clock import utcnow

    with session_scope() as s:
        users = [make_user(s, email=f"g{i}@example.com") for i in range(6)]
    _sub(users[0].id, "pro", "active")
    _sub(users[1].id, "basic", "trialing")
    _sub(users[2].id, "pro", "past_due")  # in grace: still Pro, still billed
    _sub(users[3].id, "enterprise", "past_due")  # grace over: back on Free
    _sub(users[4].id, "pro", "canceled")  # an old subscription, then a new one
    _sub(users[4].id, "basic", "active", n=1)
    _sub(users[5].id, "pro", "unpaid")
    with session_scope() as s:
        now = utcnow()
        for sub in s.exec(select(Subscription).where(Subscription.status == "past_due")).all():
            days = 1 if sub.plan == "pro" else 30
            sub.past_due_since = now - timedelta(days=days)
            s.add(sub)
        s.commit()

    st = actors.cookie_client(actors.admin).get("/api/billing/admin/stats").json()
    assert st["subscribers_by_plan"] == {"basic": 2, "pro": 2, "enterprise": 0}
    assert st["active_subscribers"] == 4
    assert st["mrr"] == 2 * 9900 + 1900  # pro active + pro in grace + basic active
    with session_scope() as s:
        for plan, n in st["subscribers_by_plan"].items():
            assert admin.list_users(s, admin.UserFilters(plan=plan)).total == n


def test_a_reset_over_the_api_needs_no_reason_an_override_does(actors):
    c = actors.cookie_client(actors.admin)
    url = f"/api/billing/admin/users/{actors.a.id}/quota"
    assert c.put(url, json={"metric": "tokens", "limit": 5}).status_code == 422
    assert c.put(url, json={"metric": "tokens", "limit": 5, "reason": "pilot"}).status_code == 200
    reset = c.put(url, json={"metric": "tokens", "limit": None})
    assert reset.status_code == 200, reset.text
    log = c.get(f"/api/billing/admin/users/{actors.a.id}").json()["audit_log"]
    assert [e["reason"] for e in log[:2]] == ["Reset to plan", "pilot"]


def test_user_detail_api_keeps_50_audit_entries_the_drawer_reads_the_10_it_shows(
    actors, monkeypatch
):
    from billing_app.states import admin as admin_state

    with session_scope() as s:
        for i in range(55):
            quotas.set_override(s, actors.a.id, "tokens", 1_000 + i, f"change {i}")
    newest_first = [f"change {i}" for i in range(54, -1, -1)]

    c = actors.cookie_client(actors.admin)
    log = c.get(f"/api/billing/admin/users/{actors.a.id}").json()["audit_log"]
    assert [e["reason"] for e in log] == newest_first[:50]
    assert (log[0]["old_limit"], log[0]["new_limit"]) == (1_053, 1_054)

    read: list[int] = []
    audit_log = quotas.audit_log

    def counted(*args, **kwargs):
        rows = audit_log(*args, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(quotas, "audit_log", counted)
    shown = admin_state.load_detail(actors.a.id)["audit"]
    assert read == [10]  # read from the database: what the drawer shows, no more
    assert [a.reason for a in shown] == newest_first[:10]
    assert shown[0].change == "1,053 → 1,054"


def test_a_user_with_a_month_and_a_billing_period_is_listed_once(actors, frozen_clock, monkeypatch):
    """With plans that reset on their billing period, a user who used the free month and
    then subscribed mid-month has two counters covering today. The list shows each user
    once, sorted and shown by the counter the user's usage goes to now: the period's."""
    from billing_app import plans
    from billing_app.settings import get_settings

    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    plans.get_catalog.cache_clear()
    get_settings.cache_clear()
    with session_scope() as s:
        heavy = make_user(s, email="heavy@example.com")
        metering.record(s, heavy.id, "tokens", 9000)  # free, in November's month
        frozen_clock.now += timedelta(days=1)
        make_subscription(
            s,
            heavy.id,
            plan="pro",
            current_period_start=frozen_clock.now,
            current_period_end=datetime(2026, 12, 16, 12, tzinfo=UTC),
        )
        r = metering.record(s, heavy.id, "tokens", 40)  # the pro period's
        assert r.status.period_start == frozen_clock.now and r.status.used == 40
        metering.record(s, actors.b.id, "tokens", 700)
    for sort in ("-usage_tokens", "usage_tokens", "email"):
        with session_scope() as s:
            page = admin.list_users(s, admin.UserFilters(sort=sort))
        ids = [u.id for u in page.items]
        assert len(ids) == len(set(ids)) == page.total == 4, (sort, ids)
        row = next(u for u in page.items if u.id == heavy.id)
        assert next(m["used"] for m in row.usage if m["metric"] == "tokens") == 40
    with session_scope() as s:
        order = [
            u.email for u in admin.list_users(s, admin.UserFilters(sort="-usage_tokens")).items
        ]
    assert order[:2] == ["bob@example.com", "heavy@example.com"]


def test_calendar_months_list_this_months_counter_only(actors, frozen_clock):
    """A period's counter left from when a plan reset on its billing period (the setting
    changed since) still covers today; with calendar months the list reads this month's,
    as the user's own usage page does, and shows the user once."""
    from billing_app.models import UsageCounter

    with session_scope() as s:
        metering.record(s, actors.a.id, "tokens", 25)
        s.add(
            UsageCounter(
                user_id=actors.a.id,
                metric="tokens",
                period_start=datetime(2026, 11, 10, 8, tzinfo=UTC),
                period_end=datetime(2026, 12, 10, 8, tzinfo=UTC),
                used=5000,
            )
        )
        s.commit()
        own = next(m for m in metering.summary(s, actors.a.id) if m.metric == "tokens")
        page = admin.list_users(s, admin.UserFilters(sort="-usage_tokens"))
    assert own.used == 25
    assert [u.id for u in page.items].count(actors.a.id) == 1 and page.total == len(page.items)
    alice = next(u for u in page.items if u.id == actors.a.id)
    assert next(m["used"] for m in alice.usage if m["metric"] == "tokens") == 25


def test_stats_give_mrr_in_the_plans_currency(actors, monkeypatch):
    """Plans priced in yen: MRR is 2,000 yen, shown as ¥2,000, not $20.00."""
    import json

    from billing_app.states.views import stat_views
    from tests.conftest import _clear_caches

    yen = {"basic": 500, "pro": 2000, "enterprise": 9000}
    plans_json = {k: {"amount": v, "currency": "jpy"} for k, v in yen.items()}
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps(plans_json))
    _clear_caches()
    _sub(actors.a.id, "pro", "active")
    with session_scope() as s:
        stats = admin.headline_stats(s)
    assert (stats["mrr"], stats["currency"]) == (2000, "jpy")
    mrr = next(v.value for v in stat_views(stats) if v.label == "MRR")
    assert mrr == "¥2,000"
    r = actors.cookie_client(actors.admin).get("/api/billing/admin/stats")
    assert (r.json()["mrr"], r.json()["currency"]) == (2000, "jpy")


def test_two_admins_overriding_one_quota_at_once_each_log_the_limit_the_other_left(actors):
    """Admin 1's save has read the limit and is about to write it when admin 2 saves. The
    last write wins, and each audit row's old limit is the limit its save replaced (not
    one both read before either wrote)."""
    import threading

    from sqlalchemy import event

    from billing_app.db import get_engine

    paused, release = threading.Event(), threading.Event()

    def hold_first_update(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        if statement.replace('"', "").lstrip().upper().startswith("UPDATE QUOTA"):
            if not paused.is_set():
                paused.set()
                release.wait(5)

    url = f"/api/billing/admin/users/{actors.a.id}/quota"
    first, second = actors.cookie_client(actors.admin), actors.cookie_client(actors.admin)
    answers: dict[str, int] = {}

    def save(name: str, c, limit: int) -> None:  # type: ignore[no-untyped-def]
        body = {"metric": "tokens", "limit": limit, "reason": f"admin {name}"}
        answers[name] = c.put(url, json=body).status_code

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", hold_first_update)
    try:
        one = threading.Thread(target=save, args=("one", first, 111))
        one.start()
        assert paused.wait(10), "the first save never reached its write"
        two = threading.Thread(target=save, args=("two", second, 222))
        two.start()
        two.join(1.5)  # done by now unless it waits for the first save's lock
        release.set()
        one.join(10)
        two.join(10)
    finally:
        release.set()
        event.remove(engine, "before_cursor_execute", hold_first_update)
    assert answers == {"one": 200, "two": 200}
    d = first.get(f"/api/billing/admin/users/{actors.a.id}").json()
    log = [(e["old_limit"], e["new_limit"]) for e in reversed(d["audit_log"])]
    assert len(log) == 2, log
    assert log[0][0] == 100_000 and log[1][0] == log[0][1], log
    assert {q["metric"]: q["limit"] for q in d["quotas"]}["tokens"] == log[1][1]


def test_a_quota_row_held_elsewhere_is_409_soon_and_nothing_is_written(
    actors, engine, is_postgres, monkeypatch
):
    """A save meeting the quota row held by another transaction (a stuck session, a
    long job) waits OVERRIDE_LOCK_TIMEOUT and answers 409 quota_busy, writing nothing;
    it used to wait for as long as the row was held. Once free, the same save goes in."""
    import threading
    import time
    from typing import Any

    import sqlalchemy as sa

    from billing_app.services import quotas as quota_service

    if not is_postgres:
        pytest.skip("row locks another session holds are PostgreSQL's (PostgreSQL leg)")
    monkeypatch.setattr(quota_service, "OVERRIDE_LOCK_TIMEOUT", "300ms")
    admin = actors.cookie_client(actors.admin)
    url = f"/api/billing/admin/users/{actors.a.id}/quota"
    body = {"metric": "tokens", "limit": 5, "reason": "trial"}
    assert admin.put(url, json={**body, "limit": 4}).status_code == 200  # the row exists
    holder = engine.connect()
    try:
        holder.execute(
            sa.text("SELECT 1 FROM quota WHERE user_id = :u AND metric = 'tokens' FOR UPDATE"),
            {"u": actors.a.id},
        )
        answers: list[Any] = []
        started = time.monotonic()
        save = threading.Thread(target=lambda: answers.append(admin.put(url, json=body)))
        save.start()
        save.join(10)  # the old code waited here for as long as the row was held
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    save.join(10)
    assert waited < 5, waited
    (r,) = answers
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {
        "code": "quota_busy",
        "message": "Another change to this quota is still being saved. Try again in a moment.",
        "user_id": actors.a.id,
        "metric": "tokens",
    }
    d = admin.get(f"/api/billing/admin/users/{actors.a.id}").json()
    assert [e["new_limit"] for e in d["audit_log"]] == [4]
    assert admin.put(url, json=body).status_code == 200


def test_the_audit_log_says_which_admin_changed_a_quota(actors):
    """Two admins share the console: each change names who made it (one query for the
    page's admins); one made with no admin signed in (a script) names no one."""
    with session_scope() as s:
        other = make_user(s, email="ops-h88@example.com", admin=True)
        quotas.set_override(s, actors.a.id, "tokens", 7_000, "launch", actor_user_id=other.id)
        quotas.set_override(s, actors.a.id, "api_calls", 70, "script", actor_user_id=None)
    c = actors.cookie_client(actors.admin)
    r = c.put(
        f"/api/billing/admin/users/{actors.a.id}/quota",
        json={"metric": "tokens", "limit": 8_000, "reason": "bigger launch"},
    )
    assert r.status_code == 200, r.text
    log = c.get(f"/api/billing/admin/users/{actors.a.id}").json()["audit_log"]
    assert [(e["reason"], e["actor_email"]) for e in log] == [
        ("bigger launch", actors.admin.email),
        ("script", None),
        ("launch", "ops-h88@example.com"),
    ]
    with session_scope() as s:
        assert admin.user_detail(s, actors.a.id).audit_log[0]["actor_email"] == actors.admin.email


def test_a_quota_override_body_must_say_its_limit(actors):
    """Leaving `limit` out is a 422, not a reset: a typo or an older client must not clear an
    override. An unknown user is a 404 whatever the body lacks; an unknown metric's 422
    names the metrics; a reset with no override in place writes no audit row."""
    c = actors.cookie_client(actors.admin)
    url = f"/api/billing/admin/users/{actors.a.id}/quota"
    assert c.put(url, json={"metric": "tokens", "limit": 7, "reason": "trial"}).status_code == 200
    r = c.put(url, json={"metric": "tokens", "reason": "typo: no limit"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "limit", r.text
    d = c.get(f"/api/billing/admin/users/{actors.a.id}").json()
    assert {q["metric"]: q["limit"] for q in d["quotas"]}["tokens"] == 7  # still overridden
    r = c.put("/api/billing/admin/users/999999/quota", json={"metric": "tokens", "limit": 1})
    assert r.status_code == 404, r.text
    r = c.put(url, json={"metric": "gpus", "limit": 1, "reason": "x"})
    assert r.status_code == 422 and "api_calls" in r.json()["error"]["message"], r.text
    before = len(c.get(f"/api/billing/admin/users/{actors.a.id}").json()["audit_log"])
    r = c.put(url, json={"metric": "api_calls", "limit": None})
    assert r.status_code == 200 and r.json()["source"] == "plan", r.text
    after = c.get(f"/api/billing/admin/users/{actors.a.id}").json()["audit_log"]
    assert len(after) == before, after
