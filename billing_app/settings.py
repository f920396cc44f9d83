"""Settings from the environment and `.env`, validated once at start.

With no `STRIPE_SECRET_KEY` the app runs against the local Stripe sandbox
(`stripe_sandbox/`), so a newcomer needs no keys. With a real key, the webhook
secret and the three price ids become required.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SANDBOX_SECRET_KEY = "sk_test_sandbox"
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox_secret"
SANDBOX_PRICES = {
    "basic": "price_sandbox_basic",
    "pro": "price_sandbox_pro",
    "enterprise": "price_sandbox_enterprise",
}


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=PROJECT_ROOT / ".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = f"sqlite:///{PROJECT_ROOT / 'billing.db'}"
    db_pool_size: int = Field(default=10, ge=1, le=200)

    stripe_secret_key: str | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_price_basic: str | None = None
    stripe_price_pro: str | None = None
    stripe_price_enterprise: str | None = None
    stripe_api_base: str | None = None
    stripe_sandbox_port: int = Field(default=12111, ge=1, le=65535)
    # Days a past_due subscription keeps its paid quotas before falling back to free.
    past_due_grace_days: int = Field(default=7, ge=0, le=365)

    # JSON object overriding plan fields, e.g. {"pro": {"limits": {"tokens": 2000000}}}.
    billing_plans_json: str | None = None

    # Where Checkout and the portal send people back; the app serves on PORT.
    app_url: str = f"http://localhost:{os.environ.get('PORT', '8000')}"
    api_url: str = f"http://localhost:{os.environ.get('PORT', '8000')}"
    admin_emails: str = ""
    session_secret: str = "dev-insecure-session-secret-change-me"
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None

    environment: Literal["dev", "prod", "test"] = "dev"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        if v.startswith("postgres://"):
            v = "postgresql://" + v.removeprefix("postgres://")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        return v

    @field_validator("stripe_secret_key")
    @classmethod
    def _check_secret_key(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("sk_", "rk_")):
            raise ValueError("must start with sk_ or rk_ (a Stripe secret or restricted key)")
        return v

    @field_validator("stripe_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith("whsec_"):
            raise ValueError("must start with whsec_")
        return v

    @field_validator("stripe_price_basic", "stripe_price_pro", "stripe_price_enterprise")
    @classmethod
    def _check_price(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith("price_"):
            raise ValueError("must be a Stripe price id starting with price_")
        return v

    @model_validator(mode="after")
    def _sandbox_or_real(self) -> Settings:
        if self.stripe_secret_key is None:
            # Embedded default: the local sandbox, with its fixed key, secret and prices.
            self.stripe_secret_key = SANDBOX_SECRET_KEY
            self.stripe_webhook_secret = self.stripe_webhook_secret or SANDBOX_WEBHOOK_SECRET
            self.stripe_api_base = (
                self.stripe_api_base or f"http://127.0.0.1:{self.stripe_sandbox_port}"
            )
            for plan, price in SANDBOX_PRICES.items():
                if getattr(self, f"stripe_price_{plan}") is None:
                    setattr(self, f"stripe_price_{plan}", price)
            return self
        for name in (
            "stripe_webhook_secret",
            "stripe_price_basic",
            "stripe_price_pro",
            "stripe_price_enterprise",
        ):
            if getattr(self, name) is None:
                raise ValueError(f"{name.upper()} is required when STRIPE_SECRET_KEY is set")
        return self

    @property
    def uses_stripe_sandbox(self) -> bool:
        return self.stripe_secret_key == SANDBOX_SECRET_KEY

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def admin_email_set(self) -> frozenset[str]:
        return frozenset(e.strip().lower() for e in self.admin_emails.split(",") if e.strip())


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = first.get("loc") or ()
    name = str(loc[0]).upper() if loc else ""
    msg = first.get("msg", "invalid").removeprefix("Value error, ")
    if name:
        return f"configuration error: {name} {msg}"
    return f"configuration error: {msg}"


def load_settings(**overrides: object) -> Settings:
    """Build settings; raise ConfigError with one line naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def get_settings_or_exit() -> Settings:
    """For entry points: print the one-line error and exit instead of a traceback. The
    plan catalog (BILLING_PLANS_JSON) is checked too, so a bad one stops the start, not
    the first request."""
    from billing_app.plans import get_catalog  # plans imports this module

    try:
        settings = get_settings()
        get_catalog()
        return settings
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
