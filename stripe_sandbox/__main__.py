"""``python -m stripe_sandbox``: run the Stripe sandbox server."""

from __future__ import annotations

import argparse
import json
import os

import uvicorn

from .app import create_app
from .config import DEFAULT_HOST, DEFAULT_PORT, Plan, SandboxConfig


def plans_json(text: str) -> list[Plan]:
    """`--plans`: a JSON list of Plan fields, checked here so a bad one is a usage error."""
    try:
        plans = [Plan(*fields) for fields in json.loads(text)]
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"not a JSON list of plans: {err}") from err
    for plan in plans:
        if not (isinstance(plan.unit_amount, int) and plan.unit_amount >= 0):
            raise argparse.ArgumentTypeError(f"{plan.price_id}: unit_amount must be an integer")
    return plans


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_sandbox",
        description="A local Stripe-compatible fake server (test mode only).",
    )
    parser.add_argument("--host", default=os.environ.get("STRIPE_SANDBOX_HOST", DEFAULT_HOST))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("STRIPE_SANDBOX_PORT", DEFAULT_PORT))
    )
    parser.add_argument("--webhook-url", help="POST events here (env STRIPE_SANDBOX_WEBHOOK_URL)")
    parser.add_argument("--webhook-secret", help="signing secret (env STRIPE_WEBHOOK_SECRET)")
    parser.add_argument(
        "--public-url", help="base URL of the checkout/portal pages (env STRIPE_SANDBOX_PUBLIC_URL)"
    )
    parser.add_argument("--api-key", help="accepted secret key (any sk_test_... also works)")
    parser.add_argument(
        "--plans",
        type=plans_json,
        help="the prices to seed, a JSON list of [price_id, product_name, unit_amount, "
        "currency, interval] (default: Basic, Pro and Enterprise at 19, 99 and 499 usd)",
    )
    parser.add_argument(
        "--business-name", help="the merchant on checkout, portal and invoices (Sandbox Inc.)"
    )
    parser.add_argument("--app-name", help='the portal\'s "Return to ..." link (Billing App)')
    args = parser.parse_args(argv)

    config = SandboxConfig.from_env(
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        public_url=args.public_url,
        api_key=args.api_key,
        plans=args.plans,
        business_name=args.business_name,
        app_name=args.app_name,
    )
    if not config.public_url:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        config.public_url = f"http://{host}:{args.port}"
    print(
        f"Stripe sandbox on http://{args.host}:{args.port}  (pages: {config.public_url})\n"
        f"  api key: {config.api_key} (or any sk_test_...)   api version: "
        f"{__import__('stripe').api_version}\n"
        f"  webhooks -> {config.webhook_url or '(none)'}   secret: {config.webhook_secret}",
        flush=True,
    )
    uvicorn.run(  # date_header: the sandbox dates its answers by its own clock
        create_app(config), host=args.host, port=args.port, log_level="info", date_header=False
    )


if __name__ == "__main__":
    main()
