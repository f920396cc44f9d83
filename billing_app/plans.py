"""The plan catalog: one place that maps plan keys to prices, limits and reset rules."""

from __future__ import annotations

import json
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


def build_catalog(settings: Settings) -> dict[str, Plan]:
    overrides: dict = {}
    if settings.billing_plans_json:
        try:
            overrides = json.loads(settings.billing_plans_json)
            assert isinstance(overrides, dict)
        except (ValueError, AssertionError):
            raise ConfigError(
                "configuration error: BILLING_PLANS_JSON must be a JSON object"
            ) from None
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
        unknown = set(extra) - {"name", "amount", "currency", "limits", "reset", "description"}
        if unknown:
            raise ConfigError(
                f"configuration error: BILLING_PLANS_JSON plan {key!r} has unknown field "
                f"{sorted(unknown)[0]!r}"
            )
        if "limits" in extra:
            bad = set(extra["limits"]) - set(METRICS)
            if bad:
                raise ConfigError(
                    f"configuration error: BILLING_PLANS_JSON plan {key!r} has unknown metric "
                    f"{sorted(bad)[0]!r}"
                )
            extra = {**extra, "limits": {**plan.limits, **extra["limits"]}}
        if extra.get("reset", "calendar_month") not in ("calendar_month", "billing_period"):
            raise ConfigError(
                f"configuration error: BILLING_PLANS_JSON plan {key!r} reset must be "
                "calendar_month or billing_period"
            )
        catalog[key] = replace(plan, **extra)
    return catalog


@lru_cache(maxsize=1)
def get_catalog() -> dict[str, Plan]:
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
