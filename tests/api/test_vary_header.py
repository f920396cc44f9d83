"""One `Vary: Origin` over real HTTP, as Reflex serves the API: it adds Starlette's CORS
middleware at three levels (its routes, the FastAPI app it mounts, the top app), and each
appended `Origin` (`Vary: Origin, Origin`; `/ping` thrice). CORS itself stays: the app's
own origin gets its Access-Control headers, another origin none."""

from __future__ import annotations

import httpx
import pytest

from billing_app.db import session_scope
from billing_app.services import auth
from tests.api.conftest import LiveServer
from tests.factories import make_user


@pytest.fixture
def reflex_server(monkeypatch: pytest.MonkeyPatch):
    """The app module's ASGI app (BillingApp()(): Reflex's layers, ours around them) on
    loopback; the pages are not compiled (no frontend is asked for)."""
    monkeypatch.setenv("__REFLEX_SKIP_COMPILE", "true")
    from billing_app import billing_app as module

    server = LiveServer(module.app())
    yield server
    server.stop()


def test_the_api_answers_one_vary_origin_and_keeps_cors_for_its_own_origin(reflex_server):
    with session_scope() as s:
        token = auth.new_session(s, make_user(s, email="boss@example.com", admin=True).id)
    own = reflex_server.url  # APP_URL is localhost:8000; the Host's origin is ours too
    cookies = {auth.SESSION_COOKIE: token}
    with httpx.Client(base_url=reflex_server.url, cookies=cookies, timeout=30) as c:
        for path in ("/api/auth/me", "/api/billing/admin/stats", "/api/openapi.json", "/ping"):
            for origin in (None, own, "https://evil.example"):
                r = c.get(path, headers={"Origin": origin} if origin else {})
                assert r.status_code == 200, (path, r.text)
                assert r.headers.get_list("vary") == ["Origin"], (path, origin, r.headers)
                allowed = r.headers.get("access-control-allow-origin")
                assert allowed == (own if origin == own else None), (path, origin)
            credentials = c.get(path, headers={"Origin": own}).headers
            assert credentials["access-control-allow-credentials"] == "true"
        # A preflight from the app's own origin is still answered, its Vary whole.
        pre = c.options(
            "/api/billing/admin/stats",
            headers={"Origin": own, "Access-Control-Request-Method": "GET"},
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == own
        assert pre.headers.get_list("vary") == [
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, "
            "Access-Control-Request-Private-Network"
        ]


def test_one_vary_merges_repeats_and_leaves_the_rest_alone():
    from billing_app.api.cors import one_vary

    plain = [(b"content-type", b"text/csv"), (b"vary", b"Origin")]
    assert one_vary(plain) is plain
    assert one_vary([(b"x", b"1")]) == [(b"x", b"1")]
    assert one_vary([(b"Vary", b"Origin, Accept"), (b"x", b"1"), (b"vary", b"origin, Cookie")]) == [
        (b"x", b"1"),
        (b"vary", b"Origin, Accept, Cookie"),
    ]
