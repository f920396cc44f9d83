"""The gateway: parsing Stripe's own fixture objects (current and older shapes), webhook
verification, and real calls against the sandbox (idempotency, error translation)."""

from __future__ import annotations

import copy
import json
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

import stripe_sandbox
from billing_app.errors import (
    CardDeclined,
    InvalidWebhook,
    InvalidWebhookPayload,
    PaymentProviderError,
)
from billing_app.gateway import STRIPE_API_VERSION, StripeGateway, get_gateway, idempotency_key
from billing_app.gateway.parsing import (
    MalformedObject,
    metadata_user_id,
    parse_checkout_session,
    parse_event,
    parse_invoice,
    parse_subscription,
    served_at,
)
from billing_app.settings import load_settings
from tests.stripe.conftest import sign


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# ---------------------------------------------------------------- parsing fixtures


def test_subscription_current_shape(stripe_fixtures):
    fx = stripe_fixtures["subscription"]
    data = parse_subscription(fx)
    item = fx["items"]["data"][0]
    assert data.id == fx["id"] and data.customer_id == fx["customer"]
    assert data.status == "active" and data.cancel_at_period_end is True
    assert data.cancel_at == _dt(fx["cancel_at"])
    assert data.price_id == item["price"]["id"] and data.item_id == item["id"]
    assert data.current_period_start == _dt(item["current_period_start"])
    assert data.current_period_end == _dt(item["current_period_end"])
    assert data.amount == 2000 and data.currency == "usd"
    assert data.user_id is None  # fixture metadata is empty


def test_subscription_older_shape_gives_the_same_record(stripe_fixtures):
    current = stripe_fixtures["subscription"]
    old = copy.deepcopy(current)
    item = old["items"]["data"][0]
    old["current_period_start"] = item.pop("current_period_start")
    old["current_period_end"] = item.pop("current_period_end")
    old["metadata"] = {"user_id": "42"}
    a, b = parse_subscription(current), parse_subscription(old)
    assert (a.current_period_start, a.current_period_end) == (
        b.current_period_start,
        b.current_period_end,
    )
    assert b.user_id == 42


def test_subscription_plan_item_is_found_behind_an_add_on(stripe_fixtures):
    obj = copy.deepcopy(stripe_fixtures["subscription"])
    plan_item = obj["items"]["data"][0]
    addon = copy.deepcopy(plan_item)
    addon.update(id="si_addon", quantity=3)
    addon["price"].update(id="price_addon_seats", unit_amount=500)
    obj["items"]["data"] = [addon, plan_item]
    plan_price = plan_item["price"]["id"]
    data = parse_subscription(obj, frozenset({plan_price, "price_other_plan"}))
    assert (data.price_id, data.item_id) == (plan_price, plan_item["id"])
    assert data.amount == plan_item["price"]["unit_amount"]
    # Without the catalog, or with no plan item among them, the first item is read.
    assert parse_subscription(obj).price_id == "price_addon_seats"
    first = parse_subscription(obj, frozenset({"price_unknown"}))
    assert (first.price_id, first.item_id, first.amount) == ("price_addon_seats", "si_addon", 1500)


def test_invoice_current_and_older_shapes(stripe_fixtures):
    fx = stripe_fixtures["invoice"]
    data = parse_invoice(fx)
    assert data.subscription_id == fx["parent"]["subscription_details"]["subscription"]
    assert (data.status, data.amount_due, data.amount_paid) == ("draft", 1000, 0)
    assert data.currency == "usd" and data.created == _dt(fx["created"])
    old = copy.deepcopy(fx)
    old["parent"] = None
    old["subscription"] = "sub_legacy"
    assert parse_invoice(old).subscription_id == "sub_legacy"
    expanded = copy.deepcopy(old)
    expanded["subscription"] = {"id": "sub_expanded", "object": "subscription"}
    assert parse_invoice(expanded).subscription_id == "sub_expanded"


def test_checkout_session_and_event(stripe_fixtures):
    cs = copy.deepcopy(stripe_fixtures["checkout.session"])
    assert parse_checkout_session(cs).user_id is None
    # The app's own sessions: metadata and client_reference_id name the same user.
    cs["client_reference_id"] = "17"
    cs["metadata"] = {"user_id": "17", "plan": "pro"}
    data = parse_checkout_session(cs)
    assert data.user_id == 17 and data.id == cs["id"]
    # A Payment Link's client_reference_id comes from its URL: alone, or against the
    # metadata, it names nobody.
    assert parse_checkout_session({**cs, "metadata": {}}).user_id is None
    assert parse_checkout_session({**cs, "client_reference_id": "18"}).user_id is None
    evt = parse_event(stripe_fixtures["event"])
    assert evt.type == "plan.created" and evt.created == _dt(1234567890)
    for bad in ({}, {"id": "evt_1", "type": "x"}, [], {"id": 1, "type": "x", "data": {}}):
        with pytest.raises(MalformedObject):
            parse_event(bad)
    with pytest.raises(MalformedObject):
        parse_subscription({"id": "sub_1"})  # no status


@pytest.mark.parametrize(
    ("meta", "expected"),
    [({"user_id": "7"}, 7), ({"user_id": 7}, 7), ({"user_id": "x"}, None), ({}, None),
     (None, None), ({"user_id": "0"}, None), ({"user_id": True}, None)],
)  # fmt: skip
def test_metadata_user_id(meta, expected):
    assert metadata_user_id(meta) == expected


# ---------------------------------------------------------------- webhook verification


def test_verify_webhook_returns_the_event_as_plain_json(stripe_fixtures, app_settings):
    body = json.dumps(stripe_fixtures["event"]).encode()
    gw = get_gateway()
    assert gw.verify_webhook(body, sign(body)) == stripe_fixtures["event"]
    with pytest.raises(InvalidWebhook):
        gw.verify_webhook(body, None)
    with pytest.raises(InvalidWebhook):
        gw.verify_webhook(body, sign(body, timestamp=int(time.time()) - 400))
    with pytest.raises(InvalidWebhookPayload):
        gw.verify_webhook(b"[]", sign(b"[]"))
    # The sandbox signs exactly like this (and like Stripe).
    assert stripe_sandbox.sign_webhook(body, "whsec_x", 123) == sign(body, "whsec_x", 123)


def test_api_version_is_pinned_once():
    assert STRIPE_API_VERSION == stripe_sandbox.API_VERSION


def test_idempotency_keys_are_deterministic_and_param_bound():
    a = idempotency_key("checkout", 1, "pro", params={"x": 1})
    assert a == idempotency_key("checkout", 1, "pro", params={"x": 1})
    assert a != idempotency_key("checkout", 1, "pro", params={"x": 2})
    assert a.startswith("checkout:1:pro:")
    assert len(idempotency_key("x" * 300)) == 255


# ---------------------------------------------------------------- against the sandbox


def test_create_customer_is_idempotent(sandbox):
    gw = get_gateway()
    a = gw.create_customer(user_id=5, email="a@example.com", name="A")
    b = gw.create_customer(user_id=5, email="a@example.com", name="A")
    c = gw.create_customer(user_id=5, email="changed@example.com", name="A")
    assert a["id"] == b["id"] != c["id"]
    assert isinstance(a, dict) and a["metadata"] == {"user_id": "5"}
    assert [x["id"] for x in gw.iter_customers(email="a@example.com")] == [a["id"]]
    assert gw.retrieve_customer(a["id"])["email"] == "a@example.com"


def test_answers_carry_stripes_moment_also_on_every_page_of_a_list(sandbox, http):
    """Stripe's `Date` (here the sandbox clock, a day ahead of the wall clock) comes with
    each answer and each listed object, past the first page (100) too."""
    gw = get_gateway()
    ids = [
        gw.create_customer(user_id=i, email=f"p{i}@example.com", name=None)["id"]
        for i in range(101)
    ]
    r = http.post(sandbox.url + "/_sandbox/clock/advance", data={"days": "1"})
    now = _dt(r.json()["now"])
    listed = list(gw.iter_customers())
    assert sorted(c["id"] for c in listed) == sorted(ids)
    assert {served_at(c) for c in listed} <= {now, now + timedelta(seconds=1)}
    assert served_at(gw.retrieve_customer(ids[0])) in (now, now + timedelta(seconds=1))
    assert served_at(dict(listed[0])) is None  # a plain dict: no moment to go by
    head = http.get(sandbox.url + f"/v1/customers/{ids[0]}", auth=("sk_test_x", ""))
    assert len(head.headers.get_list("date")) == 1  # the sandbox's own, not uvicorn's too


def test_stripe_errors_become_domain_errors(sandbox):
    with pytest.raises(PaymentProviderError, match="No such subscription"):
        get_gateway().retrieve_subscription("sub_missing")
    bad_key = StripeGateway(
        load_settings(stripe_secret_key="rk_live_wrong", stripe_webhook_secret="whsec_x",
                      stripe_price_basic="price_a", stripe_price_pro="price_b",
                      stripe_price_enterprise="price_c", stripe_api_base=sandbox.url),
        max_network_retries=0,
    )  # fmt: skip
    with pytest.raises(PaymentProviderError, match="credentials"):
        bad_key.retrieve_subscription("sub_x")


def test_unreachable_stripe_is_a_clear_error(app_settings, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    gw = StripeGateway(
        load_settings(stripe_api_base=f"http://127.0.0.1:{port}"), max_network_retries=1
    )
    with pytest.raises(PaymentProviderError, match="Could not reach Stripe") as err:
        gw.retrieve_customer("cus_x")
    assert err.value.status_code == 502
    # Logged once, on one line, with where it failed (stripe-python's text spans four).
    [record] = [r for r in caplog.records if r.name == "billing_app.gateway.stripe_gateway"]
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith("stripe call failed (read a customer): ")
    assert f"port={port}" in message and "Connection refused" in message


def test_a_stripe_that_hangs_is_a_clear_error_in_bounded_time(app_settings):
    """A Stripe that accepts the connection and never answers: each attempt gives up at the
    read timeout (stripe-python's default waits 80 s), and the press gets the 502."""
    import threading
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # accepted by the kernel, never read or answered
        port = s.getsockname()[1]
        gw = StripeGateway(
            load_settings(stripe_api_base=f"http://127.0.0.1:{port}"),
            max_network_retries=0,
            timeout=(1.0, 1.0),
        )
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                gw.retrieve_customer("cus_x")
            except BaseException as err:  # noqa: BLE001 - handed to the test's thread
                outcome.append(err)

        started = time.monotonic()
        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(20)
        took = time.monotonic() - started
    assert not t.is_alive(), "the call still hangs after 20 s"
    assert took < 10, took
    [err] = outcome
    assert isinstance(err, PaymentProviderError) and err.status_code == 502, err
    assert "Could not reach Stripe" in err.message


def test_the_gateway_waits_for_stripe_a_bounded_time(app_settings):
    from billing_app.gateway.stripe_gateway import STRIPE_TIMEOUT

    gw = StripeGateway(load_settings(stripe_api_base="http://127.0.0.1:9"))
    assert gw.client._requestor._client._timeout == STRIPE_TIMEOUT  # not stripe's 80 s
    assert max(STRIPE_TIMEOUT) <= 30


def test_card_errors_are_402():
    import stripe  # only to build the exception stripe-python would raise

    from billing_app.gateway.stripe_gateway import _translate

    err = _translate(stripe.CardError("Your card was declined.", "number", "card_declined"), "pay")
    assert isinstance(err, CardDeclined) and err.status_code == 402
    assert "declined" in err.message


def test_sandbox_and_stripe_commands_are_registered():
    from click.testing import CliRunner

    from billing_app.cli import main

    out = CliRunner().invoke(main, ["sandbox", "run", "--help"])
    assert out.exit_code == 0 and "--port" in out.output
    out = CliRunner().invoke(main, ["stripe", "events", "replay", "--help"])
    assert out.exit_code == 0 and "--since" in out.output


def test_invoice_period_is_what_its_lines_bill_for(stripe_fixtures):
    """A renewal's own period_start/end is the month before (when its items gathered), a
    first invoice's is zero-length: the lines say what it pays for, plan lines first."""
    fx = copy.deepcopy(stripe_fixtures["invoice"])
    line = fx["lines"]["data"][0]
    fx["period_start"] = fx["period_end"] = 1_764_000_000
    plan = copy.deepcopy(line)
    plan["parent"]["subscription_item_details"]["proration"] = False
    plan["parent"]["invoice_item_details"]["proration"] = False
    plan["period"] = {"start": 1_764_000_000, "end": 1_766_592_000}
    credit = copy.deepcopy(line)
    credit["parent"]["subscription_item_details"]["proration"] = True
    credit["period"] = {"start": 1_763_000_000, "end": 1_764_000_000}
    fx["lines"]["data"] = [credit, plan]
    data = parse_invoice(fx)
    assert (data.period_start, data.period_end) == (_dt(1_764_000_000), _dt(1_766_592_000))
    # Only prorations (a plan change billed at once): their span.
    fx["lines"]["data"] = [credit]
    data = parse_invoice(fx)
    assert (data.period_start, data.period_end) == (_dt(1_763_000_000), _dt(1_764_000_000))
    # No lines in the payload: the invoice's own fields.
    fx["lines"] = {"object": "list", "data": [], "has_more": False}
    assert parse_invoice(fx).period_end == _dt(1_764_000_000)
