"""Settings from the environment and `.env`, validated once at start.

With no `STRIPE_SECRET_KEY` the app runs against the local Stripe sandbox
(`stripe_sandbox/`), so a newcomer needs no keys. With a real key, the webhook
secret and the three price ids become required.

The sandbox is for this machine only: its webhook secret is in the source, so
anyone who can reach the app could sign a webhook granting any plan. It is refused
when ENVIRONMENT=prod or when APP_URL/API_URL point elsewhere, unless
ENVIRONMENT=dev (or test) is set explicitly. For the same reason the default
SESSION_SECRET is refused in prod and with real Stripe on a public URL.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
DEV_SESSION_SECRET = "dev-insecure-session-secret-change-me"
# One address per ADMIN_EMAILS entry: "a@x.com;b@x.com" or "a@x.com b@x.com" made no one
# an admin, silently.
_ADMIN_EMAIL = re.compile(r"[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+")
# 32 characters is 128+ bits from `openssl rand -hex 32` (64) or any password manager.
SESSION_SECRET_MIN_LENGTH = 32


def is_local_url(url: str) -> bool:
    """True when the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

    # The app's one port (UI and API); rxconfig.py takes it from here, so `.env` works too.
    port: int = Field(default=8000, ge=1, le=65535)
    # Where Checkout and the portal send people back; empty = http://localhost:PORT.
    app_url: str = ""
    api_url: str = ""
    # Reflex state in Redis (several workers); rxconfig.py passes it to Reflex.
    reflex_redis_url: str | None = None
    admin_emails: str = ""
    # Reverse proxies whose X-Forwarded-For / -Proto are believed (IPs or CIDRs, comma-
    # separated). Empty: none, so a client cannot pick the address its login limit counts.
    trusted_proxies: str = ""
    session_secret: str = DEV_SESSION_SECRET
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None

    environment: Literal["dev", "prod", "test"] = "dev"
    # The app's own loggers (`billing_app.*`) on stderr; libraries stay at WARNING.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, v: str) -> str:
        for part in (p.strip() for p in v.split(",")):
            if not part:
                continue
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network (CIDR)") from None
        return v

    @property
    def trusted_proxy_list(self) -> list[str]:
        """Addresses as written, networks normalised (10.0.0.1/8 -> 10.0.0.0/8)."""
        parts = (p.strip() for p in self.trusted_proxies.split(","))
        return [str(ipaddress.ip_network(p, strict=False)) if "/" in p else p for p in parts if p]

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

    @field_validator("app_url", "api_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        v = v.strip()
        if v and not (urlsplit(v).scheme in ("http", "https") and urlsplit(v).hostname):
            raise ValueError("must be an http:// or https:// URL, e.g. https://billing.example.com")
        return v

    @field_validator("stripe_api_base")
    @classmethod
    def _check_api_base(cls, v: str | None) -> str | None:
        # Malformed, every Stripe call failed as "could not reach Stripe, try again".
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not (urlsplit(v).scheme in ("http", "https") and urlsplit(v).hostname):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:12111")
        return v

    @field_validator("admin_emails")
    @classmethod
    def _check_admin_emails(cls, v: str) -> str:
        for part in (p.strip() for p in v.split(",")):
            if part and not _ADMIN_EMAIL.fullmatch(part):
                raise ValueError(f"{part!r} is not an email address (separate several with commas)")
        return v

    @field_validator("reflex_redis_url", "oidc_issuer", "oidc_client_id", "oidc_client_secret")
    @classmethod
    def _empty_is_unset(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        return v.strip()

    @field_validator("reflex_redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        # Reflex refuses another scheme at start, with a traceback: say it here, in one line.
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
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
    def _check_deployment(self) -> Settings:
        # Before anything below assigns fields: assignment adds to model_fields_set.
        explicit_env = "environment" in self.model_fields_set
        explicit_database = "database_url" in self.model_fields_set
        self.app_url = self.app_url or f"http://localhost:{self.port}"
        self.api_url = self.api_url or f"http://localhost:{self.port}"
        exposed = next(
            (
                (name, url)
                for name, url in (("APP_URL", self.app_url), ("API_URL", self.api_url))
                if not is_local_url(url)
            ),
            None,
        )
        self._check_oidc()
        if self.stripe_secret_key is None:
            self._refuse_sandbox_off_this_machine(exposed, explicit_env)
        self._sandbox_or_real()
        # Real Stripe on a public URL is a deployment; ENVIRONMENT=test (only ever set
        # explicitly, by the test suites) builds such settings to test the gateway.
        real_and_public = not self.uses_stripe_sandbox and exposed and self.environment != "test"
        if self.environment == "prod" or real_and_public:
            self._require_session_secret(exposed)
            self._require_https()
            if not explicit_database:
                # The default is a SQLite file in the checkout: a deployment whose
                # DATABASE_URL did not arrive would keep its customers there.
                why = "ENVIRONMENT=prod" if self.environment == "prod" else "serving real Stripe"
                raise ValueError(
                    f"DATABASE_URL must be set when {why} (the default is a SQLite file "
                    "in the project directory)"
                )
        workers = _granian_workers()
        if self.environment == "prod" and workers is not None:
            self._require_redis_for_workers(workers)
        return self

    def _require_redis_for_workers(self, workers: int) -> None:
        # Each worker keeps page state in its own memory, so a socket landing on another
        # worker loses it.
        if workers > 1 and not self.reflex_redis_url:
            raise ValueError(
                f"REFLEX_REDIS_URL is required when ENVIRONMENT=prod runs {workers} workers "
                "(GRANIAN_WORKERS): each keeps the pages' state in its own memory, so a page "
                "whose connection reaches another worker loses it (or set GRANIAN_WORKERS=1)"
            )

    def _check_oidc(self) -> None:
        # An issuer alone makes the login page offer SSO whose routes then 404.
        if self.oidc_issuer:
            missing = [n for n in ("oidc_client_id", "oidc_client_secret") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    f"{' and '.join(m.upper() for m in missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} required when OIDC_ISSUER is set"
                )

    def _refuse_sandbox_off_this_machine(
        self, exposed: tuple[str, str] | None, explicit_env: bool
    ) -> None:
        # The sandbox's webhook secret is public and its checkout takes test cards:
        # reachable by others, it lets anyone grant themselves any plan.
        if self.environment == "prod":
            raise ValueError(
                "STRIPE_SECRET_KEY is required when ENVIRONMENT=prod: the local Stripe "
                "sandbox's webhook secret is public"
            )
        if exposed and not explicit_env:
            name, url = exposed
            raise ValueError(
                f"STRIPE_SECRET_KEY is required when {name} ({url}) is not on this machine: "
                "the local Stripe sandbox's webhook secret is public (set ENVIRONMENT=dev to "
                "demo the sandbox on a network)"
            )

    def _require_session_secret(self, exposed: tuple[str, str] | None) -> None:
        if self.environment == "prod" or exposed is None:
            why = "ENVIRONMENT=prod"
        else:
            why = f"{exposed[0]} ({exposed[1]}) is not on this machine"
        if self.session_secret == DEV_SESSION_SECRET:
            raise ValueError(
                f"SESSION_SECRET must be set when {why} (the default is public): use "
                f"{SESSION_SECRET_MIN_LENGTH}+ random characters, e.g. `openssl rand -hex 32`"
            )
        if len(self.session_secret) < SESSION_SECRET_MIN_LENGTH:
            raise ValueError(
                f"SESSION_SECRET is {len(self.session_secret)} characters: use "
                f"{SESSION_SECRET_MIN_LENGTH}+ random characters, e.g. `openssl rand -hex 32`"
            )

    def _require_https(self) -> None:
        # The session cookie is Secure only over https: on http:// off this machine it
        # would cross the network in clear, for anyone on the path to sign in with.
        why = "ENVIRONMENT=prod" if self.environment == "prod" else "serving real Stripe"
        for name, url in (("APP_URL", self.app_url), ("API_URL", self.api_url)):
            if urlsplit(url).scheme != "https" and not is_local_url(url):
                raise ValueError(
                    f"{name} ({url}) must be https:// when {why}: over http:// the session "
                    "cookie crosses the network unencrypted, for anyone on the way to take "
                    "(serve TLS, e.g. at a reverse proxy named in TRUSTED_PROXIES)"
                )

    def _sandbox_or_real(self) -> None:
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
            return
        for name in (
            "stripe_webhook_secret",
            "stripe_price_basic",
            "stripe_price_pro",
            "stripe_price_enterprise",
        ):
            if getattr(self, name) is None:
                raise ValueError(f"{name.upper()} is required when STRIPE_SECRET_KEY is set")

    @property
    def uses_stripe_sandbox(self) -> bool:
        return self.stripe_secret_key == SANDBOX_SECRET_KEY

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def admin_email_set(self) -> frozenset[str]:
        return frozenset(e.strip().lower() for e in self.admin_emails.split(",") if e.strip())


def _granian_workers() -> int | None:
    """GRANIAN_WORKERS, which `reflex run --env prod` reads from the process environment
    only (not `.env`); None when unset (one worker without Redis). Reflex's own int() of
    a bad value is a traceback after the build: refuse it here, in one line."""
    raw = os.environ.get("GRANIAN_WORKERS", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"GRANIAN_WORKERS ({raw}) must be a whole number of workers, 1+")
    return int(raw)


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
