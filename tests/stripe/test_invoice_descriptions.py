"""Each invoice row says what it bills for ("Pro plan (prorated)", "Basic plan"), from the
invoice's lines as Stripe shapes them (its own `description` is empty on a subscription
invoice), and the sandbox writes those lines as Stripe does."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from billing_app import plans
from billing_app.services import billing
from billing_app.states.billing import load_slow
from tests.factories import make_user
from tests.stripe.test_end_to_end import advance, subscribe

T0 = 1_764_000_000


def _line(template: dict, price: str, amount: int, proration: bool, text: str) -> dict:
    """Stripe's fixture line_item, on `price`: a plan's own line (subscription_item_details)
    or a proration (invoice_item_details, as the fixture has it)."""
    line = copy.deepcopy(template)
    line.update(amount=amount, subtotal=amount, description=text)
    line["pricing"] = {"type": "price_details", "unit_amount_decimal": str(abs(amount)),
                       "price_details": {"price": price, "product": "prod_x"}}  # fmt: skip
    line["parent"]["invoice_item_details"]["proration"] = proration
    line["parent"]["subscription_item_details"]["proration"] = proration
    if not proration:
        line["parent"]["type"] = "subscription_item_details"
    return line


def test_a_webhooks_invoice_lines_name_its_plan(session, deliver, payloads, stripe_fixtures):
    uid = make_user(session, customer="cus_h92_desc").id
    catalog = plans.get_catalog()
    basic, pro = catalog["basic"].stripe_price_id, catalog["pro"].stripe_price_id
    template = stripe_fixtures["invoice"]["lines"]["data"][0]

    def send(inv_id: str, created: int, lines: list[dict], **fields: object) -> None:
        inv = payloads.invoice(inv_id=inv_id, customer="cus_h92_desc", sub_id="sub_h92",
                               status="paid", created=created, **fields)  # fmt: skip
        inv["lines"]["data"] = lines
        r = deliver.send(payloads.event("invoice.paid", inv, created))
        assert r.status_code == 200, r.text

    send("in_h92_first", T0, [_line(template, basic, 1900, False, "1 × Basic (at $19.00 / month)")])
    send("in_h92_up", T0 + 60, [
        _line(template, basic, -950, True, "Unused time on Basic after 25 Nov 2025"),
        _line(template, pro, 4950, True, "Remaining time on Pro after 25 Nov 2025"),
    ], amount_due=4000)  # fmt: skip
    send("in_h92_renew", T0 + 120, [
        _line(template, pro, 500, True, "Remaining time on Pro after 26 Nov 2025"),
        _line(template, pro, 9900, False, "1 × Pro (at $99.00 / month)"),
    ], amount_due=10400)  # fmt: skip
    # No plan's price: the line's own words.
    send("in_h92_other", T0 + 180, [_line(template, "price_other", 500, False, "Setup fee")],
         amount_due=500)  # fmt: skip
    # A memo and no lines (an event whose lines Stripe left out): the memo.
    send("in_h92_memo", T0 + 240, [], amount_due=0, description="Goodwill credit")
    shown = {i.number: i.description for i in load_slow(uid, 1).invoices}
    assert shown == {
        "NUM-memo": "Goodwill credit",
        "NUM-ther": "Setup fee",
        "NUM-enew": "Pro plan, with prorated changes",
        "NUM-2_up": "Pro plan (prorated)",
        "NUM-irst": "Basic plan",
    }


def test_the_sandboxs_upgrade_invoice_is_described_as_stripes_is(session, sandbox, http):
    user = subscribe(session, http, sandbox, "basic")
    advance(http, sandbox, days=10)
    billing.change_plan(session, user.id, "pro")
    advance(http, sandbox, hours=1)  # the webhooks delivered
    remote = sorted(sandbox.state.invoices.values(), key=lambda i: i["created"])
    up = remote[-1]["lines"]["data"]
    when = datetime.fromtimestamp(remote[-1]["created"], UTC).strftime("%d %b %Y")
    # Stripe's words: no "1 ×" before a single item's name, the day written with two digits.
    assert [line["description"] for line in up] == [
        f"Unused time on Basic after {when}",
        f"Remaining time on Pro after {when}",
    ]
    rows = load_slow(user.id, 1).invoices
    assert [(r.description, r.period != "—") for r in rows] == [
        ("Pro plan (prorated)", True),
        ("Basic plan", True),
    ]
