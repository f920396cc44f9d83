"""Cross-origin reads with the user's cookie: only from the app's own origins; the
event websocket only from them at all.

Reflex answers CORS for every origin with credentials allowed (its default `*`, echoed
back). Its websocket needs that list, so the list stays; this layer, outside Reflex's,
takes the CORS headers off any HTTP answer to another origin. A page elsewhere on the
same site (a sibling subdomain, another port of localhost), which the browser sends the
SameSite=Lax cookie from, can then not read an admin's export or a user's usage.

Reflex adds Starlette's CORS middleware at three levels (its own routes, the FastAPI app
it mounts under ours, the top app), each appending `Origin` to `Vary`: answers said
`Vary: Origin, Origin` (`/ping` thrice). This layer, outside them all, sends one `Vary`
with each name once.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_app.api.deps import own_origins


def one_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with their `Vary` headers as one, each name once (first spelling, first
    place kept); as they were when there is nothing to merge."""
    varies = [v for k, v in headers if k.lower() == b"vary"]
    if not varies:
        return headers
    names: dict[bytes, bytes] = {}
    for value in varies:
        for name in value.split(b","):
            name = name.strip()
            if name:
                names.setdefault(name.lower(), name)
    merged = b", ".join(names.values())
    if len(varies) == 1 and merged == varies[0]:
        return headers
    return [(k, v) for k, v in headers if k.lower() != b"vary"] + [(b"vary", merged)]


def own_origins_only(app: ASGIApp) -> ASGIApp:
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        http = scope["type"] == "http"
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        host = headers.get(b"host")
        if origin is None or origin.decode("latin-1").lower().rstrip("/") in own_origins(
            host.decode("latin-1") if host is not None else None
        ):
            if not http:
                await app(scope, receive, send)
                return

            async def vary_once(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": one_vary(list(message["headers"]))}
                await send(message)

            await app(scope, receive, vary_once)
            return
        if scope["type"] == "websocket":
            # The event socket (/_event) acts with the cookie it was opened with: a page
            # of another origin (same site: the cookie goes along) would drive the user's
            # State, an admin's included, and read its answers. Browsers always send
            # Origin on a websocket; refused before the handshake (HTTP 403).
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return

        async def without_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v)
                    for k, v in message["headers"]
                    if not k.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": one_vary(kept)}
            await send(message)

        await app(scope, receive, without_cors)

    return asgi
