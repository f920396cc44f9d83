"""The billing portal page and its actions."""

from __future__ import annotations

import re

import httpx
import stripe

from stripe_sandbox import SandboxServer

from .helpers import advance, event_types, subscribe


def open_portal(client: stripe.StripeClient, customer: str) -> stripe.billing_portal.Session:
    return client.v1.billing_portal.sessions.create(
        params={"customer": customer, "return_url": "http://app.test/account"}
    )


def post(http: httpx.Client, url: str, **form: str) -> httpx.Response:
    response = http.post(url, data=form)
    assert response.status_code == 303, response.text
    return response


def test_portal_session_and_page(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_pro")
    portal = open_portal(client, customer.id)
    assert portal.object == "billing_portal.session"
    assert portal.url == f"{sandbox.url}/portal/{portal.id}"
    assert portal.customer == customer.id
    assert portal.return_url == "http://app.test/account"

    text = http.get(portal.url).text
    assert re.search(r'id="current-plan">\s*Pro\s*<', text)
    assert re.search(r'id="subscription-status">\s*active\s*<', text)
    assert "Renews on" in text
    assert "Visa •••• 4242" in text
    for element_id in (
        "switch-price_sandbox_basic",
        "switch-price_sandbox_enterprise",
        "cancel-at-period-end",
        "cancel-now",
        "card-number",
        "update-card",
        "return-link",
    ):
        assert f'id="{element_id}"' in text, element_id
    assert 'id="switch-price_sandbox_pro"' not in text  # the current plan
    assert 'href="http://app.test/account">← Return to Billing App</a>' in text
    invoice = client.v1.invoices.list(params={"customer": customer.id}).data[0]
    assert invoice.hosted_invoice_url in text


def test_plan_switch_updates_the_one_subscription_with_prorations(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    customer, sub = subscribe(client, http, "price_sandbox_basic")
    portal = open_portal(client, customer.id)
    response = post(
        http, portal.url + "/switch", subscription=sub.id, price="price_sandbox_enterprise"
    )
    assert response.headers["location"] == f"/portal/{portal.id}?notice=switched"
    assert "Your plan was changed." in http.get(response.headers["location"]).text

    subs = client.v1.subscriptions.list(params={"customer": customer.id, "status": "all"}).data
    assert [s.id for s in subs] == [sub.id]  # never a second subscription
    updated = subs[0]
    assert updated["items"].data[0].price.id == "price_sandbox_enterprise"
    assert updated["items"].data[0].id == sub["items"].data[0].id
    assert updated["items"].data[0].current_period_end == sub["items"].data[0].current_period_end

    event = client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]
    assert event.data.object["items"].data[0].price.id == "price_sandbox_enterprise"
    previous = event.data.previous_attributes
    assert previous["items"].data[0].price.id == "price_sandbox_basic"

    # The portal invoices the prorated difference right away (always_invoice).
    proration = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    assert proration.billing_reason == "subscription_update"
    assert proration.status == "paid"
    amounts = sorted(line.amount for line in proration.lines.data)
    assert amounts[0] < 0 < amounts[1]  # credit for Basic, charge for Enterprise
    assert abs(amounts[0]) <= 1900 and amounts[1] <= 49900
    assert proration.amount_paid == amounts[0] + amounts[1]
    assert all(line.parent.invoice_item_details.proration for line in proration.lines.data)


def test_classic_cancel_at_period_end_resume_and_cancel_now(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    customer, sub = subscribe(client, http, billing_mode="classic")
    portal = open_portal(client, customer.id)
    post(http, portal.url + "/cancel", subscription=sub.id, when="period_end")
    scheduled = client.v1.subscriptions.retrieve(sub.id)
    assert scheduled.cancel_at_period_end is True
    assert scheduled.cancel_at == sub["items"].data[0].current_period_end
    assert scheduled.status == "active"
    page = http.get(portal.url).text
    assert "Cancels on" in page and 'id="resume"' in page

    post(http, portal.url + "/resume", subscription=sub.id)
    resumed = client.v1.subscriptions.retrieve(sub.id)
    assert (resumed.cancel_at_period_end, resumed.cancel_at) == (False, None)
    updates = client.v1.events.list(params={"type": "customer.subscription.updated"}).data
    assert updates[0].data.previous_attributes.cancel_at_period_end is True
    assert updates[1].data.previous_attributes.cancel_at_period_end is False

    post(http, portal.url + "/cancel", subscription=sub.id, when="now")
    canceled = client.v1.subscriptions.retrieve(sub.id)
    assert canceled.status == "canceled"
    assert canceled.ended_at is not None and canceled.canceled_at is not None
    assert event_types(client)[-1] == "customer.subscription.deleted"
    assert 'id="no-subscription"' in http.get(portal.url).text


def test_flexible_cancel_sets_cancel_at_and_resume_clears_it(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    # Today's Stripe portal: a flexible subscription gets cancel_at = period end, and
    # cancel_at_period_end stays false.
    customer, sub = subscribe(client, http)  # flexible: the default for new subscriptions
    assert sub.billing_mode.type == "flexible"
    end = sub["items"].data[0].current_period_end
    portal = open_portal(client, customer.id)
    response = post(http, portal.url + "/cancel", subscription=sub.id, when="period_end")
    assert response.headers["location"].endswith("notice=scheduled")
    scheduled = client.v1.subscriptions.retrieve(sub.id)
    assert (scheduled.cancel_at, scheduled.cancel_at_period_end) == (end, False)
    assert scheduled.status == "active" and scheduled.canceled_at is not None
    assert scheduled.cancellation_details.reason == "cancellation_requested"
    update = client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]
    assert update.data.previous_attributes.to_dict() == {
        "cancel_at": None,
        "canceled_at": None,
        "cancellation_details": {"reason": None},
    }
    page = http.get(portal.url).text
    assert "Cancels on" in page and 'id="resume"' in page

    post(http, portal.url + "/resume", subscription=sub.id)
    resumed = client.v1.subscriptions.retrieve(sub.id)
    assert (resumed.cancel_at, resumed.cancel_at_period_end, resumed.canceled_at) == (
        None,
        False,
        None,
    )
    update = client.v1.events.list(params={"type": "customer.subscription.updated"}).data[0]
    assert update.data.previous_attributes.cancel_at == end

    # Scheduled again, the clock ends it at the period end with no renewal.
    post(http, portal.url + "/cancel", subscription=sub.id, when="period_end")
    result = advance(sandbox, months=2)
    assert [e["type"] for e in result["events"]] == ["customer.subscription.deleted"]
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at) == ("canceled", end)


def test_fixing_the_card_pays_the_open_invoice(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    customer, sub = subscribe(client, http)
    portal = open_portal(client, customer.id)
    post(http, portal.url + "/card", card_number="4000 0000 0000 0341")  # saved; charges fail
    assert "Visa •••• 0341" in http.get(portal.url).text
    advance(sandbox, months=1)
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    assert "Payment failed" in http.get(portal.url).text

    declined = http.post(portal.url + "/card", data={"card_number": "4000000000000002"})
    assert "error=" in declined.headers["location"]
    assert "Your card was declined." in http.get(declined.headers["location"]).text

    response = post(http, portal.url + "/card", card_number="4242 4242 4242 4242")
    assert response.headers["location"].endswith("notice=card_updated_paid")
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    open_invoices = client.v1.invoices.list(params={"customer": customer.id, "status": "open"})
    assert open_invoices.data == []
    tail = event_types(client)[-3:]
    assert tail == ["invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated"]
