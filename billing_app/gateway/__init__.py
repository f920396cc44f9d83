"""Stripe, reached only through here. `stripe_gateway` is the one module importing `stripe`;
`parsing` reads Stripe objects (current and older API shapes) into typed records."""

from billing_app.gateway.stripe_gateway import (
    STRIPE_API_VERSION,
    StripeGateway,
    get_gateway,
    idempotency_key,
)

__all__ = ["STRIPE_API_VERSION", "StripeGateway", "get_gateway", "idempotency_key"]
