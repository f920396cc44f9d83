"""BILLING_PLANS_JSON: prices are integer minor units and ISO currency codes; a bad value is
refused when the catalog loads, naming the plan and the field."""

from __future__ import annotations

import json

import pytest

from billing_app.plans import build_catalog
from billing_app.settings import ConfigError, load_settings


def _catalog(overrides: dict):
    return build_catalog(load_settings(billing_plans_json=json.dumps(overrides)))


@pytest.mark.parametrize(
    ("plan", "field", "value", "message"),
    [
        ("pro", "amount", 99.99, "plan 'pro' amount must be a non-negative integer"),
        ("basic", "amount", "19", "plan 'basic' amount must be a non-negative integer"),
        ("pro", "amount", True, "plan 'pro' amount"),
        ("pro", "amount", -1, "plan 'pro' amount"),
        ("pro", "amount", None, "plan 'pro' amount"),
        ("enterprise", "currency", "USD", "plan 'enterprise' currency must be a 3-letter"),
        ("pro", "currency", "dollars", "plan 'pro' currency"),
        ("pro", "currency", 840, "plan 'pro' currency"),
        ("pro", "limits", {"tokens": 1.5}, "plan 'pro' limits.tokens must be a non-negative"),
        ("pro", "limits", {"tokens": "1000"}, "plan 'pro' limits.tokens"),
        ("pro", "limits", [1], "plan 'pro' limits must be a JSON object"),
    ],
)
def test_bad_money_or_limits_are_refused_at_load(plan, field, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        _catalog({plan: {field: value}})
    assert str(info.value).startswith("configuration error: BILLING_PLANS_JSON")
    assert repr(value) in str(info.value) or field == "limits"


def test_a_plan_override_that_is_not_an_object_is_refused():
    with pytest.raises(ConfigError, match="plan 'pro' must be a JSON object"):
        _catalog({"pro": 9900})


def test_valid_money_overrides_load_and_compare():
    eur = {"currency": "eur"}
    catalog = _catalog(
        {"pro": {"amount": 12900, **eur}, "basic": {"amount": 0, **eur}, "enterprise": eur}
    )
    assert (catalog["pro"].amount, catalog["pro"].currency) == (12900, "eur")
    assert catalog["basic"].amount == 0
    assert catalog["pro"].amount > catalog["basic"].amount  # what change_plan compares
    assert {p.currency for p in catalog.values()} == {"eur"}  # the free plan's too


def test_plans_in_two_currencies_are_refused():
    """A Stripe customer pays in one currency, a plan change compares amounts and the
    admin's MRR adds them up: plans priced in two currencies stop the start."""
    with pytest.raises(ConfigError, match="plans must share one currency, got eur, usd"):
        _catalog({"pro": {"amount": 12900, "currency": "eur"}})


def test_a_bad_catalog_stops_the_start_not_the_first_request(monkeypatch, capsys):
    """Entry points (the app module, the CLI) call get_settings_or_exit: it loads the
    catalog too, so a bad BILLING_PLANS_JSON exits with its one-line message."""
    from billing_app import plans
    from billing_app.settings import get_settings, get_settings_or_exit

    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps({"pro": {"amount": 99.99}}))
    get_settings.cache_clear()
    plans.get_catalog.cache_clear()
    try:
        with pytest.raises(SystemExit) as info:
            get_settings_or_exit()
        assert info.value.code == 2
        assert "plan 'pro' amount must be a non-negative integer" in capsys.readouterr().err
    finally:
        monkeypatch.delenv("BILLING_PLANS_JSON")
        get_settings.cache_clear()
        plans.get_catalog.cache_clear()
