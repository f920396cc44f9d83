"""End-user billing endpoints: subscription, quota, usage, invoices, checkout, portal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from billing_app.db import session_scope
from billing_app.models import Invoice
from billing_app.services import metering
from stripe_sandbox import SandboxConfig, SandboxServer
from tests.conftest import _clear_caches
from tests.factories import make_subscription


def _subscribe(user_id: int, plan: str = "pro", status: str = "active") -> None:
    with session_scope() as s:
        make_subscription(s, user_id, plan=plan, status=status)


def _invoice(user_id: int, n: int, status: str = "paid") -> None:
    with session_scope() as s:
        s.add(
            Invoice(
                stripe_invoice_id=f"in_{user_id}_{n}",
                user_id=user_id,
                status=status,
                amount_due=9900,
                amount_paid=9900 if status == "paid" else 0,
                created_at=datetime(2026, 1, n, tzinfo=UTC),
            )
        )
        s.commit()


def test_subscription_free_then_pro(actors):
    c = actors.cookie_client(actors.a)
    r = c.get("/api/billing/subscription")
    assert r.status_code == 200
    assert r.json() == {"plan": "free", "plan_name": "Free", "subscription": None}
    _subscribe(actors.a.id)
    data = c.get("/api/billing/subscription").json()
    assert data["plan"] == "pro" and data["subscription"]["status"] == "active"


def test_quota_and_usage(actors, frozen_clock):
    with session_scope() as s:
        metering.record(s, actors.a.id, "tokens", 2500)
        metering.record(s, actors.b.id, "tokens", 999)
    c = actors.cookie_client(actors.a)
    q = c.get("/api/billing/quota").json()
    tokens = next(x for x in q["quotas"] if x["metric"] == "tokens")
    assert tokens["limit"] == 100_000 and tokens["used"] == 2500 and tokens["source"] == "plan"
    u = c.get("/api/billing/usage").json()
    assert u["history"] is None
    m = {x["metric"]: x for x in u["metrics"]}
    assert m["tokens"]["used"] == 2500 and m["tokens"]["remaining"] == 97_500
    assert m["tokens"]["percent"] == 2.5 and m["tokens"]["resets_at"].startswith("2026-12-01")
    h = c.get("/api/billing/usage", params={"history": "daily"}).json()["history"]
    day = [x for x in h if x["day"] == "2026-11-15" and x["metric"] == "tokens"]
    assert day == [{"day": "2026-11-15", "metric": "tokens", "quantity": 2500}]
    assert c.get("/api/billing/usage", params={"history": "yearly"}).status_code == 422
    # a user key reads the same, for its owner only
    k = actors.key_client(actors.b_key)
    assert {x["metric"]: x for x in k.get("/api/billing/usage").json()["metrics"]}["tokens"][
        "used"
    ] == 999


def test_under_the_limit_the_percent_is_never_100(actors, frozen_clock):
    """99,999 of 100,000 tokens rounded to 100.0: a service stopping at 100 stopped with a
    token left. The usage summary, the quota check and the admin's list say 99.9; the
    limit itself, 100.0."""
    with session_scope() as s:
        metering.record(s, actors.a.id, "tokens", 99_999)
    c = actors.cookie_client(actors.a)
    tokens = [x for x in c.get("/api/billing/usage").json()["metrics"] if x["metric"] == "tokens"]
    assert (tokens[0]["remaining"], tokens[0]["percent"]) == (1, 99.9)
    check = c.post("/api/billing/quota/check", json={"metric": "tokens", "quantity": 1}).json()
    assert (check["allowed"], check["percent"]) == (True, 99.9)
    rows = actors.cookie_client(actors.admin).get("/api/billing/admin/users").json()["items"]
    row = next(u for u in rows if u["id"] == actors.a.id)
    assert next(m for m in row["usage"] if m["metric"] == "tokens")["percent"] == 99.9
    with session_scope() as s:
        metering.record(s, actors.a.id, "tokens", 1)
    tokens = [x for x in c.get("/api/billing/usage").json()["metrics"] if x["metric"] == "tokens"]
    assert (tokens[0]["remaining"], tokens[0]["percent"]) == (0, 100.0)


def test_invoices_are_paginated_and_scoped(actors):
    for n in range(1, 6):
        _invoice(actors.a.id, n, "paid" if n != 3 else "open")
    _invoice(actors.b.id, 9)
    c = actors.cookie_client(actors.a)
    page = c.get("/api/billing/invoices", params={"per_page": 2}).json()
    assert page["total"] == 5 and page["pages"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["stripe_invoice_id"] == f"in_{actors.a.id}_5"
    assert all(i["user_id"] == actors.a.id for i in page["items"])
    opened = c.get("/api/billing/invoices", params={"status": "open"}).json()
    assert [i["stripe_invoice_id"] for i in opened["items"]] == [f"in_{actors.a.id}_3"]
    assert c.get("/api/billing/invoices", params={"status": "weird"}).status_code == 422
    assert c.get("/api/billing/invoices", params={"page": 0}).status_code == 422


def test_a_customer_asking_for_drafts_is_told_they_are_not_listed(actors):
    """The customer's list never shows drafts: asking for them was an empty page, and the
    422 for an unknown status named `draft` among the choices. Now both say which
    statuses the list has."""
    _invoice(actors.a.id, 1, "paid")
    c = actors.cookie_client(actors.a)
    svc = actors.key_client(actors.service_key)
    for client, params in ((c, {}), (svc, {"user_id": actors.a.id})):
        r = client.get("/api/billing/invoices", params={**params, "status": "draft"})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["message"] == (
            "Drafts are not billed yet and are never listed here; "
            "expected one of: open, paid, uncollectible, void."
        )
        assert err["fields"][0]["field"] == "status"
        weird = client.get("/api/billing/invoices", params={**params, "status": "weird"})
        assert weird.json()["error"]["message"] == (
            "Unknown invoice status 'weird'; expected one of: open, paid, uncollectible, void."
        )


@pytest.fixture
def sandbox(monkeypatch, app_settings) -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig()) as server:
        monkeypatch.setenv("STRIPE_API_BASE", server.url)
        _clear_caches()
        yield server


def test_checkout_and_portal_through_the_sandbox(actors, sandbox):
    c = actors.cookie_client(actors.a)
    none = c.post("/api/billing/portal")
    assert none.status_code == 409 and none.json()["error"]["code"] == "no_billing_account"
    r = c.post("/api/billing/checkout", json={"plan": "pro"})
    assert r.status_code == 200, r.text
    assert r.json()["url"].startswith(sandbox.url)
    portal = c.post("/api/billing/portal")
    assert portal.status_code == 200 and portal.json()["url"].startswith(sandbox.url)
    for bad in ({"plan": "free"}, {"plan": "platinum"}, {}):
        assert c.post("/api/billing/checkout", json=bad).status_code == 422
    _subscribe(actors.a.id, "basic")
    again = c.post("/api/billing/checkout", json={"plan": "pro"})
    assert again.status_code == 409
    # The plan by its name, and the way the pages offer to change it.
    assert again.json()["error"]["message"] == (
        "You already subscribe to the Basic plan. "
        "To change plans, use Manage subscription (the Stripe customer portal)."
    )


def test_checkout_beside_a_subscription_waiting_for_its_first_payment_is_refused(actors, sandbox):
    """Stripe holds an `incomplete` subscription (its first invoice open) that this database
    has not heard of: paying that invoice later would bill it beside the new one. The route
    pulls it in and answers 409, saying which invoice to pay or what to cancel instead."""
    from billing_app.gateway import get_gateway
    from billing_app.models import User

    c = actors.cookie_client(actors.a)
    assert c.post("/api/billing/checkout", json={"plan": "pro"}).status_code == 200
    with session_scope() as s:
        customer = s.get(User, actors.a.id).stripe_customer_id
    sub = get_gateway().client.v1.subscriptions.create(  # no card: its invoice stays open
        params={
            "customer": customer,
            "items": [{"price": "price_sandbox_pro"}],
            "metadata": {"user_id": str(actors.a.id)},
        }
    )
    assert sub.status == "incomplete"
    invoice = get_gateway().client.v1.invoices.retrieve(sub.latest_invoice)

    r = c.post("/api/billing/checkout", json={"plan": "basic"})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert (error["code"], error["status"], error["plan"]) == ("conflict", "incomplete", "pro")
    assert error["message"] == (
        "Your Pro subscription is waiting for its first payment: a new subscription would be "
        f"billed on top of it. Pay its open invoice {invoice.number} "
        f"({invoice.hosted_invoice_url}) to start it, or cancel that subscription "
        "in Manage subscription (the Stripe customer portal), then choose a plan."
    )
    # Synced: the stored row refuses from now on (Stripe, asked about it, still holds it).
    assert c.post("/api/billing/checkout", json={"plan": "pro"}).status_code == 409
