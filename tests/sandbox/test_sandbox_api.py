"""The REST surface through stripe-python 16.1.0: shapes, lists, errors, idempotency."""

from __future__ import annotations

import httpx
import pytest
import stripe

from stripe_sandbox import API_VERSION, SandboxServer

from .helpers import API_KEY, make_client, new_checkout, new_customer


def test_customer_create_retrieve_update_list(client: stripe.StripeClient) -> None:
    created = new_customer(client, "ada@example.com")
    assert created.object == "customer"
    assert created.id.startswith("cus_")
    assert created.email == "ada@example.com"
    assert created.metadata["user_id"] == "7"
    assert created.livemode is False
    assert created.invoice_settings.default_payment_method is None

    fetched = client.v1.customers.retrieve(created.id)
    assert fetched.to_dict() == created.to_dict()

    updated = client.v1.customers.update(
        created.id, params={"name": "Ada King", "metadata": {"plan": "pro", "user_id": ""}}
    )
    assert updated.name == "Ada King"
    assert updated.metadata.to_dict() == {"plan": "pro"}  # "" deletes a key, like Stripe

    new_customer(client, "bob@example.com")
    by_email = client.v1.customers.list(params={"email": "ada@example.com"})
    assert by_email.object == "list"
    assert [c.id for c in by_email.data] == [created.id]
    assert by_email.url == "/v1/customers"


def test_customer_pagination_is_newest_first_with_cursors(client: stripe.StripeClient) -> None:
    ids = [new_customer(client, f"u{i}@example.com").id for i in range(5)]
    first = client.v1.customers.list(params={"limit": 2})
    assert [c.id for c in first.data] == [ids[4], ids[3]]
    assert first.has_more is True
    second = client.v1.customers.list(params={"limit": 2, "starting_after": ids[3]})
    assert [c.id for c in second.data] == [ids[2], ids[1]]
    everything = [c.id for c in client.v1.customers.list(params={"limit": 2}).auto_paging_iter()]
    assert everything == list(reversed(ids))
    before = client.v1.customers.list(params={"limit": 2, "ending_before": ids[1]})
    assert [c.id for c in before.data] == [ids[3], ids[2]]


def test_customer_search_by_metadata(client: stripe.StripeClient) -> None:
    ada = new_customer(client, "ada@example.com")
    client.v1.customers.create(params={"email": "bob@example.com", "metadata": {"user_id": "8"}})
    result = client.v1.customers.search(params={"query": "metadata['user_id']:'7'"})
    assert [c.id for c in result.data] == [ada.id]
    result = client.v1.customers.search(params={"query": "email:'bob@example.com'"})
    assert [c.email for c in result.data] == ["bob@example.com"]


def test_delete_customer_returns_deleted_stub(client: stripe.StripeClient) -> None:
    cus = new_customer(client)
    deleted = client.v1.customers.delete(cus.id)
    assert deleted.deleted is True
    assert client.v1.customers.retrieve(cus.id).deleted is True


def test_seeded_prices_and_products(client: stripe.StripeClient) -> None:
    prices = client.v1.prices.list(params={"active": True, "expand": ["data.product"]})
    by_id = {p.id: p for p in prices.data}
    assert set(by_id) == {"price_sandbox_basic", "price_sandbox_pro", "price_sandbox_enterprise"}
    pro = by_id["price_sandbox_pro"]
    assert (pro.unit_amount, pro.currency, pro.type) == (9900, "usd", "recurring")
    assert pro.recurring.interval == "month"
    assert pro.product.object == "product"  # expanded
    assert pro.product.name == "Pro"
    assert pro.lookup_key == "pro"

    by_key = client.v1.prices.list(params={"lookup_keys": ["basic"]}).data
    assert [p.id for p in by_key] == ["price_sandbox_basic"]
    product = client.v1.products.retrieve("prod_sandbox_enterprise")
    assert (product.name, product.default_price) == ("Enterprise", "price_sandbox_enterprise")
    price = client.v1.prices.retrieve("price_sandbox_basic", params={"expand": ["product"]})
    assert price.product.id == "prod_sandbox_basic"


def test_create_product_and_price(client: stripe.StripeClient) -> None:
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 2500,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Team"},
            "lookup_key": "team",
        }
    )
    assert price.unit_amount == 2500
    assert client.v1.products.retrieve(price.product).name == "Team"
    assert client.v1.prices.list(params={"lookup_keys": ["team"]}).data[0].id == price.id


def test_unknown_ids_raise_invalid_request_error_404(client: stripe.StripeClient) -> None:
    for call in (
        lambda: client.v1.customers.retrieve("cus_missing"),
        lambda: client.v1.subscriptions.retrieve("sub_missing"),
        lambda: client.v1.invoices.retrieve("in_missing"),
        lambda: client.v1.checkout.sessions.retrieve("cs_test_missing"),
        lambda: client.v1.events.retrieve("evt_missing"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as info:
            call()
        assert info.value.http_status == 404
        assert info.value.code == "resource_missing"
        assert info.value.param == "id"
        assert "No such" in info.value.user_message


def test_unknown_price_in_checkout_is_400_with_param(client: stripe.StripeClient) -> None:
    cus = new_customer(client)
    with pytest.raises(stripe.InvalidRequestError) as info:
        new_checkout(client, cus.id, price="price_nope")
    assert info.value.http_status == 400
    assert info.value.param == "line_items[0][price]"
    assert info.value.json_body["error"]["type"] == "invalid_request_error"
    with pytest.raises(stripe.InvalidRequestError) as info:
        new_checkout(client, "cus_nope")
    assert info.value.param == "customer"


def test_authentication(sandbox: SandboxServer) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        make_client(sandbox, "sk_live_wrong").v1.customers.list()
    assert info.value.http_status == 401
    # any test-mode secret key is accepted, like a developer's own key
    assert make_client(sandbox, "sk_test_someone_else").v1.customers.list().data == []
    missing = httpx.get(sandbox.url + "/v1/customers")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    basic = httpx.get(sandbox.url + "/v1/customers", auth=(API_KEY, ""))
    assert basic.status_code == 200


def test_headers_and_unknown_url(sandbox: SandboxServer) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    echoed = httpx.get(
        sandbox.url + "/v1/customers", headers={**auth, "Stripe-Version": "2024-06-20"}
    )
    assert echoed.headers["Stripe-Version"] == "2024-06-20"
    assert echoed.headers["Request-Id"].startswith("req_")
    default = httpx.get(sandbox.url + "/v1/customers", headers=auth)
    assert default.headers["Stripe-Version"] == API_VERSION == "2026-10-28.endive"
    unknown = httpx.get(sandbox.url + "/v1/coupons", headers=auth)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"


def test_form_encoding_with_empty_brackets(sandbox: SandboxServer) -> None:
    """curl-style ``expand[]=`` works as well as stripe-python's ``expand[0]=``."""
    response = httpx.get(
        sandbox.url + "/v1/prices?expand[]=data.product&lookup_keys[]=pro",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    data = response.json()["data"]
    assert [p["id"] for p in data] == ["price_sandbox_pro"]
    assert data[0]["product"]["object"] == "product"


def test_idempotency_replay_and_mismatch(client: stripe.StripeClient) -> None:
    params = {"email": "idem@example.com"}
    first = client.v1.customers.create(params=params, options={"idempotency_key": "key-1"})
    again = client.v1.customers.create(params=params, options={"idempotency_key": "key-1"})
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(client.v1.customers.list().data) == 1
    created_events = client.v1.events.list(params={"type": "customer.created"}).data
    assert len(created_events) == 1
    assert created_events[0].request.idempotency_key == "key-1"

    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create(
            params={"email": "other@example.com"}, options={"idempotency_key": "key-1"}
        )
    assert info.value.http_status == 400
    assert info.value.json_body["error"]["type"] == "idempotency_error"
    assert len(client.v1.customers.list().data) == 1


def test_idempotency_does_not_store_validation_errors(client: stripe.StripeClient) -> None:
    cus = new_customer(client)
    params = {
        "mode": "subscription",
        "customer": cus.id,
        "line_items": [{"price": "price_typo"}],
        "success_url": "http://app.test/ok",
    }
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "k2"})
    params["line_items"] = [{"price": "price_sandbox_basic"}]
    session = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "k3"})
    assert session.status == "open"
