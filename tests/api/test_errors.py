"""The one error shape: unknown paths, wrong methods, database outages, docs."""

from __future__ import annotations

import re

import sqlalchemy as sa

from tests.conftest import _clear_caches


def test_unknown_api_path_and_wrong_method(client):
    r = client.get("/api/nothing/here")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and "message" in r.json()["error"]
    r = client.delete("/api/billing/usage")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"] and "GET" in r.headers["allow"]


def test_openapi_and_docs_are_published(client):
    spec = client.get("/api/openapi.json").json()
    assert "/api/billing/usage/batch" in spec["paths"]
    assert "/api/billing/admin/users/{user_id}/quota" in spec["paths"]
    err = spec["components"]["schemas"]["ErrorResponse"]
    assert err["properties"]["error"]
    assert client.get("/api/docs").status_code == 200


def test_docs_page_loads_swagger_ui_from_the_app_itself(client):
    """No CDN: every script, stylesheet and icon of /api/docs is a path of this app,
    and each answers (the browser test renders the page with the network cut off)."""
    html = client.get("/api/docs").text
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    assert "/api/openapi.json" in html
    types = {}
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200, ref
        types[ref.rsplit(".", 1)[-1]] = r.headers["content-type"]
    assert "javascript" in types["js"] and types["css"].startswith("text/css")
    assert client.get("/api/docs/assets/nothing.js").status_code == 404


def test_database_down_is_503_not_500(actors, monkeypatch):
    """PostgreSQL (or the SQLite file) unreachable: a clear 503, quickly, never a 500."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    _clear_caches()
    svc = actors.key_client(actors.service_key)
    for method, path, body in [
        ("POST", "/api/billing/usage", {"user_id": 1, "metric": "tokens", "quantity": 1}),
        ("POST", "/api/billing/quota/check", {"user_id": 1, "metric": "tokens"}),
        ("GET", "/api/billing/usage", None),
    ]:
        r = svc.request(method, path, json=body)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        assert r.headers["retry-after"]


def test_pool_timeout_is_503(actors, monkeypatch):
    def boom():
        raise sa.exc.TimeoutError("QueuePool limit reached")

    from billing_app.api import deps

    def session_scope():
        boom()

    monkeypatch.setattr(deps, "session_scope", session_scope)
    r = actors.anon().get("/api/billing/usage")
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"


def test_health(client):
    assert client.get("/api/health").json() == {"status": "ok"}


def test_routers_included_after_create_api_are_not_shadowed(api):
    from fastapi import APIRouter
    from starlette.testclient import TestClient

    extra = APIRouter()

    @extra.get("/api/extra")
    def extra_route() -> dict[str, bool]:
        return {"extra": True}

    api.include_router(extra)
    with TestClient(api) as c:
        assert c.get("/api/extra").json() == {"extra": True}
        assert c.post("/api/extra").status_code == 405
        assert c.get("/api/extra/nope").status_code == 404
