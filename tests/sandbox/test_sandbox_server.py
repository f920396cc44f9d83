"""Configuration, reset, the CLI, and the unit-level helpers (form decoding, intervals)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import stripe

from stripe_sandbox import Plan, SandboxConfig, SandboxServer, create_app
from stripe_sandbox.objects import add_interval
from stripe_sandbox.params import decode_form

from .helpers import make_client, new_customer, subscribe

ROOT = Path(__file__).resolve().parents[2]


def test_decode_form_handles_stripe_bracket_notation() -> None:
    decoded = decode_form(
        "items[0][price]=p1&items[0][quantity]=2&items[1][price]=p2&metadata[user_id]=7"
        "&metadata[0]=zero&expand[]=a&expand[]=b&subscription_data[metadata][k]=v&empty="
    )
    assert decoded == {
        "items": [{"price": "p1", "quantity": "2"}, {"price": "p2"}],
        "metadata": {"user_id": "7", "0": "zero"},
        "expand": ["a", "b"],
        "subscription_data": {"metadata": {"k": "v"}},
        "empty": "",
    }


def test_monthly_periods_keep_the_anchor_day() -> None:
    jan31 = 1769860800  # 2026-01-31 12:00 UTC
    assert time.strftime("%Y-%m-%d", time.gmtime(add_interval(jan31, "month"))) == "2026-02-28"
    assert time.strftime("%Y-%m-%d", time.gmtime(add_interval(jan31, "month", 2))) == "2026-03-31"
    assert time.strftime("%Y-%m-%d", time.gmtime(add_interval(jan31, "year"))) == "2027-01-31"


def test_custom_plans_and_public_url() -> None:
    config = SandboxConfig(
        plans=[("price_team", "Team", 4900, "eur", "year")],
        public_url="https://sandbox.example.test/",
    )
    with SandboxServer(config) as sandbox:
        client = make_client(sandbox)
        prices = client.v1.prices.list().data
        assert [(p.id, p.unit_amount, p.currency, p.recurring.interval) for p in prices] == [
            ("price_team", 4900, "eur", "year")
        ]
        assert config.plans == [Plan("price_team", "Team", 4900, "eur", "year")]
        cus = new_customer(client)
        session = client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": cus.id,
                "line_items": [{"price": "price_team"}],
            }
        )
        assert session.url == f"https://sandbox.example.test/checkout/{session.id}"


def test_reset_keeps_the_catalog(client: stripe.StripeClient, sandbox: SandboxServer) -> None:
    with httpx.Client(base_url=sandbox.url) as http:
        subscribe(client, http)
        assert httpx.post(sandbox.url + "/_sandbox/reset").status_code == 200
    assert client.v1.customers.list().data == []
    assert client.v1.events.list().data == []
    assert client.v1.subscriptions.list(params={"status": "all"}).data == []
    assert len(client.v1.prices.list().data) == 3
    assert sandbox.state.events == {}


def test_create_app_is_a_plain_asgi_app() -> None:
    app = create_app(SandboxConfig())

    async def call() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
            auth = {"Authorization": "Bearer sk_test_sandbox"}
            return await http.get("/v1/prices", headers=auth), await http.get("/")

    # A thread of its own: pytest-playwright may hold an event loop in the main thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        prices, dashboard = pool.submit(asyncio.run, call()).result()
    assert prices.status_code == 200
    assert len(prices.json()["data"]) == 3
    assert dashboard.status_code == 200
    assert app.state.sandbox.config.base_url == "http://127.0.0.1:12111"


def test_cli_serves_on_the_given_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": "whsec_from_env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_sandbox", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(url + "/_sandbox/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "sandbox CLI did not start"
            time.sleep(0.05)
        client = stripe.StripeClient(
            "sk_test_sandbox", base_addresses={"api": url}, max_network_retries=0
        )
        session = client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "line_items": [{"price": "price_sandbox_pro"}],
                "customer_email": "cli@example.com",
            }
        )
        assert session.url.startswith(f"{url}/checkout/")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "whsec_from_env" in output
