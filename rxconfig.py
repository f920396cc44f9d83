"""Reflex configuration. Port, URLs and Redis come from the app's Settings (environment
and `.env`, validated), so Reflex serves where Checkout returns to; a bad value stops
here with the settings' one-line message."""

from urllib.parse import urlsplit

import reflex as rx
from reflex.plugins.sitemap import SitemapPlugin

from billing_app.settings import get_settings_or_exit, is_local_url

settings = get_settings_or_exit()


def _listen_host() -> str:
    """With the local Stripe sandbox its webhook secret is public: whoever reaches the
    webhook could give themselves any plan, so the app then listens on this machine only,
    unless its URLs say it is served on a network (which needs ENVIRONMENT=dev set
    explicitly: the README's sandbox demo on a network). Served at http://[::1], it
    listens there: 127.0.0.1 would not answer it."""
    urls = (settings.app_url, settings.api_url)
    if not (settings.uses_stripe_sandbox and all(is_local_url(u) for u in urls)):
        return "0.0.0.0"
    return "::1" if {urlsplit(u).hostname for u in urls} == {"::1"} else "127.0.0.1"


config = rx.Config(
    app_name="billing_app",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    # Production (`reflex run --env prod`) serves frontend and backend on one port.
    frontend_port=settings.port,
    backend_port=settings.port,
    api_url=settings.api_url,
    backend_host=_listen_host(),
    deploy_url=settings.app_url,
    redis_url=settings.reflex_redis_url,
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(
                appearance="light", accent_color="indigo", gray_color="slate", radius="large"
            )
        )
    ],
    disable_plugins=[SitemapPlugin],
)
