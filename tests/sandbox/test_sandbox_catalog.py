"""The sandbox charges what the app's catalog says: `demo run` and `sandbox run` seed it
with BILLING_PLANS_JSON's names and amounts, where it used to keep its built-in
19/99/499 usd whatever the plan cards showed."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import stripe
from click.testing import CliRunner

from billing_app.brand import BRAND
from billing_app.cli.demo import _stop, start_sandbox
from billing_app.cli.sandbox import catalog_prices
from billing_app.cli.sandbox import group as sandbox_group
from stripe_sandbox import BackgroundServer
from tests.conftest import _clear_caches

PLANS = {
    "basic": {"amount": 2500, "currency": "eur", "name": "Starter"},
    "pro": {"amount": 12000, "currency": "eur"},
    "enterprise": {"amount": 60000, "currency": "eur"},
}
EXPECTED = {
    ("price_sandbox_basic", "Starter", 2500, "eur"),
    ("price_sandbox_pro", "Pro", 12000, "eur"),
    ("price_sandbox_enterprise", "Enterprise", 60000, "eur"),
}


@pytest.fixture
def custom_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps(PLANS))
    _clear_caches()


def _prices(base_url: str) -> set[tuple[str, str, int, str]]:
    client = stripe.StripeClient(
        "sk_test_sandbox", base_addresses={"api": base_url}, max_network_retries=0
    )
    prices = client.v1.prices.list(params={"expand": ["data.product"], "limit": 100}).data
    return {(p.id, p.product.name, p.unit_amount, p.currency) for p in prices}


def _merchant_and_return_link(base_url: str) -> tuple[str, str]:
    """The merchant the checkout page names, and the portal's return link's text."""
    client = stripe.StripeClient(
        "sk_test_sandbox", base_addresses={"api": base_url}, max_network_retries=0
    )
    customer = client.v1.customers.create(params={"email": "ada@example.com"}).id
    checkout = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": "price_sandbox_pro", "quantity": 1}],
            "success_url": "http://app.test/billing",
        }
    )
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": customer, "return_url": "http://app.test/billing"}
    )

    def page(url: str) -> str:  # on this server, whatever public URL the pages were given
        return httpx.get(base_url + urlsplit(url).path).text

    merchant = re.search(r'<span class="logo">.</span>\s*([^<]+)</div>', page(checkout.url))
    back = re.search(r'id="return-link"[^>]*>← Return to ([^<]+)</a>', page(portal.url))
    assert merchant and back
    return merchant.group(1).strip(), back.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_catalog_gives_the_sandbox_its_prices(custom_plans):
    assert {p[:4] for p in catalog_prices()} == EXPECTED
    assert {p[4] for p in catalog_prices()} == {"month"}


@pytest.fixture
def demo_sandbox(custom_plans) -> Iterator[str]:
    """The sandbox process `demo run` starts, on a free port."""
    port = _free_port()
    proc = start_sandbox(port, "http://127.0.0.1:1/webhook", dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "the sandbox exited"
                assert time.monotonic() < deadline, "the sandbox did not start"
                time.sleep(0.1)
        yield url
    finally:
        _stop(proc)


def test_demo_runs_the_sandbox_on_the_catalogs_prices(demo_sandbox):
    assert _prices(demo_sandbox) == EXPECTED
    # The app's name, not the sandbox's own "Sandbox Inc." and "Billing App".
    assert _merchant_and_return_link(demo_sandbox) == (BRAND, BRAND)


def test_sandbox_run_serves_the_catalogs_prices(custom_plans, monkeypatch):
    served = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.update(app=app, **kw))
    result = CliRunner().invoke(sandbox_group, ["run", "--port", "12999"])
    assert result.exit_code == 0, result.output
    assert served["port"] == 12999
    with BackgroundServer(served["app"]) as server:
        assert _prices(server.url) == EXPECTED
        assert _merchant_and_return_link(server.url) == (BRAND, BRAND)


def test_a_bad_plans_argument_is_a_usage_error(capsys):
    from stripe_sandbox.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--plans", '[["price_x", "X", "19.00", "usd", "month"]]'])
    assert exit_.value.code == 2
    assert "price_x: unit_amount must be an integer" in capsys.readouterr().err


def test_the_sandbox_writes_amounts_in_their_currencys_minor_units():
    """A yen catalog's checkout, invoice page and PDF read ¥1,500, not 15.00 JPY (and
    dinars three places), as Stripe and the app's own pages write them."""
    from stripe_sandbox.objects import money, price_label

    assert money(1500, "jpy") == "¥1,500"
    assert money(-1500, "jpy") == "-¥1,500"
    assert money(12345, "kwd") == "12.345 KWD"
    assert money(1900, "usd") == "$19.00" and money(250000, "sek") == "2,500.00 SEK"
    price = {"unit_amount": 1500, "currency": "jpy", "recurring": {"interval": "month"}}
    assert price_label(price) == "¥1,500 / month"
