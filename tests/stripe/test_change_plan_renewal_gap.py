"""The app's own downgrade while the renewal's webhook is still on its way
(real sandbox over HTTP)."""

from __future__ import annotations

import json

import pytest

from billing_app.errors import QuotaExceeded
from billing_app.services import billing, metering
from billing_app.services.subscriptions import get_subscription_dto
from tests.conftest import _clear_caches
from tests.stripe.test_end_to_end import subscribe


@pytest.mark.parametrize("minutes_after_renewal", [10, 180])
def test_a_downgrade_in_the_renewal_gap_keeps_the_new_periods_usage(
    session, sandbox, http, receiver, monkeypatch, minutes_after_renewal
):
    monkeypatch.setenv("BILLING_PLANS_JSON", json.dumps({"pro": {"reset": "billing_period"}}))
    _clear_caches()
    user = subscribe(session, http, sandbox, "pro")
    first = get_subscription_dto(session, user.id)
    sandbox.state.set_webhook_endpoint(None)  # the renewal's webhooks do not arrive (yet)
    try:
        to = int(first.current_period_end.timestamp()) + 60 * minutes_after_renewal
        r = http.post(sandbox.url + "/_sandbox/clock/advance", data={"to": str(to)})
        assert r.status_code == 200, r.text
        # In the new period (stepped from the stored one: the renewal finds it there)
        used = metering.consume(session, user.id, "tokens", 900_000, "pro-work")
        assert used.status.period_start == first.current_period_end
        billing.change_plan(session, user.id, "basic")  # writes Stripe's answer
        c = metering.check(session, user.id, "tokens", 1_000)
        assert (c.limit, c.used, c.allowed) == (100_000, 900_000, False), f"used={c.used}"
        with pytest.raises(QuotaExceeded):
            metering.consume(session, user.id, "tokens", 100_000, "basic-work")
    finally:
        sandbox.state.set_webhook_endpoint(receiver.url + "/api/billing/webhook")
