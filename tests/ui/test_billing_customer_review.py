"""/billing read by a screen reader and at a glance: each meter's bar says its numbers, the
80 % warning names its meter, a live region names the meters that crossed a line, and each
invoice's View and PDF links say which invoice they open."""

from __future__ import annotations

import re

from billing_app.components.common import invoice_table
from billing_app.pages.billing import invoices_card
from billing_app.states import views
from billing_app.states.billing import BillingState
from tests.ui.test_states import state_for


def _meter(metric: str, used: int, limit: int, **more: object) -> views.MeterView:
    label = {"tokens": "Tokens", "api_calls": "API calls", "scraping_tasks": "Scraping tasks"}
    return views.meter_view(
        {"metric": metric, "label": label[metric], "used": used, "limit": limit, **more}
    )


def test_a_meters_bar_says_its_numbers_not_a_clamped_percent() -> None:
    over = _meter("tokens", 385_000, 10_000)
    assert over.percent == 100  # the bar is full...
    assert over.value_text == "385,000 of 10,000 used (3,850%), limit reached"  # ...in words
    assert _meter("api_calls", 90, 100).value_text == "90 of 100 used (90%)"
    assert _meter("tokens", 5, 0, unlimited=True).value_text == ""  # no bar to describe


def test_the_80_percent_warning_names_each_meter_near_its_limit() -> None:
    meters = [
        _meter("tokens", 85_000, 100_000),
        _meter("api_calls", 1_000, 1_000),  # used up: the red notice's, not this one's
        _meter("scraping_tasks", 79, 100),
    ]
    assert views.near_limit_text(meters) == (
        "You have used 80% or more of a limit this period. Tokens: 85,000 of 100,000 (85%)."
    )
    assert views.near_limit_text([_meter("tokens", 1, 10), meters[1]]) == ""


def test_the_live_region_changes_when_a_meter_crosses_a_line_not_with_each_unit() -> None:
    state = state_for(BillingState)
    state.meters = [_meter("tokens", 100, 10_000), _meter("api_calls", 10, 100)]
    assert state.usage_alert == ""
    state.meters = [_meter("tokens", 8_000, 10_000), _meter("api_calls", 10, 100)]
    assert state.usage_alert == "80% or more used: Tokens."
    state.meters = [_meter("tokens", 8_500, 10_000), _meter("api_calls", 10, 100)]
    assert state.usage_alert == "80% or more used: Tokens."  # same words: nothing read out
    state.meters = [_meter("tokens", 9_000, 10_000), _meter("api_calls", 100, 100)]
    assert state.usage_alert == "Limit reached: API calls. 80% or more used: Tokens."
    assert state.near_limit_text.endswith("Tokens: 9,000 of 10,000 (90%).")


def test_each_invoice_link_is_named_for_its_invoice_on_the_page_and_in_the_console() -> None:
    """The customer's table and phone list, and the admin's tables (same look: the
    label stays "View" / "PDF"; only the name a screen reader reads changes)."""
    for compiled in (str(invoices_card()), str(invoice_table(BillingState.invoices, "t"))):
        names = re.findall(r'"aria-label":\(\("([^"]+)"\+inv_rx_state_\?\.\["number"\]\)', compiled)
        assert {"View invoice ", "PDF of invoice "} <= set(names), names
        assert compiled.count('+" (opens in a new tab)")') >= 2
