"""Behind a reverse proxy: the client's address and scheme from the proxy's headers.

The production server (granian, as `reflex run --env prod` starts it) applies no proxy
headers, so behind nginx every request came from the proxy's address: the per-IP login
limit then counted all users together (20 strangers' failures locked everyone out), and
the SSO callback URL was http:// behind a TLS proxy. Only the proxies TRUSTED_PROXIES
names are believed: otherwise any client could name the address its limit counts."""

from __future__ import annotations

from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from billing_app.settings import get_settings


def behind_proxies(app: ASGIApp) -> ASGIApp:
    """`app` reading X-Forwarded-For and X-Forwarded-Proto from the trusted proxies (the
    right-most address no trusted proxy added is the client), or `app` itself when
    TRUSTED_PROXIES is empty."""
    trusted = get_settings().trusted_proxy_list
    if not trusted:
        return app
    return ProxyHeadersMiddleware(app, trusted_hosts=trusted)  # type: ignore[arg-type]
