"""Hosted Checkout: the page, paying with test cards, and what it leaves behind."""

from __future__ import annotations

import re

import httpx
import stripe

from stripe_sandbox import SandboxConfig, SandboxServer

from .helpers import event_types, make_client, new_checkout, new_customer, pay


def test_checkout_session_shape(client: stripe.StripeClient, sandbox: SandboxServer) -> None:
    cus = new_customer(client)
    session = new_checkout(client, cus.id)
    assert session.object == "checkout.session"
    assert session.id.startswith("cs_test_")
    assert session.url == f"{sandbox.url}/checkout/{session.id}"
    assert (session.mode, session.status, session.payment_status) == (
        "subscription",
        "open",
        "unpaid",
    )
    assert session.customer == cus.id
    assert session.client_reference_id == "user-7"
    assert session.metadata["user_id"] == "7"
    assert (session.amount_total, session.currency) == (9900, "usd")
    assert session.subscription is None
    items = client.v1.checkout.sessions.line_items.list(session.id).data
    assert [(i.price.id, i.quantity) for i in items] == [("price_sandbox_pro", 1)]


def test_checkout_page_shows_plan_price_email_and_form(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    session = new_checkout(client, new_customer(client, "ada@example.com").id)
    page = http.get(session.url)
    assert page.status_code == 200
    text = page.text
    assert "Subscribe to Pro" in text
    assert '<div class="price" id="plan-price">$99.00 / month</div>' in text
    # The price says its period once: it was followed by "per month, renews automatically".
    assert text.count("/ month") == 1 and "per month" not in text
    assert "Sandbox Inc." in text  # the merchant when none is configured
    assert "ada@example.com" in text
    assert "Test card: <b>4242 4242 4242 4242</b>" in text
    for element_id in ("card-number", "card-expiry", "card-cvc", "card-name", "pay"):
        assert f'id="{element_id}"' in text
    assert re.search(r'<button[^>]*id="pay"[^>]*>Pay</button>', text)
    assert '<a class="back" id="back" href="http://app.test/billing">← Back</a>' in text
    # An inline icon: a browser would otherwise ask for /favicon.ico, which is a 404.
    assert re.search(r'<link rel="icon" href="data:image/svg\+xml,[^"]+">', text)


def test_checkout_names_the_configured_business() -> None:
    """As a Stripe account's business profile names the merchant on real Checkout."""
    with SandboxServer(SandboxConfig(business_name="Acme AI")) as sandbox:
        client = make_client(sandbox)
        session = new_checkout(client, new_customer(client).id)
        text = httpx.get(session.url, timeout=10).text
    assert '<span class="logo">A</span>\n      Acme AI</div>' in text
    assert "<title>Subscribe to Pro · Acme AI</title>" in text
    assert "Sandbox Inc." not in text


def test_paying_with_4242_creates_an_active_subscription_and_paid_invoice(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    cus = new_customer(client)
    session = new_checkout(client, cus.id)
    response = pay(http, session.url, "4242 4242 4242 4242")

    assert response.status_code == 303
    assert response.headers["location"] == (
        f"http://app.test/billing/success?session_id={session.id}"
    )

    done = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["subscription"]})
    assert (done.status, done.payment_status) == ("complete", "paid")
    sub = done.subscription  # expanded
    assert sub.object == "subscription"
    assert sub.status == "active"
    assert sub.customer == cus.id
    assert sub.metadata.to_dict() == {"user_id": "7"}  # from subscription_data[metadata]
    item = sub["items"].data[0]
    assert item.price.id == "price_sandbox_pro"
    assert item.current_period_start == sub.start_date
    # one calendar month later (28 to 31 days)
    assert 28 * 86400 <= item.current_period_end - item.current_period_start <= 31 * 86400
    assert "current_period_end" not in sub  # moved to the items in the current API

    invoices = client.v1.invoices.list(params={"subscription": sub.id}).data
    assert len(invoices) == 1
    invoice = invoices[0]
    assert invoice.id == sub.latest_invoice == done.invoice
    assert invoice.status == "paid"
    assert (invoice.amount_due, invoice.amount_paid, invoice.currency) == (9900, 9900, "usd")
    assert re.fullmatch(r"SBX-\d{4}", invoice.number)
    assert invoice.billing_reason == "subscription_create"
    assert invoice.parent.type == "subscription_details"
    assert invoice.parent.subscription_details.subscription == sub.id
    assert invoice.parent.subscription_details.metadata.to_dict() == {"user_id": "7"}
    line = invoice.lines.data[0]
    assert line.pricing.price_details.price == "price_sandbox_pro"
    assert line.pricing.price_details.product == "prod_sandbox_pro"
    assert (line.period.start, line.period.end) == (
        item.current_period_start,
        item.current_period_end,
    )
    assert invoice.hosted_invoice_url.endswith(f"/invoice/{invoice.id}")
    assert invoice.invoice_pdf.endswith(f"/invoice/{invoice.id}/pdf")

    customer = client.v1.customers.retrieve(cus.id)
    pm = client.v1.payment_methods.retrieve(customer.invoice_settings.default_payment_method)
    assert (pm.card.brand, pm.card.last4) == ("visa", "4242")

    assert event_types(client) == [
        "customer.created",
        "payment_method.attached",
        "customer.updated",
        "customer.updated",  # its currency, set by its first subscription
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ]
    completed = client.v1.events.list(params={"type": "checkout.session.completed"}).data[0]
    obj = completed.data.object
    assert (obj.customer, obj.subscription, obj.client_reference_id) == (cus.id, sub.id, "user-7")
    assert (obj.mode, obj.status, obj.payment_status) == ("subscription", "complete", "paid")
    assert obj.metadata.to_dict() == {"user_id": "7"}
    # snapshots are taken when each event happens
    snapshots = {
        e.type: e.data.object.status
        for e in client.v1.events.list(params={"type": "invoice.*"}).data
    }
    assert snapshots == {
        "invoice.created": "draft",
        "invoice.finalized": "open",
        "invoice.paid": "paid",
        "invoice.payment_succeeded": "paid",
    }


def test_declined_cards_rerender_the_form_and_create_nothing(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    cus = new_customer(client)
    session = new_checkout(client, cus.id)
    for card in ("4000 0000 0000 0341", "4000000000000002"):
        response = pay(http, session.url, card)
        assert response.status_code == 200
        assert "Your card was declined." in response.text
        assert 'id="card-number"' in response.text
    bad = pay(http, session.url, "4242 4242 4242 4241")
    assert "Your card number is incorrect." in bad.text
    assert client.v1.subscriptions.list(params={"status": "all"}).data == []
    assert client.v1.invoices.list().data == []
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert event_types(client) == ["customer.created"]
    # the same session can still be paid afterwards
    assert pay(http, session.url, "4242424242424242").status_code == 303


def test_completed_and_expired_sessions_show_a_message(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    cus = new_customer(client)
    session = new_checkout(client, cus.id)
    pay(http, session.url)
    page = http.get(session.url)
    assert "already complete" in page.text
    assert 'id="pay"' not in page.text
    assert pay(http, session.url).status_code == 200  # paying twice does nothing
    assert len(client.v1.subscriptions.list().data) == 1

    other = new_checkout(client, cus.id)
    expired = client.v1.checkout.sessions.expire(other.id)
    assert expired.status == "expired"
    assert "has expired" in http.get(other.url).text
    assert "checkout.session.expired" in event_types(client)


def test_checkout_without_customer_creates_one_from_the_email(
    client: stripe.StripeClient, http: httpx.Client
) -> None:
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": "price_sandbox_basic"}],
            "success_url": "http://app.test/ok",
        }
    )
    assert 'id="email"' in http.get(session.url).text
    response = http.post(
        session.url, data={"email": "new@example.com", "card_number": "4242424242424242"}
    )
    assert response.status_code == 303
    done = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["customer"]})
    assert done.customer.email == "new@example.com"
    assert done.customer_details.email == "new@example.com"


def test_hosted_invoice_page_and_pdf(client: stripe.StripeClient, http: httpx.Client) -> None:
    cus = new_customer(client)
    pay(http, new_checkout(client, cus.id).url)
    invoice = client.v1.invoices.list(params={"customer": cus.id}).data[0]

    page = httpx.get(invoice.hosted_invoice_url)
    assert page.status_code == 200
    assert f"Invoice {invoice.number}" in page.text
    assert "$99.00" in page.text
    assert 'id="download-pdf"' in page.text

    pdf = httpx.get(invoice.invoice_pdf)
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    data = pdf.content
    assert_valid_pdf(data)
    assert f"(Invoice {invoice.number})".encode() in data
    assert b"($99.00)" in data


def test_the_pdf_is_dated_as_its_invoice_was_issued(
    client: stripe.StripeClient, http: httpx.Client, sandbox: SandboxServer
) -> None:
    """Stripe dates an invoice's PDF by its issue (its finalization), written as the app
    writes dates; a draft created the day before it was finalized (a renewal's draft, an
    hour earlier across midnight) is dated the day it was finalized."""
    from datetime import UTC, datetime

    from stripe_sandbox.pdf import invoice_pdf

    cus = new_customer(client)
    pay(http, new_checkout(client, cus.id).url)
    invoice = client.v1.invoices.list(params={"customer": cus.id}).data[0]
    day = datetime.fromtimestamp(invoice.status_transitions.finalized_at, UTC)
    assert (
        f"(Date of issue: {day:%b} {day.day}, {day.year})".encode()
        in httpx.get(invoice.invoice_pdf).content
    )
    inv = dict(sandbox.state.invoices[invoice.id])
    finalized = int(datetime(2027, 1, 1, 0, 30, tzinfo=UTC).timestamp())
    inv.update(
        created=finalized - 3600,
        effective_at=finalized,
        status_transitions={**inv["status_transitions"], "finalized_at": finalized},
    )
    data = invoice_pdf(inv, "Sandbox")
    assert b"(Date of issue: Jan 1, 2027)" in data and b"Dec 31, 2026" not in data


def assert_valid_pdf(data: bytes) -> None:
    """Header, trailer, a cross-reference table whose offsets point at the objects, and a
    content stream whose declared /Length is right: what a PDF reader relies on."""
    assert data.startswith(b"%PDF-1.")
    assert data.rstrip().endswith(b"%%EOF")
    xref_at = int(data.rsplit(b"startxref", 1)[1].split()[0])
    assert data[xref_at:].startswith(b"xref")
    header = data[xref_at:].split(b"\n")
    count = int(header[1].split()[1])
    entries = header[3 : 3 + count - 1]
    for number, entry in enumerate(entries, start=1):
        offset = int(entry.split()[0])
        assert data[offset:].startswith(b"%d 0 obj" % number)
    length = int(re.search(rb"/Length (\d+)", data).group(1))
    stream = data.split(b"stream\n", 1)[1]
    assert stream[length:].startswith(b"\nendstream")
    assert b"/Root 1 0 R" in data
