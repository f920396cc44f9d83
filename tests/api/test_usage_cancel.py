"""POST /api/billing/usage/cancel: a service gives back the units of a job that failed.

Through the API as production serves it (the fast lane in front of FastAPI; a session's
call through FastAPI), on the leg's database; counters and the daily chart read back.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from billing_app.cli import main
from billing_app.client import BillingClient, Conflict
from billing_app.db import session_scope
from billing_app.services import api_keys
from tests.api.conftest import http
from tests.factories import daily_total, usage_totals

CANCEL = "/api/billing/usage/cancel"


def _totals(user_id: int, metric: str = "tokens") -> tuple[int, int, int]:
    """(events not cancelled, their sum, counter total); the days add up to the counters."""
    with session_scope() as s:
        return usage_totals(s, user_id, metric)


def _today(c, user_id: int, metric: str = "tokens") -> int:
    """What the daily chart shows for today (the period's last day reached)."""
    r = c.get("/api/billing/usage", params={"user_id": user_id, "history": "daily"})
    assert r.status_code == 200, r.text
    return [h["quantity"] for h in r.json()["history"] if h["metric"] == metric][-1]


def _write(c, path: str, user_id: int, metric: str, quantity: int, key: str, **extra):
    body = {"user_id": user_id, "metric": metric, "quantity": quantity, "idempotency_key": key}
    return c.post(path, json={**body, **extra})


def test_cancel_after_record_gives_the_units_back(actors):
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    assert _write(c, "/api/billing/usage", a, "tokens", 1500, "job-1").status_code == 201
    assert _write(c, "/api/billing/usage", a, "tokens", 200, "job-2").status_code == 201
    assert _today(c, a) == 1700
    r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["already_canceled"] is False and out["event"]["quantity"] == 1500
    assert out["canceled_at"] == out["event"]["canceled_at"] and out["canceled_at"].endswith("Z")
    assert (out["metric"], out["used"], out["limit"], out["remaining"]) == (
        "tokens", 200, 100_000, 99_800)  # fmt: skip
    assert out["over_limit"] is False and "duplicate" not in out
    assert _today(c, a) == 200
    assert _totals(a) == (1, 200, 200)
    usage = c.get("/api/billing/usage", params={"user_id": a}).json()
    assert next(m["used"] for m in usage["metrics"] if m["metric"] == "tokens") == 200


def test_cancel_after_consume_frees_room_for_a_refused_consume(actors):
    """Basic allows 100 scraping tasks: job-1 reserves all of them, job-2 is refused; job-1
    fails and is cancelled, and job-2 then goes through."""
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    consume = "/api/billing/usage/consume"
    assert _write(c, consume, a, "scraping_tasks", 100, "job-1").status_code == 201
    refused = _write(c, consume, a, "scraping_tasks", 1, "job-2")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "quota_exceeded"
    r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"})
    assert r.status_code == 200, r.text
    assert (r.json()["used"], r.json()["remaining"]) == (0, 100)
    assert _today(c, a, "scraping_tasks") == 0
    ok = _write(c, consume, a, "scraping_tasks", 1, "job-2")
    assert ok.status_code == 201 and ok.json()["remaining"] == 99
    assert _totals(a, "scraping_tasks") == (1, 1, 1)


def test_cancelling_again_answers_the_same_event_and_changes_nothing(actors):
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    _write(c, "/api/billing/usage", a, "tokens", 300, "job-1")
    _write(c, "/api/billing/usage", a, "tokens", 50, "job-2")
    first = c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"}).json()
    again = c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"})
    assert again.status_code == 200 and again.json()["already_canceled"] is True
    assert again.json()["event"] == first["event"]
    assert again.json()["canceled_at"] == first["canceled_at"] and again.json()["used"] == 50
    assert _totals(a) == (1, 50, 50)


@pytest.mark.parametrize("path", ["/api/billing/usage", "/api/billing/usage/consume"])
def test_a_retry_of_the_original_write_after_the_cancel_stays_a_duplicate(actors, path):
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    assert _write(c, path, a, "api_calls", 5, "job-1").status_code == 201
    assert c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"}).status_code == 200
    for again in (path, "/api/billing/usage", "/api/billing/usage/consume"):
        r = _write(c, again, a, "api_calls", 5, "job-1")
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is True and r.json()["used"] == 0
        assert r.json()["event"]["canceled_at"] is not None
    assert _totals(a, "api_calls") == (0, 0, 0)


def test_an_unknown_key_is_404_naming_it_and_writes_nothing(actors):
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    _write(c, "/api/billing/usage", a, "tokens", 10, "job-1")
    r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-404"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "usage_event_not_found" and err["idempotency_key"] == "job-404"
    assert "'job-404'" in err["message"]
    assert _totals(a) == (1, 10, 10)


def test_a_cancel_naming_an_unknown_user_says_so(actors):
    """A mistyped user_id was answered as an unknown key (`usage_event_not_found`), which
    sent the caller looking for the key; every other endpoint says `user_not_found`."""
    c = actors.key_client(actors.service_key)
    _write(c, "/api/billing/usage", actors.a.id, "tokens", 10, "job-1")
    r = c.post(CANCEL, json={"user_id": 987_654, "idempotency_key": "job-1"})
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert (err["code"], err["message"]) == ("user_not_found", "No user with id 987654.")
    assert _totals(actors.a.id) == (1, 10, 10)


def test_another_users_event_cannot_be_cancelled_nor_found(actors):
    """A's key naming B is 403 whether or not B has the key; A's own id with B's key is
    the unknown key's 404, word for word: nothing tells A that B's key exists."""
    service = actors.key_client(actors.service_key)
    b = actors.b.id
    _write(service, "/api/billing/usage", b, "tokens", 70, "b-job")
    for client in (actors.key_client(actors.a_key), actors.cookie_client(actors.a)):
        for key in ("b-job", "nobody-has-this"):
            r = client.post(CANCEL, json={"user_id": b, "idempotency_key": key})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        mine = client.post(CANCEL, json={"idempotency_key": "b-job"})
        unknown = client.post(CANCEL, json={"idempotency_key": "nobody-has-this"})
        assert mine.status_code == unknown.status_code == 404
        assert mine.json()["error"]["message"].replace("b-job", "K") == unknown.json()["error"][
            "message"
        ].replace("nobody-has-this", "K")
    # a service key naming A does not reach B's event either
    r = service.post(CANCEL, json={"user_id": actors.a.id, "idempotency_key": "b-job"})
    assert r.status_code == 404
    assert _totals(b) == (1, 70, 70)


def test_a_user_cancels_its_own_event_by_session_or_key(actors):
    a = actors.a.id
    own = actors.key_client(actors.a_key)
    assert _write(own, "/api/billing/usage", a, "tokens", 40, "mine-1").status_code == 201
    assert _write(own, "/api/billing/usage", a, "tokens", 2, "mine-2").status_code == 201
    r = actors.cookie_client(actors.a).post(CANCEL, json={"idempotency_key": "mine-1"})
    assert r.status_code == 200 and r.json()["used"] == 2, r.text  # through FastAPI
    r = own.post(CANCEL, json={"user_id": a, "idempotency_key": "mine-2"})
    assert r.status_code == 200 and r.json()["used"] == 0, r.text  # through the fast lane
    assert _totals(a) == (0, 0, 0)


def test_bad_cancels_are_clear_4xx_and_write_nothing(actors):
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    _write(c, "/api/billing/usage", a, "tokens", 10, "job-1")
    with session_scope() as s:
        reader = api_keys.create_key(s, name="r", service_name="r", scopes=["usage:read"])[1]
        writer = api_keys.create_key(s, name="w", service_name="w", scopes=["usage:write"])[1]
    for body, status in [
        ({"idempotency_key": "job-1"}, 422),  # a service key names the user
        ({"user_id": a}, 422),
        ({"user_id": a, "idempotency_key": ""}, 422),
        ({"user_id": a, "idempotency_key": "job-1", "quantity": 5}, 422),
        ({"user_id": 0, "idempotency_key": "job-1"}, 422),
    ]:
        r = c.post(CANCEL, json=body)
        assert r.status_code == status, (body, r.text)
    r = actors.key_client(reader).post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"})
    assert r.status_code == 403 and r.json()["error"]["scope"] == "usage:write"
    assert _totals(a) == (1, 10, 10)
    r = actors.key_client(writer).post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"})
    assert r.status_code == 200
    assert _totals(a) == (0, 0, 0)


def test_an_event_of_an_ended_period_or_older_than_a_day_is_409(actors, frozen_clock):
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    frozen_clock.set(datetime(2026, 11, 30, 23, 0, tzinfo=UTC))
    _write(c, "/api/billing/usage", a, "tokens", 30, "november")
    frozen_clock.set(datetime(2026, 12, 1, 0, 30, tzinfo=UTC))  # 90 minutes later
    r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "november"})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert (err["code"], err["reason"]) == ("not_cancelable", "period_ended")
    assert "2026-12-01" in err["message"]
    # a December event recorded 25 hours ago: past the window, though its period runs on
    _write(c, "/api/billing/usage", a, "tokens", 8, "december")
    frozen_clock.set(datetime(2026, 12, 2, 1, 31, tzinfo=UTC))
    r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "december"})
    assert r.status_code == 409 and r.json()["error"]["reason"] == "cancel_window_passed"
    assert _totals(a) == (2, 38, 38)


def test_a_cancel_takes_the_units_off_their_own_day(actors, frozen_clock):
    """An event of yesterday (its day closed by today's write, or recorded backdated) is
    taken off yesterday's row of the chart, not today's."""
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    frozen_clock.set(datetime(2026, 11, 15, 22, 0, tzinfo=UTC))
    _write(c, "/api/billing/usage", a, "tokens", 100, "day-1")
    frozen_clock.set(datetime(2026, 11, 16, 9, 0, tzinfo=UTC))
    _write(c, "/api/billing/usage", a, "tokens", 7, "day-2")
    back = (frozen_clock.now - timedelta(days=1)).isoformat()
    _write(c, "/api/billing/usage", a, "tokens", 20, "backdated", occurred_at=back)

    def days() -> dict[str, int]:
        r = c.get("/api/billing/usage", params={"user_id": a, "history": "daily"}).json()
        return {h["day"]: h["quantity"] for h in r["history"] if h["metric"] == "tokens"}

    assert (days()["2026-11-15"], days()["2026-11-16"]) == (120, 7)
    for key in ("day-1", "backdated"):
        assert c.post(CANCEL, json={"user_id": a, "idempotency_key": key}).status_code == 200
    assert (days()["2026-11-15"], days()["2026-11-16"]) == (0, 7)
    assert _totals(a) == (1, 7, 7)


def test_cancelling_an_event_dated_ahead_past_midnight_leaves_that_days_others_cancelable(
    actors, live_server, frozen_clock
):
    """A service whose clock runs a few minutes ahead dates an event just past midnight
    (allowed: FUTURE_SKEW); it goes on that day's row. Today's own writes go on the
    counter's day. Cancelling the early one must take it from its row, or the counter's
    day no longer holds today's event and its cancel is refused (409 not_counted)."""
    a = actors.a.id
    frozen_clock.set(datetime(2026, 11, 15, 23, 58, tzinfo=UTC))
    ahead = datetime(2026, 11, 16, 0, 2, tzinfo=UTC).isoformat()
    with http(live_server, actors.service_key) as c:
        assert (
            _write(
                c, "/api/billing/usage", a, "tokens", 100, "ahead", occurred_at=ahead
            ).status_code
            == 201
        )
        frozen_clock.set(datetime(2026, 11, 16, 9, 0, tzinfo=UTC))
        assert _write(c, "/api/billing/usage/consume", a, "tokens", 150, "today").status_code == 201
        assert _today(c, a) == 250
        for key in ("ahead", "today"):
            r = c.post(CANCEL, json={"user_id": a, "idempotency_key": key})
            assert r.status_code == 200, r.text
        assert _today(c, a) == 0
    assert _totals(a) == (0, 0, 0)


def test_an_event_after_a_renewal_is_cancelable_on_the_renewal_day(
    actors, live_server, frozen_clock, monkeypatch
):
    """A plan that resets with its billing period renews mid-day (08:00 here): the
    period that ends and the one that begins both counted usage that day, but only the
    new one holds an event at 09:00. Its cancel goes through; the 07:00 one's period has
    ended. (Refused as "ambiguous" before, on every renewal day.)"""
    from sqlmodel import select

    from billing_app.models import Subscription
    from tests.factories import make_subscription
    from tests.test_billing_period_overlap import _pro_resets_with_billing_period

    _pro_resets_with_billing_period(monkeypatch)
    a = actors.a.id
    nov10, dec10 = datetime(2026, 11, 10, 8, tzinfo=UTC), datetime(2026, 12, 10, 8, tzinfo=UTC)
    frozen_clock.set(nov10)
    with session_scope() as s:
        make_subscription(s, a, plan="pro", current_period_start=nov10,
                          current_period_end=dec10, period_reset="billing_period")  # fmt: skip
    with http(live_server, actors.service_key) as c:
        frozen_clock.set(dec10 - timedelta(hours=1))
        assert _write(c, "/api/billing/usage", a, "tokens", 100, "morning").status_code == 201
        with session_scope() as s:  # the renewal's webhook stores the new period
            sub = s.exec(select(Subscription).where(Subscription.user_id == a)).one()
            sub.current_period_start, sub.current_period_end = (
                dec10,
                datetime(2027, 1, 10, 8, tzinfo=UTC),
            )
            s.commit()
        frozen_clock.set(dec10 + timedelta(hours=1))
        assert _write(c, "/api/billing/usage", a, "tokens", 100, "after").status_code == 201
        r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "after"})
        assert r.status_code == 200, r.text
        assert (r.json()["used"], r.json()["resets_at"]) == (0, "2027-01-10T08:00:00Z")
        r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "morning"})
        assert r.status_code == 409 and r.json()["error"]["reason"] == "period_ended", r.text
    assert _totals(a) == (1, 100, 100)


def test_concurrent_cancels_of_one_key_take_it_off_once(actors, live_server):
    a = actors.a.id
    n = 12
    with http(live_server, actors.service_key) as c:
        assert _write(c, "/api/billing/usage", a, "tokens", 40, "job-1").status_code == 201
        assert _write(c, "/api/billing/usage", a, "tokens", 40, "job-2").status_code == 201
    barrier = threading.Barrier(n)

    def cancel(_: int) -> tuple[int, bool, int]:
        with http(live_server, actors.service_key) as c:
            barrier.wait()
            r = c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"})
            return r.status_code, r.json()["already_canceled"], r.json()["used"]

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(cancel, range(n)))
    assert sorted(results) == [(200, False, 40)] + [(200, True, 40)] * (n - 1)
    assert _totals(a) == (1, 40, 40)


def test_a_cancel_racing_retries_of_the_original_consume_counts_it_zero_times(actors, live_server):
    """Retries of job-1's consume race its cancel: each retry finds the key stored (a
    duplicate, never a second reservation), so once the cancel is in, job-1 counts nothing."""
    a = actors.a.id
    with http(live_server, actors.service_key) as c:
        first = _write(c, "/api/billing/usage/consume", a, "scraping_tasks", 60, "job-1")
        assert first.status_code == 201
    barrier = threading.Barrier(9)

    def call(i: int) -> int:
        with http(live_server, actors.service_key) as c:
            barrier.wait()
            if i == 0:
                return c.post(CANCEL, json={"user_id": a, "idempotency_key": "job-1"}).status_code
            r = _write(c, "/api/billing/usage/consume", a, "scraping_tasks", 60, "job-1")
            assert r.json()["duplicate"] is True
            return r.status_code

    with ThreadPoolExecutor(9) as pool:
        assert set(pool.map(call, range(9))) == {200}
    assert _totals(a, "scraping_tasks") == (0, 0, 0)
    with session_scope() as s:
        assert daily_total(s, a, "scraping_tasks") == 0


def test_the_client_and_the_cli_cancel(actors, live_server):
    a = actors.a.id
    with BillingClient(live_server.url, actors.service_key, backoff=0.01) as billing:
        billing.consume(a, "api_calls", 3, idempotency_key="job-1")
        billing.record(a, "api_calls", 4, idempotency_key="job-2")
        r = billing.cancel(a, "job-1")
        assert (r.already_canceled, r.used, r.remaining, r.event.quantity) == (False, 4, 996, 3)
        assert r.event.canceled_at == r.canceled_at and r.canceled_at.tzinfo is not None
        assert billing.cancel(a, "job-1").already_canceled
        with pytest.raises(Exception) as err:
            billing.cancel(a, "job-404")
        assert getattr(err.value, "status", None) == 404
    out = CliRunner().invoke(main, ["usage", "cancel", "--user", actors.a.email, "--key", "job-2"])
    assert out.exit_code == 0, out.output
    assert '"already_canceled": false' in out.stdout and '"used": 0' in out.stdout
    gone = CliRunner().invoke(main, ["usage", "cancel", "--user", str(a), "--key", "job-404"])
    assert gone.exit_code == 2 and "job-404" in gone.output
    assert _totals(a, "api_calls") == (0, 0, 0)


def test_the_client_raises_conflict_for_an_ended_period(actors, live_server, frozen_clock):
    frozen_clock.set(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    with BillingClient(live_server.url, actors.service_key, backoff=0.01) as billing:
        billing.record(actors.a.id, "tokens", 5, idempotency_key="late")
        frozen_clock.set(datetime(2026, 12, 1, 0, 1, tzinfo=UTC))
        with pytest.raises(Conflict) as err:
            billing.cancel(actors.a.id, "late")
    assert err.value.code == "not_cancelable" and err.value.details["reason"] == "period_ended"


def _both_lanes(actors, secret: str):
    """The production composition (the fast lane in front) and FastAPI alone."""
    from starlette.testclient import TestClient

    from billing_app.api.app import create_api
    from tests.api.conftest import ORIGIN

    auth = {"Authorization": f"Bearer {secret}"}
    yield "fast", actors.key_client(secret)
    yield "fastapi", TestClient(create_api(), base_url=ORIGIN, headers=auth)


def test_a_cancel_takes_the_events_key_from_the_idempotency_key_header(actors):
    """Record and consume take their key from the Idempotency-Key header; cancel refused
    it with 422 "idempotency_key: Field required", so the header that wrote an event
    could not cancel it."""
    a = actors.a.id
    for lane, c in _both_lanes(actors, actors.service_key):
        key = f"job-{lane}"
        body = {"user_id": a, "metric": "tokens", "quantity": 10}
        wrote = c.post("/api/billing/usage/consume", json=body, headers={"Idempotency-Key": key})
        assert wrote.status_code == 201, wrote.text
        r = c.post(CANCEL, json={"user_id": a}, headers={"Idempotency-Key": key})
        assert r.status_code == 200, (lane, r.text)
        assert r.json()["event"]["idempotency_key"] == key and not r.json()["already_canceled"]
        # The same key in both places is fine; two different keys are refused.
        r = c.post(
            CANCEL, json={"user_id": a, "idempotency_key": key}, headers={"Idempotency-Key": key}
        )
        assert r.status_code == 200 and r.json()["already_canceled"], r.text
        r = c.post(
            CANCEL, json={"user_id": a, "idempotency_key": key}, headers={"Idempotency-Key": "x"}
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == (
            "Idempotency-Key header and body idempotency_key differ."
        )
        r = c.post(CANCEL, json={"user_id": a}, headers={"Idempotency-Key": "  "})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == (
            "The Idempotency-Key header is empty: send a key of 1 to 255 characters, or leave "
            "the header out."
        )
    assert _totals(a) == (0, 0, 0)


def test_a_cancel_without_a_key_says_where_the_key_goes_with_its_other_problems(actors):
    """No key in the body nor the header: "idempotency_key: Field required" did not say
    the header was an option, and a missing user_id came on the next attempt."""
    c = actors.key_client(actors.service_key)
    a = actors.a.id
    where = (
        "idempotency_key is required: the key the event was recorded or consumed with, in "
        "the body or as the Idempotency-Key header."
    )
    for lane, c in _both_lanes(actors, actors.service_key):
        r = c.post(CANCEL, json={"user_id": a})
        assert r.status_code == 422, (lane, r.text)
        error = r.json()["error"]
        assert error["message"] == where
        assert [f["field"] for f in error["fields"]] == ["idempotency_key"]
        r = c.post(CANCEL, json={})  # a service key names the user too
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["message"] == "user_id is required with a service key."
        assert [(f["field"], f["message"]) for f in error["fields"]] == [
            ("user_id", "user_id is required with a service key."),
            ("idempotency_key", where),
        ]
        r = c.post(CANCEL, json={"user_id": 0})  # the schema's, and the rule's
        assert r.status_code == 422, r.text
        fields = r.json()["error"]["fields"]
        assert [(f["field"], f["type"]) for f in fields] == [
            ("user_id", "greater_than"),
            ("idempotency_key", "validation_error"),
        ]
        assert fields[1]["message"] == where
    assert _totals(a) == (0, 0, 0)
