"""The app's clock and Stripe's disagree. A state the app read from Stripe's API (a plan
change's answer, `stripe sync`) is ordered against webhooks by Stripe's clock, so a skew
of either sign neither drops a later event nor lets an older one overwrite the answer.
All over real HTTP: the sandbox, its signed deliveries, the app's webhook route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_app import clock
from billing_app.gateway import get_gateway
from billing_app.services import billing, stripe_sync
from billing_app.services.invoices import list_invoices
from billing_app.services.subscriptions import get_subscription_dto
from tests.stripe.conftest import WEBHOOK_PATH
from tests.stripe.test_end_to_end import (
    DECLINING_CARD,
    GOOD_CARD,
    PRO,
    advance,
    customer_of,
    flush,
    limits,
    set_card,
    subscribe,
)

SKEW = timedelta(minutes=2)


def _skew(sandbox, by: timedelta) -> None:
    """The app's clock `by` ahead of (negative: behind) the sandbox's, i.e. Stripe's."""
    state = sandbox.state
    clock.set_clock(lambda: datetime.fromtimestamp(state.now(), UTC) + by)


def _events_since(sandbox, seen: set[str]) -> list[dict[str, Any]]:
    with sandbox.state.lock:
        return [
            sandbox.state.event_view(e)
            for e in sandbox.state.events.values()
            if e["id"] not in seen and e["type"].startswith("customer.subscription.")
        ]


def test_a_cancel_within_the_skew_after_a_plan_change_is_applied(session, sandbox, http):
    """App clock ahead: the plan change's answer must not be stamped in Stripe's future,
    where the portal's cancel a few seconds later would look stale and be dropped."""
    user = subscribe(session, http, sandbox, "basic")
    _skew(sandbox, SKEW)
    assert billing.change_plan(session, user.id, "pro").plan == "pro"
    sandbox.state.clock.advance_to(sandbox.state.now() + 5)
    sub = next(iter(sandbox.state.subscriptions.values()))
    get_gateway().set_cancel_at_period_end(subscription_id=sub["id"], cancel=True, version="x")
    flush(http, sandbox)
    dto = get_subscription_dto(session, user.id)
    assert (dto.plan, dto.cancel_at_period_end) == ("pro", True)


def test_an_older_event_delivered_after_a_plan_change_does_not_undo_it(
    session, sandbox, http, receiver, deliver
):
    """App clock behind: the portal's cancel (its webhook late) happened before the app's
    plan change, whose answer already undid it; the late event must not win over it."""
    user = subscribe(session, http, sandbox, "basic")
    state = sandbox.state
    seen = {e["id"] for e in _events_since(sandbox, set())}
    state.clock.advance_to(state.now() + 10)
    state.set_webhook_endpoint(None)  # the portal's webhook is held back
    try:
        sub = next(iter(state.subscriptions.values()))
        get_gateway().set_cancel_at_period_end(
            subscription_id=sub["id"], cancel=True, version="portal"
        )
        (late,) = _events_since(sandbox, seen)
        state.clock.advance_to(state.now() + 30)
        _skew(sandbox, -SKEW)
        dto = billing.change_plan(session, user.id, "pro")
        assert (dto.plan, dto.cancel_at_period_end) == ("pro", False)
    finally:
        state.set_webhook_endpoint(receiver.url + WEBHOOK_PATH)
    assert deliver.send(late).status_code == 200
    dto = get_subscription_dto(session, user.id)
    assert (dto.plan, dto.cancel_at_period_end) == ("pro", False)
    assert limits(session, user.id) == PRO


@pytest.mark.parametrize("by", [SKEW, -SKEW], ids=["app-ahead", "app-behind"])
def test_a_payment_after_a_sync_is_applied_whatever_the_apps_clock(session, sandbox, http, by):
    """`stripe sync` while an invoice is open; the card is fixed seconds later and the
    invoice paid: its webhooks (invoice and subscription) must apply."""
    user = subscribe(session, http, sandbox, "pro")
    cus = customer_of(session, user.id)
    set_card(http, sandbox, cus, DECLINING_CARD)
    advance(http, sandbox, days=31)  # the renewal charge fails
    assert get_subscription_dto(session, user.id).status == "past_due"
    _skew(sandbox, by)
    report = stripe_sync.sync_from_stripe(session, user.id)
    assert report.errors == ()
    sandbox.state.clock.advance_to(sandbox.state.now() + 5)
    set_card(http, sandbox, cus, GOOD_CARD)  # retries the open invoice: paid
    assert {i.status for i in list_invoices(session, user_id=user.id).items} == {"paid"}
    dto = get_subscription_dto(session, user.id)
    assert (dto.status, dto.past_due_since) == ("active", None)
