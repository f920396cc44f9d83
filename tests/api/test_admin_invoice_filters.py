"""The admin's invoice filters are its badges: a credit (negative total) is "Credit", not
"Paid", in the service, GET /api/billing/admin/invoices and invoices.csv alike."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from billing_app.db import session_scope
from billing_app.errors import ValidationFailed
from billing_app.models import Invoice
from billing_app.services import exports, invoices
from billing_app.states import views

LIST = "/api/billing/admin/invoices"
CSV = "/api/billing/admin/invoices.csv"

# (id, Stripe status, total, amount_due, amount_paid, currency); total None: a row from
# before migration 0013.
ROWS = [
    ("in_paid", "paid", 1900, 1900, 1900, "usd"),
    ("in_credit", "paid", -4000, 0, 0, "usd"),  # a downgrade's proration
    ("in_open", "open", 9900, 9900, 0, "eur"),
    ("in_open_credit", "open", -1200, 0, 0, "usd"),  # finalized, not yet marked paid
    ("in_legacy_paid", "paid", None, 1900, 1900, "usd"),
    ("in_zero", "paid", 0, 0, 0, "jpy"),  # a 100% coupon: nothing credited
    ("in_void_credit", "void", -500, 0, 0, "usd"),  # void, whatever its total
    ("in_draft", "draft", 1500, 1500, 0, "jpy"),
    ("in_bad", "uncollectible", 9900, 9900, 0, "gbp"),
]
# What each filter lists: the invoices whose badge says its name (newest first).
EXPECTED = {
    "paid": ["in_zero", "in_legacy_paid", "in_paid"],
    "credit": ["in_open_credit", "in_credit"],
    "open": ["in_open"],
    "draft": ["in_draft"],
    "void": ["in_void_credit"],
    "uncollectible": ["in_bad"],
}


@pytest.fixture
def invoice_set(actors) -> None:
    with session_scope() as s:
        for day, (sid, status, total, due, paid, currency) in enumerate(ROWS, start=1):
            s.add(
                Invoice(stripe_invoice_id=sid, user_id=actors.a.id, number=sid.upper(),
                        status=status, total=total, amount_due=due, amount_paid=paid,
                        currency=currency, created_at=datetime(2026, 10, day, tzinfo=UTC))
            )  # fmt: skip
        s.commit()


def test_each_filter_lists_the_invoices_its_badge_names(invoice_set) -> None:
    assert invoices.ADMIN_FILTERS == (*EXPECTED, "failed")
    with session_scope() as s:
        everything = invoices.list_invoices(s, per_page=100).items
        for shown in EXPECTED:
            page = invoices.list_invoices(s, shown=shown, per_page=100)
            listed = [i.stripe_invoice_id for i in page.items]
            assert listed == EXPECTED[shown], shown
            assert page.total == len(listed)
            # The badge each shows (states/views.invoice_view) is the filter's own word.
            badged = [i.stripe_invoice_id for i in everything
                      if views.invoice_view(i).status_label.lower() == shown]  # fmt: skip
            assert badged == listed, shown
        # Stripe's own status is still there for the customer's list and the service API.
        stripe_paid = invoices.list_invoices(s, status="paid", per_page=100).items
        assert {i.stripe_invoice_id for i in stripe_paid} == {
            "in_zero", "in_legacy_paid", "in_paid", "in_credit"
        }  # fmt: skip


def test_the_admin_api_filters_by_badge(actors, invoice_set) -> None:
    c = actors.cookie_client(actors.admin)
    for shown, expected in EXPECTED.items():
        r = c.get(LIST, params={"status": shown, "per_page": 100})
        assert r.status_code == 200, r.text
        assert [i["stripe_invoice_id"] for i in r.json()["items"]] == expected, shown
        assert r.json()["total"] == len(expected)
    # A credit keeps Stripe's status in the body; its negative total says what it is.
    credits = c.get(LIST, params={"status": "credit"}).json()["items"]
    assert [(i["status"], i["total"], i["credited_to_balance"]) for i in credits] == [
        ("open", -1200, 1200), ("paid", -4000, 4000)
    ]  # fmt: skip
    both = c.get(LIST, params={"status": "credit", "user_id": actors.b.id}).json()
    assert both["total"] == 0 and both["items"] == []

    r = c.get(LIST, params={"status": "refunded"})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "Unknown invoice status 'refunded'; expected one of: "
        "paid, credit, open, draft, void, uncollectible, failed."
    )


def test_the_csv_export_filters_by_badge(actors, invoice_set) -> None:
    c = actors.cookie_client(actors.admin)
    for shown, expected in EXPECTED.items():
        r = c.get(CSV, params={"status": shown})
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
        assert [row["stripe_invoice_id"] for row in rows] == expected, shown
        if shown == "credit":
            assert [(row["status"], row["total"]) for row in rows] == [
                ("open", "-12.00"), ("paid", "-40.00")
            ]  # fmt: skip
    r = c.get(CSV, params={"status": "refunded"})
    assert r.status_code == 422 and "credit" in r.json()["error"]["message"]
    with session_scope() as s:  # the service refuses it before writing anything
        with pytest.raises(ValidationFailed, match="expected one of: paid, credit"):
            exports.invoices_csv(s, status="refunded")


FAILED_ROWS = [  # (id, status, subscription, attempts, total)
    ("in_uncollectible", "uncollectible", "sub_fine", 4, 1900),  # written off: no action
    ("in_late", "open", "sub_late", 0, 1900),  # its subscription past due
    ("in_retrying", "open", "sub_fine", 1, 1900),  # a failed attempt, retried later
    ("in_just_open", "open", "sub_fine", 0, 1900),  # not attempted yet: not failed
    ("in_paid_after_retry", "paid", "sub_fine", 2, 1900),  # failed, then paid
    ("in_no_sub", "open", None, 0, 1900),  # no subscription: not failed
    ("in_late_credit", "open", "sub_late", 0, -500),  # a credit owes nothing
]


@pytest.fixture
def failed_set(actors) -> None:
    from tests.factories import make_subscription

    with session_scope() as s:
        make_subscription(s, actors.a.id, plan="pro", status="past_due", sub_id="sub_late")
        make_subscription(s, actors.b.id, plan="pro", status="active", sub_id="sub_fine")
        for day, (sid, status, sub, attempts, total) in enumerate(FAILED_ROWS, start=1):
            s.add(
                Invoice(stripe_invoice_id=sid, user_id=actors.a.id, status=status,
                        stripe_subscription_id=sub, attempt_count=attempts, total=total,
                        amount_due=max(total, 0), amount_paid=1900 if status == "paid" else 0,
                        currency="usd", created_at=datetime(2026, 10, day, tzinfo=UTC))
            )  # fmt: skip
        s.commit()


def test_the_failed_filter_lists_what_the_failed_payments_card_counts(actors, failed_set) -> None:
    """The console's Failed payments card had no list behind it: the "failed" filter
    lists exactly the invoices it counts, in the service, the API and the CSV. It counts
    what needs action, the failed payments still owed: not the written-off uncollectible
    ones (which only ever grew), which their own filter still lists."""
    from billing_app.services import admin as admin_service

    expected = ["in_retrying", "in_late"]
    with session_scope() as s:
        listed = invoices.list_invoices(s, shown="failed", per_page=100)
        assert [i.stripe_invoice_id for i in listed.items] == expected
        assert admin_service.headline_stats(s)["failed_payments"] == listed.total == 2
        written_off = invoices.list_invoices(s, shown="uncollectible", per_page=100).items
        assert [i.stripe_invoice_id for i in written_off] == ["in_uncollectible"]
    c = actors.cookie_client(actors.admin)
    assert c.get("/api/billing/admin/stats").json()["failed_payments"] == 2
    r = c.get(LIST, params={"status": "failed"})
    assert r.status_code == 200, r.text
    assert [i["stripe_invoice_id"] for i in r.json()["items"]] == expected
    got = c.get(CSV, params={"status": "failed"})
    rows_out = list(csv.DictReader(io.StringIO(got.content.decode("utf-8-sig"), newline="")))
    assert [row["stripe_invoice_id"] for row in rows_out] == expected


def test_a_failed_payment_is_badged_so_and_only_the_failed_filter_lists_it(
    actors, failed_set
) -> None:
    """An open invoice whose payment failed read "Open", in the "Payment failed" filter
    too. Its badge is "Payment failed" (red) from the service's own rule, for the admin
    and the customer alike; each invoice is in the one filter its badge names."""
    owed = {"in_retrying", "in_late"}
    with session_scope() as s:
        everything = invoices.list_invoices(s, per_page=100).items
        by_filter = {
            shown: [i.stripe_invoice_id for i in invoices.list_invoices(s, shown=shown).items]
            for shown in invoices.ADMIN_FILTERS
        }
        customers = invoices.list_invoices(s, user_id=actors.a.id, customer_view=True).items
    assert {i.stripe_invoice_id for i in everything if i.payment_failed} == owed
    for shown, listed in by_filter.items():
        word = "payment failed" if shown == "failed" else shown
        badged = [i.stripe_invoice_id for i in everything
                  if views.invoice_view(i).status_label.lower() == word]  # fmt: skip
        assert badged == listed, shown
    assert by_filter["open"] == ["in_no_sub", "in_just_open"]
    for inv in customers:  # the customer's list on /billing: the same badge
        shown = views.invoice_view(inv)
        if inv.stripe_invoice_id in owed:
            assert (shown.status_label, shown.status_color) == ("Payment failed", "red")
        else:
            assert shown.status_label != "Payment failed", inv.stripe_invoice_id
    # The API's items say it, the customer's and the admin's.
    mine = actors.cookie_client(actors.a).get("/api/billing/invoices", params={"per_page": 100})
    assert mine.status_code == 200, mine.text
    flagged = {i["stripe_invoice_id"] for i in mine.json()["items"] if i["payment_failed"]}
    assert flagged == owed
    admin = actors.cookie_client(actors.admin).get(LIST, params={"status": "open"}).json()
    assert [(i["stripe_invoice_id"], i["payment_failed"]) for i in admin["items"]] == [
        ("in_no_sub", False), ("in_just_open", False)
    ]  # fmt: skip


def test_the_stats_say_how_much_the_failed_payments_still_owe(actors, failed_set) -> None:
    """Who failed to pay, and how much: the stats sum what the invoices the Failed
    payments card counts still owe (a part already paid, or Stripe's own
    amount_remaining, is not owed), in the plans' currency; the other invoices owe
    nothing here."""
    from billing_app.services import admin as admin_service

    with session_scope() as s:
        s.add(
            Invoice(stripe_invoice_id="in_part_paid", user_id=actors.a.id, status="open",
                    stripe_subscription_id="sub_late", attempt_count=2, total=9900,
                    amount_due=9900, amount_paid=0, amount_remaining=4900, currency="usd",
                    created_at=datetime(2026, 11, 1, tzinfo=UTC))
        )  # fmt: skip
        s.commit()
        stats = admin_service.headline_stats(s)
    assert stats["failed_payments"] == 3
    assert stats["failed_amount_due"] == 1900 + 1900 + 4900
    r = actors.cookie_client(actors.admin).get("/api/billing/admin/stats")
    assert r.status_code == 200, r.text
    assert r.json()["failed_amount_due"] == 8700 and r.json()["currency"] == "usd"
