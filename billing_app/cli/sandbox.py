"""`billing-app sandbox run`: the offline Stripe sandbox, wired to this app's settings."""

from __future__ import annotations

import errno
import socket

import click

from billing_app.cli import ErrorGroup

WEBHOOK_PATH = "/api/billing/webhook"


def catalog_prices() -> list[tuple[str, str, int, str, str]]:
    """The sandbox's prices from the app's catalog (BILLING_PLANS_JSON applied), as
    (price_id, product_name, unit_amount, currency, interval): checkout and invoices then
    charge what the plan cards show, not the sandbox's built-in 19/99/499 usd."""
    from billing_app.plans import get_catalog

    return [
        (plan.stripe_price_id, plan.name, plan.amount, plan.currency, "month")
        for plan in get_catalog().values()
        if plan.stripe_price_id is not None
    ]


def port_taken(host: str, port: int) -> bool:
    """Whether another process holds `port` on `host` (bound as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return False
    except OSError as err:
        return err.errno == errno.EADDRINUSE  # anything else: uvicorn says what


@click.group(name="sandbox", cls=ErrorGroup)
def group() -> None:
    """The local Stripe sandbox (development and tests)."""


@group.command("run")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port (default STRIPE_SANDBOX_PORT, 12111)",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--webhook-url",
    default=None,
    help=f"Where events are POSTed (default API_URL + {WEBHOOK_PATH})",
)
def run(port: int | None, host: str, webhook_url: str | None) -> None:
    """Serve the sandbox until interrupted; the app reaches it via STRIPE_API_BASE."""
    import uvicorn

    from billing_app.brand import BRAND
    from billing_app.settings import SANDBOX_SECRET_KEY, ConfigError, get_settings_or_exit
    from stripe_sandbox import SandboxConfig, create_app

    settings = get_settings_or_exit()
    # A real key with STRIPE_API_BASE set is the README's rehearsal against the sandbox.
    if not settings.uses_stripe_sandbox and settings.stripe_api_base is None:
        click.echo(
            "warning: STRIPE_SECRET_KEY is a real key, so the app talks to Stripe, not to "
            "this sandbox.",
            err=True,
        )
    source = "STRIPE_SANDBOX_PORT" if port is None else "--port"
    port = settings.stripe_sandbox_port if port is None else port
    if port_taken(host, port):
        # uvicorn's own refusal is a log line and exit 3, after the banner.
        raise ConfigError(
            f"port {port} ({source}) is in use; stop what holds it or choose another port"
        )
    public_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    config = SandboxConfig(
        api_key=SANDBOX_SECRET_KEY,
        webhook_url=webhook_url or settings.api_url.rstrip("/") + WEBHOOK_PATH,
        webhook_secret=settings.stripe_webhook_secret or "whsec_sandbox_secret",
        public_url=f"http://{public_host}:{port}",
        plans=list(catalog_prices()),
        business_name=BRAND,
        app_name=BRAND,
    )
    click.echo(
        f"Stripe sandbox on http://{host}:{port}; webhooks -> {config.webhook_url}", err=True
    )
    # The sandbox dates its answers by its own clock (the app orders them by it).
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", date_header=False)
