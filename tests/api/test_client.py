"""billing_app/client.py against the real app over real HTTP (uvicorn on loopback, the
fast lane in front of FastAPI, as production serves it), on the leg's database.

Faults are made by httpx transports wrapped around a real one: the server is never
mocked. A wrapper either forwards the request and then loses the answer (the write is
stored, the client sees a connection error), or answers an attempt itself (a 503 from a
proxy in front) and forwards the rest. Counters are read back from the database.
"""

from __future__ import annotations

import ast
import datetime
import importlib.util
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing_app import client as client_module
from billing_app.client import (
    AuthenticationError,
    BillingAPIError,
    BillingClient,
    Conflict,
    DailyUsage,
    Invoice,
    InvoicePage,
    MetricUsage,
    NotFound,
    QuotaExceeded,
    Quotas,
    QuotaStatus,
    Subscription,
    SubscriptionStatus,
    Unavailable,
    Usage,
    ValidationError,
)
from billing_app.db import session_scope
from billing_app.metrics import METRIC_KEYS
from billing_app.services import quotas
from tests.api.conftest import _free_port
from tests.factories import make_subscription, usage_totals


def _totals(user_id: int, metric: str = "tokens") -> tuple[int, int, int]:
    """(events, sum of their quantities, counter total), straight from the database."""
    with session_scope() as s:
        return usage_totals(s, user_id, metric)


class Forward(httpx.BaseTransport):
    """Sends every attempt to the real server, keeping what was sent and answered."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()
        self.sent: list[Any] = []  # each attempt's JSON body (a GET's: its query string)
        self.sizes: list[int] = []  # each attempt's body in bytes
        self.answers: list[tuple[int, Any]] = []  # (status, JSON) the server gave

    @property
    def attempts(self) -> int:
        return len(self.sent)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(json.loads(request.content) if request.content else request.url.query)
        self.sizes.append(len(request.content))
        return self.answer(request, self.attempts)

    def answer(self, request: httpx.Request, attempt: int) -> httpx.Response:
        response = self.real.handle_request(request)
        response.read()
        self.answers.append((response.status_code, json.loads(response.content)))
        return response

    def close(self) -> None:
        self.real.close()


class LoseAnswers(Forward):
    """The first `times` attempts reach the server, which stores the write and answers;
    the answer is then lost (`error` is raised, as a reset connection or a read timeout
    would), so the client cannot know the write was stored. `only`: those attempts instead."""

    def __init__(
        self,
        error: type[httpx.TransportError] = httpx.ReadError,
        times: int = 1,
        only: set[int] | None = None,
    ):
        super().__init__()
        self.error, self.times, self.only = error, times, only

    def answer(self, request: httpx.Request, attempt: int) -> httpx.Response:
        response = super().answer(request, attempt)
        if attempt in self.only if self.only is not None else attempt <= self.times:
            response.close()
            raise self.error("connection lost before the answer arrived", request=request)
        return response


class AnswerFirst(Forward):
    """Answers the first `times` attempts itself (None: all of them) with `status` in the
    API's error shape, as a proxy or an overloaded server would; forwards the rest."""

    def __init__(self, status: int, *, times: int | None = 1, retry_after: str | None = None):
        super().__init__()
        self.status, self.times, self.retry_after = status, times, retry_after

    def answer(self, request: httpx.Request, attempt: int) -> httpx.Response:
        if self.times is None or attempt <= self.times:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            body = {"error": {"code": "service_unavailable", "message": "Retry shortly."}}
            return httpx.Response(self.status, json=body, headers=headers)
        return super().answer(request, attempt)


def billing(server: Any, key: str, transport: httpx.BaseTransport | None = None, **kw: Any):
    kw.setdefault("backoff", 0.01)
    return BillingClient(server.url, key, transport=transport, **kw)


# ------------------------------------------------------------------ happy paths


def test_record_check_consume_against_the_real_routes(actors, live_server):
    a = actors.a.id  # basic: 100,000 tokens, 1,000 API calls
    with billing(live_server, actors.service_key) as c:
        r = c.record(a, "tokens", 1500, idempotency_key="req-1", metadata={"model": "gpt-4"})
        assert (r.duplicate, r.over_limit, r.used, r.limit, r.remaining) == (
            False,
            False,
            1500,
            100_000,
            98_500,
        )
        assert r.event.user_id == a and r.event.idempotency_key == "req-1"
        assert r.event.metadata == {"model": "gpt-4"} and r.event.occurred_at.tzinfo is not None
        again = c.record(a, "tokens", 1500, idempotency_key="req-1", metadata={"model": "gpt-4"})
        assert again.duplicate and again.event.id == r.event.id
        with pytest.raises(Conflict):  # the same key without the metadata: another event
            c.record(a, "tokens", 1500, idempotency_key="req-1")

        chk = c.check(a, "tokens", 98_501)
        assert (chk.allowed, chk.used, chk.remaining, chk.requested) == (
            False,
            1500,
            98_500,
            98_501,
        )
        assert chk.reason and chk.resets_at == r.resets_at
        assert c.check(a, "tokens", 98_500).allowed

        used = c.consume(a, "api_calls", 3)
        assert (used.duplicate, used.used, used.remaining) == (False, 3, 997)
        assert len(used.event.idempotency_key) == 36  # generated (uuid4)
    assert _totals(a) == (1, 1500, 1500)
    assert _totals(a, "api_calls") == (1, 3, 3)


def test_a_check_carries_percent_and_period_start_as_usage_does(actors, live_server):
    a = actors.a.id  # basic: 1,000 API calls
    with billing(live_server, actors.service_key) as c:
        c.record(a, "api_calls", 250)
        chk = c.check(a, "api_calls")
        meter = c.usage(a).metric("api_calls")
        with pytest.raises(Conflict) as reused:
            c.record(a, "api_calls", 250, idempotency_key="h86-c", metadata={"v": 1})
            c.record(a, "api_calls", 250, idempotency_key="h86-c", metadata={"v": 2})
    assert chk.percent == meter.percent == 25.0
    assert chk.period_start == meter.period_start and chk.period_start.tzinfo is not None
    assert reused.value.details["differing_fields"] == ["metadata"]


def test_batch_full_and_minimal(actors, live_server):
    a, b = actors.a.id, actors.b.id
    events: list[Any] = [
        {"user_id": a, "metric": "tokens", "quantity": 10, "idempotency_key": "b-1"},
        {"user_id": a, "metric": "tokens", "quantity": 20},
        {"user_id": b, "metric": "api_calls", "quantity": 2, "metadata": {"job": 7}},
    ]
    with billing(live_server, actors.service_key) as c:
        out = c.record_batch(events)
        assert (out.recorded, out.duplicates) == (3, 0)
        assert out.results is not None and [r.event.quantity for r in out.results] == [10, 20, 2]
        keys = [r.event.idempotency_key for r in out.results]
        assert keys[0] == "b-1" and len(set(keys)) == 3
        assert "idempotency_key" not in events[1]  # the caller's events are not changed

        minimal = c.record_batch(
            [events[0], {"user_id": b, "metric": "tokens", "quantity": 5}], minimal=True
        )
        assert (minimal.recorded, minimal.duplicates, minimal.results) == (1, 1, None)
    assert _totals(a) == (2, 30, 30)
    assert _totals(b, "api_calls") == (1, 2, 2)
    assert _totals(b) == (1, 5, 5)


def test_usage_and_quotas_of_a_user(actors, live_server):
    """A service key reads any user's usage and quotas, typed; the answer is that user's."""
    a, b = actors.a.id, actors.b.id  # basic: 100,000 tokens, 100 scraping tasks
    with session_scope() as s:
        quotas.set_override(s, b, "scraping_tasks", 5, reason="trial")
    seen = Forward()
    with billing(live_server, actors.service_key, seen) as c:
        c.record(a, "tokens", 1500)
        c.record(b, "tokens", 40)
        c.consume(b, "scraping_tasks", 2)

        u = c.usage(a)
        assert isinstance(u, Usage) and u.history is None
        assert [m.metric for m in u.metrics] == list(METRIC_KEYS)
        tokens = u.metric("tokens")
        assert isinstance(tokens, MetricUsage)
        assert (tokens.used, tokens.limit, tokens.remaining, tokens.unlimited) == (
            1500,
            100_000,
            98_500,
            False,
        )
        assert tokens.percent == 1.5 and tokens.label == "Tokens"
        assert tokens.period_start.tzinfo is not None
        assert tokens.period_start < tokens.resets_at
        assert u.metric("scraping_tasks").used == 0
        with pytest.raises(KeyError):
            u.metric("gpus")

        h = c.usage(b, history=True)
        assert h.metric("tokens").used == 40 and h.history is not None
        assert all(isinstance(d, DailyUsage) for d in h.history)
        assert sum(d.quantity for d in h.history if d.metric == "tokens") == 40
        assert h.history[-1].day >= h.metrics[0].period_start.date()

        q = c.quotas(b)
        assert isinstance(q, Quotas) and q.plan == u.plan
        tasks = q.metric("scraping_tasks")
        assert isinstance(tasks, QuotaStatus)
        assert (tasks.limit, tasks.source, tasks.plan_limit, tasks.reason) == (
            5,
            "admin",
            100,
            "trial",
        )
        assert (tasks.used, tasks.remaining) == (2, 3)
        assert q.metric("tokens").source == "plan"
        assert q.metric("tokens").resets_at == tokens.resets_at
    # user_id in the query string, history=daily after it: the fast lane's plain form
    assert [s for s in seen.sent if isinstance(s, bytes)] == [
        f"user_id={a}".encode(),
        f"user_id={b}&history=daily".encode(),
        f"user_id={b}".encode(),
    ]


def test_a_users_key_reads_only_its_own_usage(actors, live_server):
    with billing(live_server, actors.a_key) as c:
        c.record(actors.a.id, "tokens", 7)
        assert c.usage(actors.a.id).metric("tokens").used == 7
        assert c.quotas(actors.a.id).metric("tokens").used == 7
        for read in (c.usage, c.quotas):
            with pytest.raises(AuthenticationError) as caught:
                read(actors.b.id)
            assert (caught.value.status, caught.value.code) == (403, "forbidden")
            assert caught.value.details == {"user_id": actors.b.id}


def test_subscription_and_invoices_of_a_user(actors, live_server):
    """A service key reads any user's subscription and invoices, typed (times as aware
    datetimes, money in minor units); a user's key only its own."""
    from billing_app.models import Invoice as InvoiceRow

    a, b = actors.a.id, actors.b.id
    with session_scope() as s:
        make_subscription(s, a, plan="basic")
        for user_id, number, status, cents in (
            (a, "A-1", "paid", 1900), (a, "A-2", "open", -4000), (a, "A-3", "draft", 5),
            (b, "B-1", "paid", 7),
        ):  # fmt: skip
            s.add(InvoiceRow(stripe_invoice_id=f"in_{number}", user_id=user_id, number=number,
                             status=status, amount_due=max(cents, 0), total=cents,
                             currency="usd"))  # fmt: skip
        s.commit()
    with billing(live_server, actors.service_key) as c:
        sub = c.subscription(a)
        assert isinstance(sub, SubscriptionStatus) and (sub.plan, sub.plan_name) == (
            "basic",
            "Basic",
        )
        assert isinstance(sub.subscription, Subscription)
        assert (sub.subscription.status, sub.subscription.effective_plan) == ("active", "basic")
        assert sub.subscription.ends_at is None and sub.subscription.cancel_at_period_end is False
        page = c.invoices(a, per_page=1)
        assert isinstance(page, InvoicePage)
        assert (page.total, page.pages, page.per_page, len(page.items)) == (2, 2, 1, 1)
        listed = page.items + c.invoices(a, page=2, per_page=1).items
        assert all(isinstance(i, Invoice) for i in listed)
        assert sorted(i.number for i in listed) == ["A-1", "A-2"]  # no draft, none of B's
        credit = next(i for i in listed if i.number == "A-2")
        assert (credit.total, credit.amount_due, credit.currency) == (-4000, 0, "usd")
        assert credit.created_at.tzinfo is not None and credit.period_start is None
        assert [i.number for i in c.invoices(a, status="paid").items] == ["A-1"]
        with pytest.raises(BillingAPIError) as caught:
            c.subscription(2**31 - 1)
        assert (caught.value.status, caught.value.code) == (404, "user_not_found")
    with billing(live_server, actors.a_key) as c:
        assert c.subscription(a).plan == "basic" and c.invoices(a).total == 2
        for read in (c.subscription, c.invoices):
            with pytest.raises(AuthenticationError) as caught:
                read(b)
            assert (caught.value.status, caught.value.code) == (403, "forbidden")


def test_an_invoice_says_whether_its_payment_failed(actors, live_server):
    """`payment_failed`, as the API's invoices say it (open, a failed attempt, still
    owed), and the rest of the API's invoice: balances, ids, the customer's email."""
    from billing_app.models import Invoice as InvoiceRow

    a = actors.a.id
    with session_scope() as s:
        for number, status, attempts in (("F-1", "open", 1), ("F-2", "paid", 0)):
            s.add(InvoiceRow(stripe_invoice_id=f"in_{number}", user_id=a, number=number,
                             status=status, amount_due=1900, total=1900, currency="usd",
                             attempt_count=attempts, starting_balance=-500))  # fmt: skip
        s.commit()
    with billing(live_server, actors.service_key) as c:
        items = {i.number: i for i in c.invoices(a).items}
    assert (items["F-1"].payment_failed, items["F-2"].payment_failed) == (True, False)
    failed = items["F-1"]
    assert (failed.user_id, failed.user_email) == (a, "alice@example.com")
    assert (failed.starting_balance, failed.credited_to_balance) == (-500, 0)
    assert isinstance(failed.id, int) and isinstance(failed.paid_from_balance, int)


def test_the_client_reads_every_field_the_api_answers():
    """Each result class against the API's schema of that answer: a field the API added
    (an invoice's payment_failed) reaches the client's callers too."""
    from dataclasses import fields

    from billing_app.api import schemas as s

    answers = {
        client_module.UsageEvent: s.EventOut,
        client_module.RecordResult: s.RecordOut,
        client_module.CancelResult: s.CancelOut,
        client_module.BatchResult: s.BatchOut,
        client_module.CheckResult: s.CheckOut,
        client_module.MetricUsage: s.MeterOut,
        client_module.DailyUsage: s.DailyOut,
        client_module.Usage: s.UsageSummaryOut,
        client_module.QuotaStatus: s.QuotaStatusOut,
        client_module.Quotas: s.QuotasOut,
        client_module.Subscription: s.SubscriptionDetailOut,
        client_module.SubscriptionStatus: s.SubscriptionOut,
        client_module.Invoice: s.InvoiceOut,
        client_module.InvoicePage: s.InvoicePage,
    }
    missing = {
        cls.__name__: sorted(set(model.model_fields) - {f.name for f in fields(cls)})
        for cls, model in answers.items()
    }
    assert {name: gone for name, gone in missing.items() if gone} == {}


def test_a_read_is_retried(actors, live_server):
    first = AnswerFirst(503)
    with billing(live_server, actors.service_key, first) as c:
        assert c.usage(actors.a.id).metric("tokens").used == 0
    assert first.attempts == 2 and first.sent[0] == first.sent[1]
    assert first.answers == [(200, first.answers[0][1])]


# ------------------------------------------------------------------ exactly once


# Why the key must be fixed before the first attempt: the first attempt below is stored
# and counted by the server; only its answer is lost. The retry is the same request
# again. With the same key the server finds the event and answers `duplicate`, counting
# nothing (the client reports duplicate False: the key is its own, so the event is this
# call's); with a key made per attempt the retry would be a second, new event: (2, 1400,
# 1400) in the database and `duplicate` False. Checked by breaking the client for a run
# (the key made inside the retry loop, per attempt, where the caller gave none): this
# test failed on the counter with (2, 1400, 1400), the consume below was refused
# quota_exceeded on its retry, and the batch counted (5, 10, 10).
@pytest.mark.parametrize("error", [httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_a_lost_answer_is_retried_with_the_same_key_and_counted_once(actors, live_server, error):
    lose = LoseAnswers(error)
    with billing(live_server, actors.service_key, lose) as c:
        r = c.record(actors.a.id, "tokens", 700)
    assert lose.attempts == 2
    assert lose.answers[0][0] == 201  # the lost answer: stored
    assert _totals(actors.a.id) == (1, 700, 700)
    assert lose.answers[1][1]["duplicate"] is True  # the server found the lost attempt's
    assert not r.duplicate  # which is this call's own event: it counted
    assert lose.sent[0]["idempotency_key"] == lose.sent[1]["idempotency_key"]
    assert r.event.idempotency_key == lose.sent[0]["idempotency_key"]


def test_a_consume_whose_answer_is_lost_is_not_refused_on_retry(actors, live_server):
    """Basic allows 100 scraping tasks: all 100 are reserved, the answer is lost. The retry
    (same key) is the same reservation: answered as a duplicate, not as quota_exceeded,
    which a new key would get (and the caller would give up work it holds a quota for)."""
    lose = LoseAnswers()
    with billing(live_server, actors.service_key, lose) as c:
        r = c.consume(actors.a.id, "scraping_tasks", 100)
    assert lose.attempts == 2 and lose.answers[1][1]["duplicate"] is True
    assert not r.duplicate and r.remaining == 0
    assert _totals(actors.a.id, "scraping_tasks") == (1, 100, 100)


def test_a_batch_whose_answer_is_lost_is_counted_once(actors, live_server):
    a = actors.a.id
    events: list[Any] = [
        {"user_id": a, "metric": "tokens", "quantity": 1},
        {"user_id": a, "metric": "tokens", "quantity": 2},
        {"user_id": a, "metric": "tokens", "quantity": 4, "idempotency_key": "mine"},
    ]
    lose = LoseAnswers()
    with billing(live_server, actors.service_key, lose) as c:
        out = c.record_batch(events, minimal=True)
    assert lose.attempts == 2
    assert lose.answers[0][1] == {"recorded": 3, "duplicates": 0}  # the lost answer
    assert _totals(a) == (3, 7, 7)
    # With "mine" the caller's key, the counts are the server's (it may be an earlier call's).
    assert (out.recorded, out.duplicates) == (0, 3)
    assert lose.sent[0] == lose.sent[1]


@pytest.mark.parametrize("minimal", [False, True])
def test_a_batch_retried_on_the_clients_own_keys_reports_its_events_as_recorded(
    actors, live_server, minimal
):
    """The events of a batch whose keys the client made can only be duplicates of this
    call's own lost attempt: recorded by this call, not duplicates."""
    a = actors.a.id
    events: list[Any] = [{"user_id": a, "metric": "tokens", "quantity": q} for q in (1, 2)]
    if not minimal:
        events.append({"user_id": a, "metric": "tokens", "quantity": 4, "idempotency_key": "k"})
        with billing(live_server, actors.service_key) as c:
            c.record(a, "tokens", 4, idempotency_key="k")  # an earlier call's
    lose = LoseAnswers()
    with billing(live_server, actors.service_key, lose) as c:
        out = c.record_batch(events, minimal=minimal)
    assert lose.attempts == 2
    assert lose.answers[1][1]["duplicates"] == len(events)
    if minimal:
        assert (out.recorded, out.duplicates, out.results) == (2, 0, None)
        assert _totals(a) == (2, 3, 3)
    else:
        assert (out.recorded, out.duplicates) == (2, 1)
        assert [r.duplicate for r in out.results or []] == [False, False, True]
        assert _totals(a) == (3, 7, 7)


def test_unavailable_carries_the_keys_so_a_later_retry_counts_once(actors, live_server):
    """Every answer lost: Unavailable. The write was stored; sending it again later with the
    key the error carries is answered as a duplicate."""
    lose = LoseAnswers(times=2)
    with billing(live_server, actors.service_key, lose, retries=1) as c:
        with pytest.raises(Unavailable) as caught:
            c.record(actors.a.id, "tokens", 9)
        err = caught.value
        assert (err.status, err.code, err.attempts) == (None, "connection_error", 2)
        assert err.idempotency_keys == [lose.sent[0]["idempotency_key"]]
        later = c.record(actors.a.id, "tokens", 9, idempotency_key=err.idempotency_keys[0])
    assert later.duplicate
    assert _totals(actors.a.id) == (1, 9, 9)


# ------------------------------------------------------------------ what is retried


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_retryable_status_is_retried(actors, live_server, status):
    first = AnswerFirst(status)
    with billing(live_server, actors.service_key, first) as c:
        r = c.record(actors.a.id, "tokens", 5, idempotency_key=f"k-{status}")
    assert first.attempts == 2 and not r.duplicate  # the first never reached the server
    assert first.sent[0] == first.sent[1]
    assert _totals(actors.a.id) == (1, 5, 5)


@pytest.mark.parametrize("status", [502, 503])
def test_retry_after_is_honoured(actors, live_server, status):
    """A 502 (Stripe unreachable) says when as a 503 does, and is waited for alike."""
    first = AnswerFirst(status, retry_after="1")
    with billing(live_server, actors.service_key, first) as c:
        started = time.monotonic()
        r = c.consume(actors.a.id, "api_calls", 1)
        waited = time.monotonic() - started
    assert first.attempts == 2 and r.used == 1
    assert waited >= 1.0  # backoff alone would have waited at most 0.01 s


@pytest.mark.parametrize("status", [502, 503])
def test_a_retry_after_longer_than_max_backoff_ends_the_retries(actors, live_server, status):
    always = AnswerFirst(status, times=None, retry_after="60")
    with billing(live_server, actors.service_key, always, max_backoff=2) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            c.check(actors.a.id, "tokens")
    assert always.attempts == 1 and caught.value.attempts == 1
    assert time.monotonic() - started < 1


def test_retries_exhausted_raise_unavailable(actors, live_server):
    always = AnswerFirst(503, times=None)
    with billing(live_server, actors.service_key, always, retries=2) as c:
        with pytest.raises(Unavailable) as caught:
            c.record(actors.a.id, "tokens", 5)
    err = caught.value
    assert (err.status, err.code, err.message, err.attempts) == (
        503,
        "service_unavailable",
        "Retry shortly.",
        3,
    )
    assert always.attempts == 3
    assert len({body["idempotency_key"] for body in always.sent}) == 1
    assert err.idempotency_keys == [always.sent[0]["idempotency_key"]]
    assert _totals(actors.a.id) == (0, 0, 0)


def test_no_server_raises_unavailable_after_every_attempt(actors):
    dead = Forward()  # nothing listens on the port: every attempt is refused
    url = f"http://127.0.0.1:{_free_port()}"
    with BillingClient(url, actors.service_key, transport=dead, retries=2, backoff=0.01) as c:
        with pytest.raises(Unavailable) as caught:
            c.check(actors.a.id, "tokens")
    assert (caught.value.status, caught.value.code, caught.value.attempts) == (
        None,
        "connection_error",
        3,
    )
    assert dead.attempts == 3


def _reuse_key_with_another_quantity(c: BillingClient, a: int) -> None:
    c.record(a, "tokens", 1, idempotency_key="k-1")
    c.record(a, "tokens", 2, idempotency_key="k-1")


@pytest.mark.parametrize(
    ("call", "key", "error", "status", "code"),
    [
        (
            lambda c, a: c.record(a, "tokens", 0),
            "service",
            ValidationError,
            422,
            "validation_error",
        ),
        (lambda c, a: c.consume(a, "gpus", 1), "service", ValidationError, 422, "unknown_metric"),
        (lambda c, a: c.check(a, "tokens"), "bk_live_nope_nope", AuthenticationError, 401, None),
        (_reuse_key_with_another_quantity, "service", Conflict, 409, "idempotency_key_reused"),
        (
            lambda c, a: c.consume(a, "scraping_tasks", 101),
            "service",
            QuotaExceeded,
            403,
            "quota_exceeded",
        ),
        (lambda c, a: c.record(a, "tokens", 1), "bob", AuthenticationError, 403, "forbidden"),
        (lambda c, a: c.record(2**31 - 1, "tokens", 1), "service", NotFound, 404, "user_not_found"),
        (
            lambda c, a: c.usage(2**31 - 1),
            "service",
            NotFound,
            404,
            "user_not_found",
        ),
        (
            lambda c, a: c.quotas(2**31 - 1),
            "service",
            NotFound,
            404,
            "user_not_found",
        ),
        (
            lambda c, a: c.cancel(a, "no-such-job"),
            "service",
            NotFound,
            404,
            "usage_event_not_found",
        ),
        (lambda c, a: c.quotas(0), "service", ValidationError, 422, "validation_error"),
        (lambda c, a: c.usage(a), "bk_live_nope_nope", AuthenticationError, 401, None),
    ],
    ids=[
        "422",
        "422-metric",
        "401",
        "409",
        "403-quota",
        "403-other-user",
        "404",
        "404-usage",
        "404-quotas",
        "404-cancel",
        "422-quotas",
        "401-usage",
    ],
)
def test_client_errors_are_raised_at_once_with_the_servers_answer(
    actors, live_server, call, key, error, status, code
):
    secret = {"service": actors.service_key, "bob": actors.b_key}.get(key, key)
    seen = Forward()
    with billing(live_server, secret, seen) as c:
        with pytest.raises(error) as caught:
            call(c, actors.a.id)
    err = caught.value
    assert not isinstance(err, Unavailable)
    # One attempt per call (the 409 case makes two calls, the first a success): no retry.
    assert seen.attempts == (2 if code == "idempotency_key_reused" else 1)
    assert seen.answers[-1][0] == status
    server = dict(seen.answers[-1][1]["error"])
    assert (err.status, err.code, err.message) == (
        status,
        server.pop("code"),
        server.pop("message"),
    )
    assert err.details == server
    if code is not None:
        assert err.code == code
    assert _totals(actors.a.id, "scraping_tasks") == (0, 0, 0)


def test_validation_error_names_the_bad_events_of_a_batch(actors, live_server):
    good = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    with billing(live_server, actors.service_key) as c:
        with pytest.raises(ValidationError) as caught:
            c.record_batch([good, {**good, "quantity": 0}, good])
        with pytest.raises(ValueError):
            c.record_batch([])  # refused before sending
    assert [e["index"] for e in caught.value.events] == [1]
    assert caught.value.fields[0]["field"] == "events.1.quantity"
    assert len(caught.value.idempotency_keys) == 3
    assert _totals(actors.a.id) == (0, 0, 0)


# ------------------------------------------------------------------ batches split to fit


def _many(actors: Any, n: int) -> list[Any]:
    """`n` events over two users and two metrics, quantities by position, every tenth with
    its own key."""
    users = (actors.a.id, actors.b.id)
    return [
        {"user_id": users[i % 2], "metric": ("tokens", "api_calls")[i % 3 == 0], "quantity": i + 1}
        | ({"idempotency_key": f"own-{i}"} if i % 10 == 0 else {})
        for i in range(n)
    ]


def _stored(actors: Any, events: list[Any]) -> dict[tuple[int, str], tuple[int, int, int]]:
    """Each (user, metric) of `events` as stored, and as it should be: each event once."""
    stored, want = {}, {}
    for ev in events:
        at = (ev["user_id"], ev["metric"])
        n, total, _ = want.get(at, (0, 0, 0))
        want[at] = (n + 1, total + ev["quantity"], total + ev["quantity"])
        stored[at] = _totals(*at)
    assert stored == want
    return stored


def test_a_batch_over_the_servers_event_limit_is_split_and_answered_in_order(actors, live_server):
    events = _many(actors, 2345)
    forward = Forward()
    with billing(live_server, actors.service_key, forward) as c:
        out = c.record_batch(events, idempotency_key="job-7")
        # The whole call again (the caller's own retry): every event a duplicate.
        again = c.record_batch(events, idempotency_key="job-7")
        counts = c.record_batch(events, idempotency_key="job-7", minimal=True)
    assert [len(body["events"]) for body in forward.sent[:3]] == [1000, 1000, 345]
    assert forward.attempts == 9 and {status for status, _ in forward.answers} == {200, 201}
    assert (out.recorded, out.duplicates) == (2345, 0)
    assert out.results is not None and again.results is not None
    assert [r.event.quantity for r in out.results] == [ev["quantity"] for ev in events]
    keys = [r.event.idempotency_key for r in out.results]
    assert keys[:3] == ["own-0", "job-7#1", "job-7#2"] and keys[2344] == "job-7#2344"
    assert (again.recorded, again.duplicates) == (0, 2345)
    assert [r.event.id for r in again.results] == [r.event.id for r in out.results]
    assert (counts.recorded, counts.duplicates, counts.results) == (0, 2345, None)
    _stored(actors, events)


def test_a_batch_over_the_servers_body_limit_is_split_to_fit(actors, live_server):
    """1 MiB per request: events of 15 KiB of metadata each (the server takes up to 16)."""
    a = actors.a.id
    events: list[Any] = [
        {"user_id": a, "metric": "tokens", "quantity": i + 1, "metadata": {"blob": "x" * 15_000}}
        for i in range(150)
    ]
    forward = Forward()
    with billing(live_server, actors.service_key, forward) as c:
        out = c.record_batch(events, minimal=True)
    assert sum(forward.sizes) > 2 * 1024 * 1024 and forward.attempts == 3
    assert all(size <= 1024 * 1024 for size in forward.sizes)
    assert [len(body["events"]) for body in forward.sent] == [69, 69, 12]
    assert (out.recorded, out.duplicates) == (150, 0)
    assert _totals(a) == (150, 150 * 151 // 2, 150 * 151 // 2)


def test_a_split_batch_that_fails_midway_is_retried_whole_and_stores_nothing_twice(
    actors, live_server
):
    """The second request is stored but its answer lost, and the call gives up. The earlier
    request is stored too; the caller retries the whole call with its key: each event once."""
    events = _many(actors, 25)  # requests of 10 (the splitting at the server's 1,000: above)
    lose = LoseAnswers(only={2})
    with billing(live_server, actors.service_key, lose, retries=0, max_batch_events=10) as c:
        with pytest.raises(Unavailable) as caught:
            c.record_batch(events, idempotency_key="nightly-2026-12-01")
    assert lose.attempts == 2 and caught.value.stored == 10
    assert len(caught.value.idempotency_keys) == 25
    with billing(live_server, actors.service_key, max_batch_events=10) as c:
        out = c.record_batch(events, idempotency_key="nightly-2026-12-01")
    assert (out.recorded, out.duplicates) == (5, 20)
    assert out.results is not None
    assert [r.duplicate for r in out.results] == [True] * 20 + [False] * 5
    _stored(actors, events)


def test_a_bad_event_in_a_later_request_is_named_by_its_index_in_the_batch(actors, live_server):
    events = _many(actors, 25)
    events[13] = {**events[13], "quantity": 0}
    with billing(live_server, actors.service_key, max_batch_events=10) as c:
        with pytest.raises(ValidationError) as caught:
            c.record_batch(events, idempotency_key="job-9")
    err = caught.value
    assert [e["index"] for e in err.events] == [13] and err.stored == 10
    assert err.fields[0]["field"] == "events.13.quantity"
    _stored(actors, events[:10])  # the first request's, each once


def test_a_split_batchs_refusal_counts_its_bad_events_over_the_whole_batch(actors, live_server):
    """Requests of 10 of a batch of 25: the summary said "1 of 5 events are invalid;
    nothing was recorded" of the last request, when the caller sent 25 and 20 were
    stored."""
    events = _many(actors, 25)
    events[21] = {**events[21], "metric": "gpus"}
    events[23] = {**events[23], "quantity": 0}
    with billing(live_server, actors.service_key, max_batch_events=10) as c:
        with pytest.raises(ValidationError) as later:
            c.record_batch(events, idempotency_key="job-10")
        again = [*events[:3], {**events[3], "metric": "gpus"}, *events[4:]]
        with pytest.raises(ValidationError) as first:
            c.record_batch(again, idempotency_key="job-11")
    said = "2 of 25 events are invalid; the first 20 were recorded, none after them."
    assert (later.value.message, later.value.stored) == (said, 20)
    assert str(later.value) == f"422 validation_error: {said}"
    assert [e["index"] for e in later.value.events] == [21, 23]
    said = "1 of 25 events are invalid; nothing was recorded."
    assert (first.value.message, first.value.stored) == (said, 0)
    _stored(actors, events[:20])


def test_a_conflict_in_a_later_request_is_named_by_its_index_in_the_batch(actors, live_server):
    """A 409 names its one event by `index` (and in its message): it was the index in
    the request, not in the caller's batch, so it pointed at the wrong event."""
    events = _many(actors, 15)
    with billing(live_server, actors.service_key) as c:
        c.record(actors.a.id, "scraping_tasks", 5, idempotency_key="reused")
        events[12] = {"user_id": actors.a.id, "metric": "scraping_tasks", "quantity": 9}
        events[12]["idempotency_key"] = "reused"
    with billing(live_server, actors.service_key, max_batch_events=10) as c:
        with pytest.raises(Conflict) as caught:
            c.record_batch(events, idempotency_key="job-12")
    err = caught.value
    assert err.code == "idempotency_key_reused" and err.stored == 10
    assert err.details["index"] == 12
    assert err.message.startswith("Event 12: ") and "Event 12: " in str(err)
    _stored(actors, events[:10])


def test_a_repeated_key_in_a_later_request_says_the_events_index_in_the_batch(actors, live_server):
    """Events 12 and 14 share a key with other values: the index was shifted to the
    caller's (14), but the message said "repeats event 2", counted in the request."""
    events = _many(actors, 15)
    events[12] = {**events[12], "idempotency_key": "twice"}
    events[14] = {**events[14], "idempotency_key": "twice", "metric": events[12]["metric"]}
    with billing(live_server, actors.service_key, max_batch_events=10) as c:
        with pytest.raises(ValidationError) as caught:
            c.record_batch(events, idempotency_key="job-14")
    err = caught.value
    said = "Idempotency key repeats event 12 with a different quantity (13 api_calls)."
    [bad] = err.events
    assert (bad["index"], bad["message"], bad["errors"][0]["message"]) == (14, said, said)
    assert (bad["repeats_index"], bad["differing_fields"]) == (12, ["quantity"])
    assert [(f["field"], f["message"]) for f in err.fields] == [("events.14.idempotency_key", said)]
    assert err.stored == 10
    _stored(actors, events[:10])


def test_an_event_too_large_for_any_request_is_refused_before_anything_is_sent(actors, live_server):
    good = {"user_id": actors.a.id, "metric": "tokens", "quantity": 1}
    forward = Forward()
    with billing(live_server, actors.service_key, forward) as c:
        with pytest.raises(ValueError, match="event 1 is"):
            c.record_batch([good, {**good, "metadata": {"blob": "x" * 1024 * 1024}}, good])
        with pytest.raises(ValueError, match="event 2's key would be job-1#2"):
            c.record_batch(
                [good, {**good, "idempotency_key": "job-1#2"}, good], idempotency_key="job-1"
            )
    assert forward.attempts == 0
    assert _totals(actors.a.id) == (0, 0, 0)


# ------------------------------------------------------------------ the module itself


# What Python 3.9's standard library lacks of 3.11's, as far as the client could meet it.
_NEWER_TYPING = {"Required", "NotRequired", "Self", "LiteralString", "Never", "Unpack",
                 "TypeVarTuple", "ParamSpec", "Concatenate", "TypeAlias", "TypeGuard",
                 "assert_never", "assert_type", "reveal_type", "dataclass_transform"}  # fmt: skip


class _Py39Datetime(datetime.datetime):
    @classmethod
    def fromisoformat(cls, value: str) -> datetime.datetime:  # type: ignore[override]
        if value.endswith("Z"):  # 3.9 and 3.10 read only what isoformat() writes
            raise ValueError(f"Invalid isoformat string: {value!r}")
        return datetime.datetime.fromisoformat(value)


def _zip39(*iterables: Any) -> Any:
    return zip(*iterables, strict=False)  # takes no strict=, as before 3.10


def _load_client_as_on_python39(monkeypatch: pytest.MonkeyPatch) -> Any:
    """client.py executed afresh with 3.9's datetime, typing and zip (no other Python is
    installed here; vermin and `ruff --target-version py39` check the syntax)."""
    old_datetime = types.ModuleType("datetime")
    old_datetime.__dict__.update({k: v for k, v in vars(datetime).items() if k != "UTC"})
    old_datetime.datetime = _Py39Datetime  # type: ignore[attr-defined]
    old_typing = types.ModuleType("typing")
    old_typing.__dict__.update({k: v for k, v in vars(typing).items() if k not in _NEWER_TYPING})
    monkeypatch.setitem(sys.modules, "datetime", old_datetime)
    monkeypatch.setitem(sys.modules, "typing", old_typing)
    spec = importlib.util.spec_from_file_location("client_py39", client_module.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__dict__["zip"] = _zip39
    monkeypatch.setitem(sys.modules, "client_py39", module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "datetime", datetime)
    monkeypatch.setitem(sys.modules, "typing", typing)
    return module


def test_the_client_runs_on_python_39s_standard_library(actors, live_server, monkeypatch):
    old = _load_client_as_on_python39(monkeypatch)
    a = actors.a.id
    with old.BillingClient(live_server.url, actors.service_key, backoff=0.01) as c:
        r = c.record(a, "tokens", 5, idempotency_key="py39")
        assert r.event.occurred_at.tzinfo is not None and r.resets_at > r.event.occurred_at
        out = c.record_batch([{"user_id": a, "metric": "tokens", "quantity": 2}] * 2)
        assert out.recorded == 2 and out.results is not None
        assert c.usage(a, history=True).metric("tokens").used == 9
        assert c.quotas(a).metric("tokens").limit == 100_000
        gone = c.cancel(a, "py39")
        assert gone.used == 4 and gone.canceled_at.tzinfo is not None
    assert _totals(a) == (2, 4, 4)


def test_backoff_is_capped_exponential_with_jitter():
    with BillingClient("http://127.0.0.1:1", "k", backoff=1, max_backoff=3) as c:
        for attempt, (low, high) in {1: (0.5, 1), 2: (1, 2), 3: (1.5, 3), 9: (1.5, 3)}.items():
            delays = {c._delay(attempt) for _ in range(50)}
            assert all(low <= d <= high for d in delays) and len(delays) > 1


def test_the_client_imports_only_the_standard_library_and_httpx():
    tree = ast.parse(Path(client_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"httpx"}


# ------------------------------------------------------------------ construction


def test_a_key_read_from_a_file_works_and_a_bad_one_never_shows_the_secret(actors, live_server):
    key = actors.service_key
    with billing(live_server, key + "\n") as c:  # as `open(path).read()` gives it
        assert c.check(actors.a.id, "tokens").allowed
    for bad in (key[:12] + "\n" + key[12:], key[:12] + " " + key[12:], "  \n"):
        with pytest.raises(ValueError) as caught:
            BillingClient(live_server.url, bad)
        assert key[12:] not in str(caught.value)
        assert "api_key" in str(caught.value)


def test_a_base_url_without_a_scheme_is_refused_at_once():
    with pytest.raises(ValueError, match="base_url must start with http:// or https://"):
        BillingClient("billing.internal:8000", "bk_live_x_y")


# ------------------------------------------------------------------ the deadline


def test_a_deadline_bounds_a_call_and_its_retries(actors, live_server):
    """Without one, 10 retries of a 503 at a 0.2 s backoff would take about 20 s."""
    always = AnswerFirst(503, times=None)
    with billing(
        live_server, actors.service_key, always, retries=10, backoff=0.2, deadline=1.0
    ) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            c.consume(actors.a.id, "api_calls", 1)
        took = time.monotonic() - started
    assert took < 1.5, took
    assert 2 <= always.attempts < 11 and caught.value.attempts == always.attempts
    assert caught.value.status == 503 and caught.value.idempotency_keys
    assert _totals(actors.a.id, "api_calls") == (0, 0, 0)


def test_a_retry_after_past_the_deadline_ends_the_retries_at_once(actors, live_server):
    first = AnswerFirst(503, retry_after="2")
    with billing(live_server, actors.service_key, first, max_backoff=5, deadline=1.0) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            c.check(actors.a.id, "tokens")
    assert first.attempts == 1 and time.monotonic() - started < 0.5


def test_a_deadline_cuts_an_attempts_timeout_to_the_time_left(actors):
    """A server that accepts and never answers: the 5 s read timeout is cut to the
    deadline's 0.5 s, and there is no time left for another attempt."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with BillingClient(url, actors.service_key, timeout=5, deadline=0.5) as c:
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                c.record(actors.a.id, "tokens", 1)
            took = time.monotonic() - started
    assert took < 1.5, took
    assert caught.value.code == "timeout"


def test_a_deadline_within_the_time_lets_the_retry_through(actors, live_server):
    first = AnswerFirst(503)
    with billing(live_server, actors.service_key, first, deadline=5.0) as c:
        r = c.record(actors.a.id, "tokens", 4)
    assert first.attempts == 2 and r.used == 4


@pytest.mark.parametrize("deadline", [0, -1.0])
def test_a_deadline_that_leaves_no_time_is_refused(actors, deadline):
    with pytest.raises(ValueError, match="deadline"):
        BillingClient("http://127.0.0.1:1", actors.service_key, deadline=deadline)


class Trickle:
    """A tiny HTTP server on loopback that answers every request with its status line
    and headers at once, then its body one byte every `gap` seconds: each read gets a
    byte well within any read timeout, so only a bound on the whole call can stop it."""

    def __init__(self, body: bytes, gap: float = 0.1) -> None:
        import socket
        import threading

        self.body, self.gap = body, gap
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed by stop()
                return
            with conn:
                try:
                    self._answer(conn)
                except OSError:  # the client gave up and closed the connection
                    pass

    def _answer(self, conn: Any) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length:")),
            0,
        )  # fmt: skip
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(self.body)
        )
        for byte in self.body:
            if self.stopped.wait(self.gap):
                return
            conn.sendall(bytes([byte]))

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()
        self.thread.join(5)


def test_a_deadline_bounds_an_answer_the_server_trickles(actors):
    """httpx's timeouts bound each read: 0.05 s between bytes never trips the 1 s read
    timeout, and the answer's 175 bytes would take 9 s. The deadline ends the call at
    1 s, as the client's timeout (Unavailable, code "timeout"), without another attempt."""
    answer = json.dumps({
        "allowed": True, "metric": "tokens", "requested": 1, "used": 0, "limit": 100000,
        "unlimited": False, "remaining": 100000, "resets_at": "2030-01-01T00:00:00Z",
        "reason": None,
    }).encode()  # fmt: skip
    assert len(answer) == 175
    server = Trickle(answer, gap=0.05)
    try:
        with BillingClient(server.url, actors.service_key, timeout=5, deadline=1.0) as c:
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                c.check(actors.a.id, "tokens")
            took = time.monotonic() - started
    finally:
        server.stop()
    assert 0.9 <= took < 1.4, took
    assert caught.value.code == "timeout" and caught.value.attempts == 1
