"""The console's polish (h93's review), in a browser: a long email is read whole in the
users table, a past-due row says what is owed, the figures say when they were read, and
the drawer gives the focus back to a button in sight after the window was narrowed (or
widened) past 62em while it was open."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LiveApp, ensure_invoices, ensure_user, login

pytestmark = pytest.mark.browser

LONG = "a.rather.long.mailbox.name.for.the.h93.review@accounts.billing-department.h93-polish.test"
SHORT = "focus.h93@polish-h93.test"
DESKTOP, NARROW = {"width": 1280, "height": 900}, {"width": 600, "height": 900}


def _past_due(live_app: LiveApp) -> None:
    """The long-email customer, past due on Pro with $49.00 still owed (created once)."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import subscriptions
    from tests.factories import make_subscription

    uid = ensure_user(live_app, LONG, "Long Email")
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        if subscriptions.current_subscription(session, uid) is None:
            make_subscription(session, uid, plan="pro", status="past_due", sub_id="sub_h93")
    engine.dispose()
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_h93_owed", user_id=uid, number="H93-0001", status="open",
             stripe_subscription_id="sub_h93", attempt_count=1, total=4900, amount_due=4900,
             amount_paid=0, currency="usd", created_at=datetime(2024, 3, 1, tzinfo=UTC)),
    )  # fmt: skip


def test_a_long_email_reads_whole_and_a_past_due_row_says_what_is_owed(
    page: Page, live_app: LiveApp
) -> None:
    _past_due(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill(LONG)
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    row = page.locator("#users-table").get_by_role("row").filter(has_text="Long Email")
    email = row.get_by_role("button", name=LONG, exact=True)
    expect(email).to_be_visible()
    # Every character in sight: wrapped within its column, not cut with an ellipsis.
    text = email.locator("p, span").first
    assert text.evaluate("t => t.scrollWidth <= t.clientWidth"), "the email is cut short"
    assert text.evaluate("t => t.getBoundingClientRect().width") <= 261
    box, button = text.bounding_box(), email.bounding_box()
    assert box and button and box["y"] + box["height"] <= button["y"] + button["height"] + 0.5
    # The table still fits its card: no column pushed out of sight.
    scroller = page.locator("#users-table").locator("xpath=..")
    assert scroller.evaluate("s => s.scrollWidth <= s.clientWidth"), "the table scrolls"
    expect(row).to_contain_text("Past due")
    expect(row.locator(".owed")).to_have_text("$49.00 owed")
    as_of = page.locator("#as-of")
    expect(as_of).to_have_text(re.compile(r"^As of \d\d:\d\d UTC$"))
    # Refresh reads again, and says so.
    page.locator("#refresh-console").click()
    expect(as_of).to_have_text(re.compile(r"^As of \d\d:\d\d UTC$"))


@pytest.mark.parametrize(
    ("opened", "then", "shown"),
    [(DESKTOP, NARROW, "#users-list"), (NARROW, DESKTOP, "#users-table")],
    ids=["narrowed", "widened"],
)
def test_closing_the_drawer_after_a_resize_focuses_the_opener_in_sight(
    page: Page, live_app: LiveApp, opened: dict, then: dict, shown: str
) -> None:
    ensure_user(live_app, SHORT, "Focus Customer")
    page.set_viewport_size(opened)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill(SHORT)
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    name = f"Details for {SHORT}"
    page.get_by_role("button", name=name).click()  # the one in sight
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text("Focus Customer")
    page.set_viewport_size(then)
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)
    expect(page.locator(shown).get_by_role("button", name=name)).to_be_focused()
