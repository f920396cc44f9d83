"""Builds the FastAPI app that Reflex mounts itself under (`rx.App(api_transformer=...)`)."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import redis
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from billing_app.api import admin_routes, auth_routes, billing_routes, errors, service_routes
from billing_app.api import schemas as s
from billing_app.api.no_store import NoStoreMiddleware
from billing_app.db import schema_problem
from billing_app.errors import ServiceUnavailable
from billing_app.settings import get_settings


def create_api() -> FastAPI:
    settings = get_settings()
    api = FastAPI(
        title="Billing API",
        version="1.0.0",
        description=(
            "Stripe subscriptions and usage metering. Authenticate with the session cookie "
            "(`billing_session`, or `__Host-billing_session` over HTTPS, set by "
            "/api/auth/login) or `Authorization: Bearer <API key>`."
        ),
        docs_url=None,  # _install_docs: FastAPI's own page loads Swagger UI from a CDN
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    errors.install(api)

    # Signed cookie holding only the OIDC state/nonce/PKCE verifier between redirects.
    api.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret,
        session_cookie="billing_oidc",
        max_age=600,
        same_site="lax",
        https_only=urlsplit(settings.app_url).scheme == "https",
    )
    api.add_middleware(errors.BodyLimitMiddleware)
    api.add_middleware(errors.SingleHeaderMiddleware)
    # Outermost of these: their own refusals (413, a repeated header) are not stored either.
    api.add_middleware(NoStoreMiddleware)

    @api.get("/api/health", tags=["meta"], responses=s.errors(503))
    def health() -> dict[str, str]:
        """Ready: the database answers and its schema is this code's (503 naming the fix
        otherwise, e.g. an un-migrated database). Asked each time (one small read): a
        load balancer must see a database that went away, or was migrated back.

        Redis down (REFLEX_REDIS_URL) is 200 `degraded`, naming it: the pages cannot
        keep their state, but the JSON API still meters. Every worker shares that Redis,
        so a 503 would take the API out of the load balancer and fix no page."""
        problem = schema_problem()
        if problem is not None:
            raise ServiceUnavailable(problem)
        redis_down = redis_problem(get_settings().reflex_redis_url)
        if redis_down is not None:
            return {"status": "degraded", "problem": redis_down}
        return {"status": "ok"}

    api.include_router(auth_routes.router)
    api.include_router(service_routes.router)
    api.include_router(billing_routes.router)
    api.include_router(admin_routes.router)
    from billing_app.api import webhook  # imports `stripe` (through the gateway)

    api.include_router(webhook.router)

    _install_security_schemes(api)
    _install_docs(api)
    _install_api_fallback(api)
    return api


def redis_problem(url: str | None) -> str | None:
    """None when there is no REFLEX_REDIS_URL or its Redis answers a PING; else one line."""
    if url is None:
        return None
    try:
        _redis_client(url).ping()
    except redis.RedisError:
        return (
            "Redis (REFLEX_REDIS_URL) is unreachable: the pages cannot keep their state; "
            "the JSON API still works."
        )
    return None


@lru_cache(maxsize=4)
def _redis_client(url: str) -> redis.Redis:
    """One client (and pool) per URL: a load balancer's checks every few seconds reuse
    its connection rather than open one each. A dropped connection is reopened by the
    pool on the next PING, so a Redis that returns is seen again."""
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`bk_live_...`): a service's, or a user's own.",
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "billing_session",
        "description": "The browser session (`__Host-billing_session` over HTTPS).",
    },
}


def _install_security_schemes(api: FastAPI) -> None:
    """Declare how to authenticate in /api/openapi.json: /api/docs then has its Authorize
    button, and generated clients send the key. The routes read the caller themselves
    (deps.resolve_principal), so FastAPI cannot see it: an operation that can answer 401
    takes either scheme (sign-in's 401 is a wrong password: it takes none)."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        doc = build()
        doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in doc.get("paths", {}).items():
            for op in operations.values():
                if path == "/api/auth/login" or not isinstance(op, dict):
                    continue
                if "401" in op.get("responses", {}):
                    op["security"] = [{"apiKey": []}, {"sessionCookie": []}]
        return doc

    api.openapi = openapi  # type: ignore[method-assign]


DOCS_PATH = "/api/docs"
DOCS_ASSETS = f"{DOCS_PATH}/assets"


def _install_docs(api: FastAPI) -> None:
    """/api/docs with Swagger UI from a pinned package (fastapi-offline's copy), served
    by the app itself: FastAPI's default page fetches it from cdn.jsdelivr.net, so on a
    network without that host the docs were a blank page."""
    static = files("fastapi_offline") / "static"
    api.mount(DOCS_ASSETS, StaticFiles(directory=str(static)), name="docs-assets")

    @api.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=str(api.openapi_url),
            title=f"{api.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    # FastAPI's default places for its docs, where an engineer tries first: otherwise the
    # pages' 404. Served by the backend, ahead of Reflex (one port with `make run` and in
    # production), so a redirect rather than a page.
    @api.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    @api.api_route("/redoc", methods=["GET", "HEAD"], include_in_schema=False)
    def docs_elsewhere() -> RedirectResponse:
        return RedirectResponse(DOCS_PATH)

    @api.api_route("/openapi.json", methods=["GET", "HEAD"], include_in_schema=False)
    def openapi_elsewhere() -> RedirectResponse:
        return RedirectResponse(str(api.openapi_url))


class ApiFallback(BaseRoute):
    """Unknown /api paths get our error shape (404, or 405 with Allow) instead of falling
    through to Reflex, which is mounted under this app at "" and would answer anything.

    It yields to any route registered after it (e.g. a router included after
    create_api()), so its position in the route list does not matter.
    """

    def __init__(self, router: Any) -> None:
        self.router = router

    def _others(self) -> list[BaseRoute]:
        return [r for r in self.router.routes if r is not self and not isinstance(r, Mount)]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return Match.NONE, {}
        if any(r.matches(scope)[0] == Match.FULL for r in self._others()):
            return Match.NONE, {}
        return Match.FULL, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = sorted(
            method
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if any(r.matches({**scope, "method": method})[0] == Match.FULL for r in self._others())
        )
        if allowed:
            response = errors.error_response(
                405, "method_not_allowed", "Method not allowed.", {"Allow": ", ".join(allowed)}
            )
        else:
            response = errors.error_response(
                404, "not_found", f"No endpoint {scope['method']} {scope['path']}."
            )
        await response(scope, receive, send)


def _install_api_fallback(api: FastAPI) -> None:
    api.router.routes.append(ApiFallback(api.router))
