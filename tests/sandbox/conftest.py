"""Fixtures: a fresh sandbox per test (real HTTP on a free port), a stripe-python client
pointed at it, and a webhook receiver that records what it gets."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import stripe

from stripe_sandbox import BackgroundServer, SandboxConfig, SandboxServer

from .helpers import SECRET, WebhookReceiver, make_client


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    rec = WebhookReceiver()
    with BackgroundServer(rec.app()) as server:
        rec.url = server.url + "/webhook"
        yield rec


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(webhook_secret=SECRET)) as server:
        yield server


@pytest.fixture
def client(sandbox: SandboxServer) -> stripe.StripeClient:
    return make_client(sandbox)


@pytest.fixture
def http(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    """A plain browser-like client for the HTML pages (redirects are followed by hand)."""
    with httpx.Client(base_url=sandbox.url, follow_redirects=False, timeout=10) as c:
        yield c
