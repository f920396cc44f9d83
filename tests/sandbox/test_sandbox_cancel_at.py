"""Scheduled cancellation at a time (cancel_at), billing_mode, and how they meet the clock and
the portal, all through stripe-python."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import stripe

from stripe_sandbox import SandboxServer

from .helpers import advance, event_types, subscribe

DAY = 86400


def last_update(client: stripe.StripeClient) -> stripe.Event:
    return client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]


def period(sub: stripe.Subscription) -> tuple[int, int]:
    item = sub["items"].data[0]
    return item.current_period_start, item.current_period_end


def test_cancel_at_a_time_sets_it_and_reports_the_change(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    _, sub = subscribe(client, http)
    start, end = period(sub)
    when = start + 10 * DAY
    updated = client.v1.subscriptions.update(sub.id, params={"cancel_at": when})
    assert (updated.cancel_at, updated.cancel_at_period_end) == (when, False)
    assert updated.status == "active"
    assert updated.canceled_at is not None and updated.canceled_at >= start
    assert updated.cancellation_details.reason == "cancellation_requested"

    event = last_update(client)
    assert event.data.object.cancel_at == when
    previous = event.data.previous_attributes.to_dict()
    assert previous == {
        "cancel_at": None,
        "canceled_at": None,
        "cancellation_details": {"reason": None},
    }

    # "" clears it again, and the event says what it was.
    cleared = client.v1.subscriptions.update(sub.id, params={"cancel_at": ""})
    assert (cleared.cancel_at, cleared.canceled_at, cleared.cancel_at_period_end) == (
        None,
        None,
        False,
    )
    assert cleared.cancellation_details.reason is None
    previous = last_update(client).data.previous_attributes
    assert previous.cancel_at == when
    assert previous.canceled_at == updated.canceled_at
    assert previous.cancellation_details.reason == "cancellation_requested"


@pytest.mark.parametrize("enum", ["min_period_end", "max_period_end"])
def test_cancel_at_enums_resolve_to_the_item_period_end(
    client: stripe.StripeClient, http: httpx.Client, enum: str
) -> None:
    _, sub = subscribe(client, http)
    updated = client.v1.subscriptions.update(sub.id, params={"cancel_at": enum})
    # A timestamp from then on (Stripe resolves the enum at once), the flag stays false.
    assert (updated.cancel_at, updated.cancel_at_period_end) == (period(sub)[1], False)


def test_cancel_at_and_cancel_at_period_end_replace_each_other(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    _, sub = subscribe(client, http)
    start, end = period(sub)
    client.v1.subscriptions.update(sub.id, params={"cancel_at": start + 5 * DAY})

    flagged = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    assert (flagged.cancel_at_period_end, flagged.cancel_at) == (True, end)
    previous = last_update(client).data.previous_attributes
    assert previous.cancel_at_period_end is False
    assert previous.cancel_at == start + 5 * DAY

    timed = client.v1.subscriptions.update(sub.id, params={"cancel_at": start + 7 * DAY})
    assert (timed.cancel_at_period_end, timed.cancel_at) == (False, start + 7 * DAY)
    previous = last_update(client).data.previous_attributes
    assert previous.cancel_at_period_end is True
    assert previous.cancel_at == end

    # cancel_at="" undoes the flag form too; sending both (as some apps do) is fine.
    client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    both = client.v1.subscriptions.update(
        sub.id, params={"cancel_at": "", "cancel_at_period_end": False}
    )
    assert (both.cancel_at_period_end, both.cancel_at, both.canceled_at) == (False, None, None)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cancel_at": "PAST"}, "must be an integer Unix timestamp in the future"),
        ({"cancel_at": "NOW"}, "must be an integer Unix timestamp in the future"),
        ({"cancel_at": "tomorrow"}, "Invalid cancel_at"),
        (
            {"cancel_at": "FUTURE", "cancel_at_period_end": True},
            "You may only specify one of these parameters: cancel_at, cancel_at_period_end.",
        ),
        (
            {"cancel_at": "max_period_end", "cancel_at_period_end": True},
            "You may only specify one of these parameters: cancel_at, cancel_at_period_end.",
        ),
    ],
)
def test_invalid_cancel_at_is_refused_and_changes_nothing(
    client: stripe.StripeClient,
    http: httpx.Client,
    sandbox: SandboxServer,
    params: dict[str, Any],
    message: str,
) -> None:
    customer, sub = subscribe(client, http)
    start, end = period(sub)
    now = httpx.get(sandbox.url + "/_sandbox/clock").json()["now"]
    stand_in = {"PAST": start - DAY, "NOW": now - 1, "FUTURE": end - DAY}
    params = {k: stand_in.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    before = event_types(client)

    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.subscriptions.update(sub.id, params=params)
    assert info.value.http_status == 400
    assert info.value.param == "cancel_at"
    assert message in info.value.user_message
    unchanged = client.v1.subscriptions.retrieve(sub.id)
    assert (unchanged.cancel_at, unchanged.cancel_at_period_end, unchanged.canceled_at) == (
        None,
        False,
        None,
    )
    assert event_types(client) == before

    # The same rules on create, which then makes nothing at all.
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": "price_sandbox_basic"}], **params}
        )
    assert info.value.param == "cancel_at"
    assert [s.id for s in client.v1.subscriptions.list(params={"customer": customer.id})] == [
        sub.id
    ]


def test_create_with_cancel_at(client: stripe.StripeClient, http: httpx.Client) -> None:
    customer, first = subscribe(client, http)
    start, end = period(first)
    at = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": "price_sandbox_basic"}],
            "cancel_at": start + 3 * DAY,
        }
    )
    assert (at.status, at.cancel_at, at.cancel_at_period_end) == ("active", start + 3 * DAY, False)
    assert at.cancellation_details.reason == "cancellation_requested"
    created = client.v1.events.list(params={"type": "customer.subscription.created"}).data[0]
    assert created.data.object.cancel_at == start + 3 * DAY

    enum = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": "price_sandbox_enterprise"}],
            "cancel_at": "max_period_end",
        }
    )
    assert enum.cancel_at == period(enum)[1]


def test_clock_cancels_at_a_mid_period_cancel_at_without_renewing(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    _, sub = subscribe(client, http)
    start, end = period(sub)
    when = start + 12 * DAY
    client.v1.subscriptions.update(sub.id, params={"cancel_at": when})

    nothing_yet = advance(sandbox, to=when - 60)
    assert nothing_yet["events"] == []
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"

    result = advance(sandbox, months=2)
    assert [e["type"] for e in result["events"]] == ["customer.subscription.deleted"]
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at, ended.cancel_at) == ("canceled", when, when)
    assert ended.cancel_at_period_end is False
    deleted = client.v1.events.list(params={"type": "customer.subscription.deleted"}).data[0]
    assert deleted.created == when
    assert deleted.data.object.ended_at == when
    # Only the first invoice: no renewal for the period after the cancellation.
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 1


def test_clock_renews_until_the_period_that_holds_cancel_at(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    _, sub = subscribe(client, http)
    start, end = period(sub)
    when = end + 5 * DAY  # inside the second period
    client.v1.subscriptions.update(sub.id, params={"cancel_at": when})

    result = advance(sandbox, months=3)
    types = [e["type"] for e in result["events"]]
    assert types[0] == "customer.subscription.updated"  # the one renewal
    assert types[-1] == "customer.subscription.deleted"
    assert types.count("customer.subscription.updated") == 1
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at) == ("canceled", when)
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 2


def test_billing_mode_follows_the_api_version_and_can_be_chosen(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    # The sandbox reports a Clover-or-later version: new subscriptions are flexible.
    assert stripe.api_version >= "2025-09-30"
    customer, default = subscribe(client, http)
    assert default.billing_mode.type == "flexible"
    assert default.billing_mode.flexible.proration_discounts == "included"
    assert default.billing_mode.updated_at == default.created
    by_api = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": "price_sandbox_basic"}]}
    )
    assert by_api.billing_mode.type == "flexible"

    _, classic = subscribe(client, http, billing_mode="classic", email="bob@example.com")
    assert classic.billing_mode.to_dict() == {"flexible": None, "type": "classic"}
    classic_by_api = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": "price_sandbox_enterprise"}],
            "billing_mode": {"type": "classic"},
        }
    )
    assert classic_by_api.billing_mode.type == "classic"
    itemized = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": "price_sandbox_pro"}],
            "billing_mode": {"type": "flexible", "flexible": {"proration_discounts": "itemized"}},
        }
    )
    assert itemized.billing_mode.flexible.proration_discounts == "itemized"

    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": "price_sandbox_basic"}],
                "billing_mode": {"type": "fancy"},
            }
        )
    assert info.value.param == "billing_mode[type]"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": customer.id,
                "line_items": [{"price": "price_sandbox_pro"}],
                "subscription_data": {"billing_mode": {"type": "fancy"}},
            }
        )
    assert info.value.param == "subscription_data[billing_mode][type]"


def test_portal_shows_and_undoes_a_cancel_at(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    customer, sub = subscribe(client, http)
    when = period(sub)[0] + 9 * DAY
    client.v1.subscriptions.update(sub.id, params={"cancel_at": when})
    portal = client.v1.billing_portal.sessions.create(params={"customer": customer.id})
    page = http.get(portal.url).text
    assert "Cancels on" in page and 'id="resume"' in page
    assert 'id="cancel-at-period-end"' not in page

    response = http.post(portal.url + "/resume", data={"subscription": sub.id})
    assert response.headers["location"].endswith("notice=resumed")
    resumed = client.v1.subscriptions.retrieve(sub.id)
    assert (resumed.cancel_at, resumed.cancel_at_period_end, resumed.canceled_at) == (
        None,
        False,
        None,
    )
    assert last_update(client).data.previous_attributes.cancel_at == when
    assert "Renews on" in http.get(portal.url).text
