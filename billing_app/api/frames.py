"""The pages refuse to be framed by any other page (clickjacking).

A page of the same site (another port of the host, a sibling subdomain) gets the
SameSite=Lax session cookie sent into an iframe of the app: it could show a signed-in
admin's console under a decoy and have the admin click "Revoke" or "Create key". The
event socket's Origin check does not help there: the framed page is the app's own.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Both: frame-ancestors is the standard, X-Frame-Options what older browsers read.
NO_FRAMES = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)


def no_framing(app: ASGIApp) -> ASGIApp:
    """`app` with NO_FRAMES on every HTML answer (the pages, the API docs). JSON answers
    are not documents a frame shows, and the fast lane's equal theirs."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def framed_never(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message["headers"])
                if _is_html(headers):
                    message = {**message, "headers": headers + NO_FRAMES}
            await send(message)

        await app(scope, receive, framed_never)

    return asgi
