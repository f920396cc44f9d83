"""The plan catalog: one place that maps plan keys to prices, limits and reset rules."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

from billing_app.metrics import METRICS
from billing_app.settings import ConfigError, Settings, get_settings

ResetRule = Literal["calendar_month", "billing_period"]
PLAN_KEYS: tuple[str, ...] = ("free", "basic", "pro", "enterprise")
PAID_PLAN_KEYS: tuple[str, ...] = ("basic", "pro", "enterprise")


@dataclass(frozen=True)
class Plan:
    key: str
    name: str
    # Monthly price in minor units of `currency`; 0 for free.
    amount: int
    currency: str
    stripe_price_id: str | None
    limits: dict[str, int] = field(default_factory=dict)
    reset: ResetRule = "calendar_month"
    description: str = ""

    def limit_for(self, metric: str) -> int:
        return self.limits.get(metric, 0)

    @property
    def is_paid(self) -> bool:
        return self.stripe_price_id is not None


_DEFAULTS: dict[str, dict] = {
    "free": {"name": "Free", "amount": 0, "description": "For trying things out"},
    "basic": {"name": "Basic", "amount": 1900, "description": "For individuals and side projects"},
    "pro": {"name": "Pro", "amount": 9900, "description": "For teams shipping to production"},
    "enterprise": {
        "name": "Enterprise",
        "amount": 49900,
        "description": "Unlimited usage, priority support",
    },
}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_money(key: str, extra: dict) -> None:
    """Prices are integer minor units and ISO currency codes: a float or a string here would
    only fail later, mid-request (comparing plans, billing)."""
    if "amount" in extra and not _is_count(extra["amount"]):
        raise ConfigError(
            f"configuration error: BILLING_PLANS_JSON plan {key!r} amount must be a "
            f"non-negative integer in minor units (e.g. 9900 for 99.00), got {extra['amount']!r}"
        )
    currency = extra.get("currency", "usd")
    if not (isinstance(currency, str) and re.fullmatch(r"[a-z]{3}", currency)):
        raise ConfigError(
            f"configuration error: BILLING_PLANS_JSON plan {key!r} currency must be a "
            f"3-letter lowercase ISO code such as 'usd', got {currency!r}"
        )


def build_catalog(settings: Settings) -> dict[str, Plan]:
    """The plans with BILLING_PLANS_JSON applied; ConfigError (one line) if it is bad."""
    overrides: dict = {}
    if settings.billing_plans_json:
        try:
            overrides = json.loads(settings.billing_plans_json)
            assert isinstance(overrides, dict)
        except (ValueError, AssertionError):
            raise ConfigError(
                "configuration error: BILLING_PLANS_JSON must be a JSON object"
            ) from None
    # Keys are the lowercase plan keys: "Pro" or a typo would otherwise be ignored silently.
    unknown_plans = sorted(set(overrides) - set(PLAN_KEYS))
    if unknown_plans:
        raise ConfigError(
            f"configuration error: BILLING_PLANS_JSON has unknown plan {unknown_plans[0]!r} "
            f"(known: {', '.join(PLAN_KEYS)})"
        )
    catalog: dict[str, Plan] = {}
    for key in PLAN_KEYS:
        base = _DEFAULTS[key]
        plan = Plan(
            key=key,
            name=base["name"],
            amount=base["amount"],
            currency="usd",
            stripe_price_id=getattr(settings, f"stripe_price_{key}", None),
            limits={m.key: m.limits[key] for m in METRICS.values()},
            description=base["description"],
        )
        extra = overrides.get(key) or {}
        if not isinstance(extra, dict):
            raise ConfigError(
                f"configuration error: BILLING_PLANS_JSON plan {key!r} must be a JSON object"
            )
        _check_money(key, extra)
        unknown = set(extra) - {"name", "amount", "currency", "limits", "reset", "description"}
        if unknown:
            raise ConfigError(
                f"configuration error: BILLING_PLANS_JSON plan {key!r} has unknown field "
                f"{sorted(unknown)[0]!r}"
            )
        if "limits" in extra:
            if not isinstance(extra["limits"], dict):
                raise ConfigError(
                    f"configuration error: BILLING_PLANS_JSON plan {key!r} limits must be a "
                    "JSON object"
                )
            bad = set(extra["limits"]) - set(METRICS)
            if bad:
                raise ConfigError(
                    f"configuration error: BILLING_PLANS_JSON plan {key!r} has unknown metric "
                    f"{sorted(bad)[0]!r}"
                )
            for metric, value in extra["limits"].items():
                if not _is_count(value):
                    raise ConfigError(
                        f"configuration error: BILLING_PLANS_JSON plan {key!r} limits.{metric} "
                        f"must be a non-negative integer (0 = unlimited), got {value!r}"
                    )
            extra = {**extra, "limits": {**plan.limits, **extra["limits"]}}
        if extra.get("reset", "calendar_month") not in ("calendar_month", "billing_period"):
            raise ConfigError(
                f"configuration error: BILLING_PLANS_JSON plan {key!r} reset must be "
                "calendar_month or billing_period"
            )
        catalog[key] = replace(plan, **extra)
    currencies = {catalog[k].currency for k in PAID_PLAN_KEYS}
    if len(currencies) > 1:
        # A Stripe customer pays in one currency, plan changes compare amounts, and the
        # admin's MRR adds them up.
        raise ConfigError(
            "configuration error: BILLING_PLANS_JSON plans must share one currency, got "
            + ", ".join(sorted(currencies))
        )
    (currency,) = currencies
    catalog["free"] = replace(catalog["free"], currency=currency)
    return catalog


def catalog_currency() -> str:
    """The one currency every plan is priced in (`usd` unless BILLING_PLANS_JSON says)."""
    return get_catalog()["pro"].currency


@lru_cache(maxsize=1)
def get_catalog() -> dict[str, Plan]:
    """The catalog for the current settings, built once."""
    return build_catalog(get_settings())


def get_plan(key: str) -> Plan | None:
    return get_catalog().get(key)


def plan_for_price(price_id: str | None) -> Plan | None:
    if not price_id:
        return None
    for plan in get_catalog().values():
        if plan.stripe_price_id == price_id:
            return plan
    return None


def plan_price_ids() -> frozenset[str]:
    """The Stripe price ids of the paid plans (what tells a plan item from an add-on)."""
    return frozenset(p.stripe_price_id for p in get_catalog().values() if p.stripe_price_id)
