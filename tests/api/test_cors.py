"""Cross-origin reads with the user's cookie, from the app's own origins only. Reflex
answers CORS for any origin with credentials (its default, which its websocket needs);
api/cors.py, outside it, takes those headers off answers to other origins."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.testclient import TestClient

from billing_app.api.app import create_api
from billing_app.api.cors import own_origins_only
from billing_app.db import session_scope
from billing_app.services import auth
from tests.api.conftest import ORIGIN
from tests.factories import make_user


def _served() -> TestClient:
    """As Reflex serves the API (its CORS layer as it configures it), inside ours."""
    api = create_api()
    reflex_like = CORSMiddleware(
        api, allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    return TestClient(own_origins_only(reflex_like), base_url=ORIGIN)


def test_another_origin_cannot_read_an_admins_export_with_the_cookie(app_settings):
    with session_scope() as s:
        token = auth.new_session(s, make_user(s, email="boss@example.com", admin=True).id)
    c = _served()
    c.cookies.set(auth.SESSION_COOKIE, token)
    for evil in ("https://evil.example", "http://localhost:3999", "https://shop.testserver"):
        r = c.get("/api/billing/admin/users.csv", headers={"Origin": evil})
        assert "access-control-allow-origin" not in r.headers, (evil, r.headers)
        assert "access-control-allow-credentials" not in r.headers
        pre = c.options(
            "/api/billing/admin/users.csv",
            headers={"Origin": evil, "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in pre.headers
    # The app's own pages (same origin, or APP_URL) keep them.
    own = c.get("/api/billing/admin/users.csv", headers={"Origin": ORIGIN})
    assert own.status_code == 200 and own.headers["access-control-allow-origin"] == ORIGIN
    assert "boss@example.com" in own.text
