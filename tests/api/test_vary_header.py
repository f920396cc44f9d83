"""One `Vary: Origin` over real HTTP, as Reflex serves the API: it adds Starlette's CORS
middleware at three levels (its routes, the FastAPI app it mounts, the top app), and each
appended `Origin` (`Vary: Origin, Origin`; `/ping` thrice). CORS itself stays: the app's
own origin gets its Access-Control headers, another origin none."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from billing_app.db import session_scope
from billing_app.services import auth
from tests.api.conftest import LiveServer
from tests.factories import make_user

_app: Any = None


@pytest.fixture
def reflex_server(monkeypatch: pytest.MonkeyPatch):
    """The app module's ASGI app (BillingApp()(): Reflex's layers, ours around them) on
    loopback; the pages are not compiled (no frontend is asked for)."""
    monkeypatch.setenv("__REFLEX_SKIP_COMPILE", "true")
    from billing_app import billing_app as module

    global _app
    if _app is None:  # built once per process: Reflex adds its middleware to one FastAPI app
        _app = module.app()
    server = LiveServer(_app)
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


def test_the_fast_lanes_answers_say_vary_origin_too(reflex_server):
    """A service key's usage calls and Stripe's deliveries, answered in front of Reflex
    (api/fast_lane.py), said no `Vary` at all, while the same call with an Origin gets
    CORS headers: "Every answer says `Vary: Origin` once" (README)."""
    from billing_app.services import api_keys

    with session_scope() as s:
        uid = make_user(s, email="ann@example.com").id
        secret = api_keys.create_key(s, name="svc", service_name="svc")[1]
    auth = {"Authorization": f"Bearer {secret}"}
    write = {"user_id": uid, "metric": "tokens", "quantity": 1}
    with httpx.Client(base_url=reflex_server.url, headers=auth, timeout=30) as c:
        answers = {
            "record": c.post("/api/billing/usage", json=write),
            "check": c.post("/api/billing/quota/check", json=write),
            "usage": c.get("/api/billing/usage", params={"user_id": uid}),
            "refused": c.post("/api/billing/usage", json={**write, "user_id": 987_654}),
            "webhook": c.post("/api/billing/webhook", content=b"{}"),
            "repeated": c.get("/api/billing/usage", headers=[("Idempotency-Key", "a")] * 2),
        }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "record": 201,
        "check": 200,
        "usage": 200,
        "refused": 404,
        "webhook": 400,
        "repeated": 400,
    }
    for name, r in answers.items():
        assert r.headers.get_list("vary") == ["Origin"], (name, r.headers)
