"""Configuration of the sandbox: accepted key, webhook target, public URL and the seeded catalog."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import stripe

# The API version stripe-python 16.1.0 pins; events and responses claim it unless the client
# sends another Stripe-Version header (which is then echoed back).
API_VERSION: str = stripe.api_version

DEFAULT_PORT = 12111
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Plan:
    """One seeded recurring price and its product."""

    price_id: str
    product_name: str
    unit_amount: int
    currency: str = "usd"
    interval: str = "month"

    @property
    def product_id(self) -> str:
        # price_sandbox_pro -> prod_sandbox_pro: stable ids make fixtures and demos predictable.
        return "prod_" + self.price_id.removeprefix("price_")

    @property
    def lookup_key(self) -> str:
        return self.product_name.lower().replace(" ", "_")


DEFAULT_PLANS: tuple[Plan, ...] = (
    Plan("price_sandbox_basic", "Basic", 1900, "usd", "month"),
    Plan("price_sandbox_pro", "Pro", 9900, "usd", "month"),
    Plan("price_sandbox_enterprise", "Enterprise", 49900, "usd", "month"),
)


@dataclass
class SandboxConfig:
    """Settings for one sandbox instance.

    ``plans`` accepts :class:`Plan` objects or plain tuples
    ``(price_id, product_name, unit_amount, currency, interval)``.
    ``public_url`` is the base URL of the human pages (checkout, portal, invoices); ``None``
    means "where the server listens" (SandboxServer and the CLI fill it in).
    """

    api_key: str = "sk_test_sandbox"
    webhook_url: str | None = None
    webhook_secret: str = "whsec_sandbox_secret"
    public_url: str | None = None
    plans: list[Plan | tuple] = field(default_factory=lambda: list(DEFAULT_PLANS))
    app_name: str = "Billing App"  # shown on the portal's "Return to ..." link
    business_name: str = "Sandbox Inc."  # the merchant shown on checkout, invoices and the PDF
    # How a plan switch in the portal is billed: "always_invoice" charges the prorated
    # difference at once (visible in the demo); "create_prorations" defers it to the renewal.
    portal_proration_behavior: str = "always_invoice"
    webhook_max_attempts: int = 8
    webhook_retry_base: float = 0.5  # seconds; doubles per attempt (0.5, 1, 2, 4 ...)
    webhook_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.plans = [p if isinstance(p, Plan) else Plan(*p) for p in self.plans]
        if self.public_url:
            self.public_url = self.public_url.rstrip("/")

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

    def accepts_key(self, key: str) -> bool:
        # Any test-mode secret key works, like a developer's own sk_test_ key would.
        return bool(key) and (key == self.api_key or key.startswith("sk_test_"))

    @classmethod
    def from_env(cls, **overrides: object) -> SandboxConfig:
        """Build a config from STRIPE_SANDBOX_* / STRIPE_WEBHOOK_SECRET, then apply overrides."""
        values: dict[str, object] = {}
        if url := os.environ.get("STRIPE_SANDBOX_WEBHOOK_URL"):
            values["webhook_url"] = url
        if secret := os.environ.get("STRIPE_WEBHOOK_SECRET"):
            values["webhook_secret"] = secret
        if public := os.environ.get("STRIPE_SANDBOX_PUBLIC_URL"):
            values["public_url"] = public
        if key := os.environ.get("STRIPE_SANDBOX_API_KEY"):
            values["api_key"] = key
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
