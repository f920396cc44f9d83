"""The sandbox's pages in the app's words: dates as the app writes them ("Jan 7, 2027"),
and a refused card's message followed by what to do next, as Stripe Checkout does."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import stripe

from billing_app.states import format as fmt

from .helpers import new_checkout, new_customer, pay, subscribe
from .test_sandbox_portal import open_portal


def test_the_portal_writes_dates_as_the_app_does(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    customer, sub = subscribe(client, http)
    page = http.get(open_portal(client, customer.id).url).text
    end = sub["items"]["data"][0]["current_period_end"]
    app_date = fmt.date(datetime.fromtimestamp(end, UTC))
    assert re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}, \d{4}", app_date)
    assert f'<b id="period-end">{app_date}</b>' in page
    created = client.v1.invoices.list(params={"customer": customer.id}).data[0].created
    assert f"<td>{fmt.date(datetime.fromtimestamp(created, UTC))}</td>" in page


def test_a_refused_card_says_what_to_do_next_after_stripes_words(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    session = new_checkout(client, new_customer(client).id)
    declined = pay(http, session.url, "4000 0000 0000 0002").text
    assert "Your card was declined. Try another card." in declined
    funds = pay(http, session.url, "4000 0000 0000 9995").text
    assert "Your card has insufficient funds. Try another card." in funds
    wrong = pay(http, session.url, "4242 4242 4242 4241").text
    assert "Your card number is incorrect. Check the number, or try another card." in wrong

    # The portal's card form, after a redirect that carries the message.
    customer, _ = subscribe(client, http, email="bea@example.com")
    portal = open_portal(client, customer.id)
    refused = http.post(portal.url + "/card", data={"card_number": "4000000000000002"})
    assert refused.status_code == 303
    assert "Your card was declined. Try another card." in http.get(refused.headers["location"]).text
