"""`Cache-Control: no-store` on the API's answers: most depend on who asked (a user's
usage, invoices, the admin lists), and a shared proxy or the browser's cache must not
keep one person's answer to hand to another, or to show after sign-out.

One rule for every /api/ answer, both lanes (the fast lane appends NO_STORE itself):
the few that depend on no one (health, the webhook's, an unknown path's 404) are small
and never worth caching. Only the API's documents (OpenAPI, the docs page and its
Swagger UI files) are the same for everyone and may be cached.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_STORE = (b"cache-control", b"no-store")
_DOCUMENTS = ("/api/docs", "/api/openapi.json")


def stores_nothing(path: str) -> bool:
    """Whether the answer to `path` gets NO_STORE: any /api/ path but the documents."""
    return path.startswith("/api/") and not path.startswith(_DOCUMENTS)


class NoStoreMiddleware:
    """NO_STORE on the /api/ answers (stores_nothing), unless a route set its own
    Cache-Control."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not stores_nothing(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    message = {**message, "headers": [*headers, NO_STORE]}
            await send(message)

        await self.app(scope, receive, no_store)
