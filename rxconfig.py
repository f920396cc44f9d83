"""Reflex configuration. Ports and URLs follow the environment so prod can differ."""

import os

import reflex as rx
from reflex.plugins.sitemap import SitemapPlugin

config = rx.Config(
    app_name="billing_app",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    # Production (`reflex run --env prod`) serves frontend and backend on one port.
    frontend_port=int(os.environ.get("PORT", "8000")),
    backend_port=int(os.environ.get("PORT", "8000")),
    api_url=os.environ.get("API_URL", f"http://localhost:{os.environ.get('PORT', '8000')}"),
    deploy_url=os.environ.get("APP_URL", f"http://localhost:{os.environ.get('PORT', '8000')}"),
    redis_url=os.environ.get("REFLEX_REDIS_URL") or None,
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(
                appearance="light", accent_color="indigo", gray_color="slate", radius="large"
            )
        )
    ],
    disable_plugins=[SitemapPlugin],
)
