"""Every /api/ answer says `Cache-Control: no-store`, in both lanes: most depend on who
asked, and a shared proxy or the browser's cache must not keep one person's answer.
Only the API's documents, the same for everyone, may be cached."""

from __future__ import annotations

import pytest

from billing_app.db import session_scope
from billing_app.services import auth
from tests.api import test_authz_matrix as matrix
from tests.api.conftest import ORIGIN, PASSWORD
from tests.api.test_authz_matrix import ALLOWED_STATUS, SCOPED_ROUTES, _call, _scoped_ids

scoped_keys, no_stripe = matrix.scoped_keys, matrix.no_stripe  # fixtures


@pytest.mark.parametrize("lane", ["fast", "fastapi"])
@pytest.mark.parametrize(
    ("method", "path", "body", "owner", "_needs"), SCOPED_ROUTES, ids=_scoped_ids(SCOPED_ROUTES)
)
def test_every_authenticated_answer_is_no_store(
    actors, scoped_keys, no_stripe, method, path, body, owner, _needs, lane
):
    """SCOPED_ROUTES is every authenticated route (test_authz_matrix checks it against
    the OpenAPI document). Without an Origin, a bearer key's usage calls are the fast
    lane's; with one, FastAPI's."""
    client = actors.key_client(scoped_keys[owner, "unscoped"])
    if lane == "fastapi":
        client.headers["Origin"] = ORIGIN
    r = _call(client, method, path, body, actors)
    assert r.status_code in {ALLOWED_STATUS.get(path, 200), 201}, r.text
    assert r.headers.get_list("cache-control") == ["no-store"], path


def test_a_sessions_answers_and_refusals_are_no_store(actors):
    browser = actors.cookie_client(actors.a)
    for path in ("/api/auth/me", "/api/billing/usage", "/api/billing/invoices"):
        r = browser.get(path)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store", path
    admin = actors.cookie_client(actors.admin)
    r = admin.get("/api/billing/admin/users")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    # Refusals too: whose they are shows in them (401, 403, another user's 404).
    assert browser.get("/api/billing/admin/users").headers["cache-control"] == "no-store"
    for anon in (actors.anon(), actors.key_client("bk_live_0000_forged")):
        r = anon.get("/api/billing/usage")
        assert r.status_code == 401 and r.headers["cache-control"] == "no-store"


def test_the_exports_own_header_is_not_repeated(actors):
    r = actors.cookie_client(actors.admin).get("/api/billing/admin/users.csv")
    assert r.status_code == 200
    assert r.headers.get_list("cache-control") == ["no-store"]


def test_the_sign_in_answer_is_no_store(client):
    with session_scope() as s:
        auth.signup(s, "c@example.com", PASSWORD)
    r = client.post("/api/auth/login", json={"email": "c@example.com", "password": PASSWORD})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


def test_the_api_documents_may_be_cached_and_the_rest_not(client):
    for path in ("/api/openapi.json", "/api/docs", "/api/docs/assets/swagger-ui.css"):
        r = client.get(path)
        assert r.status_code == 200 and "cache-control" not in r.headers, path
    # Health and Stripe's deliveries depend on no one; no-store by the one rule, and a
    # cache keeping a health answer would only hide an outage.
    assert client.get("/api/health").headers["cache-control"] == "no-store"
    r = client.post("/api/billing/webhook", content=b"{}", headers={"Stripe-Signature": "t=1"})
    assert r.status_code == 400 and r.headers["cache-control"] == "no-store"
    assert client.get("/api/nothing-here").headers["cache-control"] == "no-store"
    # Not the pages: Reflex serves them, outside the API.
    assert "no-store" not in client.get("/billing").headers.get("cache-control", "")
