"""A cancellation scheduled with `cancel_at` alone, as Stripe's customer portal does it on
flexible billing mode (`cancel_at_period_end` stays false; stripe-node#2470), or an
explicit `cancel_at` date before the period's end: delivered through the signed webhook
route, then read back by every reader (the row, the DTO, the dashboard's and the admin's
view models, the usage periods) and undone by resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from billing_app.models import Subscription
from billing_app.plans import get_catalog
from billing_app.services import admin, billing, metering
from billing_app.services.subscriptions import get_subscription_dto
from billing_app.states import format as fmt
from billing_app.states import views
from stripe_sandbox import BackgroundServer
from tests.conftest import _clear_caches
from tests.factories import make_user

T0 = 1_764_000_000  # events' `created`
# The subscription's period: 2026-11-10 08:00 to 2026-12-10 08:00 UTC.
START, END = datetime(2026, 11, 10, 8, tzinfo=UTC), datetime(2026, 12, 10, 8, tzinfo=UTC)
PERIOD = (int(START.timestamp()), int(END.timestamp()))
EARLY = datetime(2026, 11, 20, 8, tzinfo=UTC)  # an API-set cancel_at before the period's end


def _user(session: Session, customer: str = "cus_portal") -> int:
    return make_user(session, email=f"{customer}@example.com", customer=customer).id


class Subs:
    """One subscription's events, each newer than the last, sent through the webhook route."""

    def __init__(self, deliver: Any, payloads: Any, uid: int, sub_id: str = "sub_portal"):
        self.deliver, self.payloads = deliver, payloads
        self.base = dict(sub_id=sub_id, customer="cus_portal", user_id=uid, period=PERIOD)
        self.created = T0

    def obj(self, **changes: Any) -> dict[str, Any]:
        return self.payloads.subscription(**self.base, **changes)

    def send(self, event_type: str = "customer.subscription.updated", **changes: Any) -> None:
        self.created += 10
        evt = self.payloads.event(event_type, self.obj(**changes), self.created)
        r = self.deliver.send(evt)
        assert r.status_code == 200 and r.json() == {"received": True}, r.text


def _row(session: Session) -> Subscription:
    session.expire_all()  # what the server wrote
    row = session.exec(select(Subscription)).one()
    session.rollback()
    return row


def _admin_row(session: Session, uid: int) -> Any:
    page = admin.list_users(session, admin.UserFilters(q="cus_portal"))
    session.rollback()  # its rows' reads after its own rollback began another transaction
    (row,) = [r for r in page.items if r.id == uid]
    return row


def _dashboard(session: Session, uid: int) -> views.SubscriptionView:
    return views.subscription_view(get_subscription_dto(session, uid), get_catalog())


@pytest.fixture
def subs(session: Session, deliver: Any, payloads: Any) -> Subs:
    subs = Subs(deliver, payloads, _user(session))
    subs.send("customer.subscription.created")
    return subs


def test_a_portal_cancel_is_stored_shown_as_ending_and_cleared(session, subs):
    uid = subs.base["user_id"]
    assert _dashboard(session, uid).renews_text == f"Renews on {fmt.date(END)}"

    subs.send(cancel_at=PERIOD[1])  # the portal's cancel: the flag stays false
    row = _row(session)
    assert (row.cancel_at, row.cancel_at_period_end) == (END, False)
    dto = get_subscription_dto(session, uid)
    assert (dto.cancel_at, dto.ends_at, dto.effective_plan) == (END, END, "pro")
    view = _dashboard(session, uid)
    assert (view.renews_text, view.cancels) == (f"Cancels on {fmt.date(END)}", True)
    listed = _admin_row(session, uid)
    assert (listed.status, listed.ends_at) == ("active", END)
    assert views.admin_user_view(listed).ends_text == f"Cancels on {fmt.date(END)}"
    detail = admin.user_detail(session, uid)
    assert detail.subscription is not None and detail.subscription["ends_at"] == END

    subs.send(cancel_at=None)  # resumed in the portal: a later update with cancel_at null
    assert _row(session).cancel_at is None
    assert get_subscription_dto(session, uid).ends_at is None
    assert _dashboard(session, uid).renews_text == f"Renews on {fmt.date(END)}"
    assert _admin_row(session, uid).ends_at is None
    assert views.admin_user_view(_admin_row(session, uid)).ends_text == ""


def test_an_explicit_cancel_at_before_the_period_end_is_the_end(session, subs):
    uid = subs.base["user_id"]
    subs.send(cancel_at=int(EARLY.timestamp()))
    assert _row(session).cancel_at == EARLY
    assert get_subscription_dto(session, uid).ends_at == EARLY
    assert _dashboard(session, uid).renews_text == f"Cancels on {fmt.date(EARLY)}"
    assert _admin_row(session, uid).ends_at == EARLY
    # The flag as well (cancel_at then set to the period's end, as Stripe does) reads the same.
    subs.send(cancel_at_period_end=True)
    assert get_subscription_dto(session, uid).ends_at == END


def test_usage_after_the_cancel_date_counts_in_the_calendar_month(
    session, deliver, payloads, frozen_clock, monkeypatch
):
    """With periods that follow the billing period, an ending plan's usage after its
    period (until the deletion's webhook) goes to the calendar month, as with the flag:
    never to the next billing period, which will not come."""
    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
    _clear_caches()
    frozen_clock.set(datetime(2026, 11, 15, tzinfo=UTC))
    subs = Subs(deliver, payloads, _user(session))
    subs.send("customer.subscription.created")
    uid = subs.base["user_id"]

    def resets_at(at: datetime) -> datetime:
        frozen_clock.set(at)
        return metering.check(session, uid, "tokens", 1).resets_at

    after_end = datetime(2026, 12, 10, 9, tzinfo=UTC)
    # Renewing: the gap after the period's end counts in the next billing period.
    assert resets_at(after_end) == datetime(2027, 1, 10, 8, tzinfo=UTC)
    subs.send(cancel_at=PERIOD[1])
    assert resets_at(after_end) == datetime(2027, 1, 1, tzinfo=UTC)
    assert resets_at(datetime(2026, 12, 9, tzinfo=UTC)) == END  # before it: unchanged

    # Ending before the period's end: its usage keeps counting in the period to its end
    # (a fresh calendar month's counter would hand out a fresh quota), then the month.
    subs.send(cancel_at=int(EARLY.timestamp()))
    assert resets_at(datetime(2026, 11, 19, tzinfo=UTC)) == END
    assert resets_at(datetime(2026, 11, 21, tzinfo=UTC)) == END
    assert resets_at(after_end) == datetime(2027, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- resume over real HTTP


class Recorder:
    """A Stripe API stand-in over real HTTP: records each subscription update stripe-python
    sends (form body, idempotency key) and answers with the subscription Stripe would."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.answer: dict[str, Any] = {}

    async def update(self, request: Request) -> JSONResponse:
        body = (await request.body()).decode()
        form = dict(parse_qsl(body, keep_blank_values=True))
        self.requests.append((request.url.path, form, request.headers.get("idempotency-key")))
        return JSONResponse(json.loads(json.dumps(self.answer)))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, app_settings: Any) -> Iterator[Recorder]:
    rec = Recorder()
    app = Starlette(routes=[Route("/v1/subscriptions/{sub_id}", rec.update, methods=["POST"])])
    with BackgroundServer(app) as server:
        monkeypatch.setenv("STRIPE_API_BASE", server.url)
        _clear_caches()
        yield rec


def test_resume_after_a_portal_cancel_unsets_cancel_at(session, subs, recorder):
    uid, sub_id = subs.base["user_id"], subs.base["sub_id"]
    subs.send(cancel_at=PERIOD[1])
    # Already ending at the period's end: canceling again asks Stripe nothing.
    assert billing.cancel_subscription(session, uid).ends_at == END
    assert recorder.requests == []

    recorder.answer = subs.obj(cancel_at=None)
    dto = billing.resume_subscription(session, uid)
    ((path, form, key),) = recorder.requests
    assert (path, form) == (f"/v1/subscriptions/{sub_id}", {"cancel_at": ""})
    assert key is not None and key.startswith(f"cancel_at:{sub_id}:")
    assert (dto.cancel_at, dto.ends_at) == (None, None)
    assert _row(session).cancel_at is None
    assert _dashboard(session, uid).renews_text == f"Renews on {fmt.date(END)}"


def test_resume_after_a_cancel_at_period_end_still_sends_the_flag(session, subs, recorder):
    uid, sub_id = subs.base["user_id"], subs.base["sub_id"]
    subs.send(cancel_at_period_end=True)
    recorder.answer = subs.obj()
    dto = billing.resume_subscription(session, uid)
    ((path, form, key),) = recorder.requests
    assert (path, form) == (f"/v1/subscriptions/{sub_id}", {"cancel_at_period_end": "false"})
    assert key is not None and key.startswith(f"cancel_at_end:{sub_id}:")
    assert (dto.cancel_at_period_end, dto.ends_at) == (False, None)
