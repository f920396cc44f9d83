"""The Users tab's usage filter: "At or over a limit" lists only who reached a limit, and their
drawer's meters say when they reset."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from billing_app.services.periods import calendar_month
from billing_app.states import format as fmt
from tests.browser.conftest import LiveApp, choose, ensure_user, login

pytestmark = pytest.mark.browser


def test_over_a_limit_lists_only_who_reached_one_and_the_drawer_says_when_it_resets(
    page: Page, live_app: LiveApp
) -> None:
    over = ensure_user(live_app, "h78attn-over@example.com", "Over Limit")
    near = ensure_user(live_app, "h78attn-near@example.com", "Near Limit")
    ensure_user(live_app, "h78attn-calm@example.com", "Calm User")
    live_app.post_usage(over, "api_calls", 150)  # 150% of Free's 100
    live_app.post_usage(near, "tokens", 8_500)  # 85% of Free's 10,000: near, not over

    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("h78attn")
    expect(page.get_by_text("1–3 of 3")).to_be_visible()
    choose(page, "Filter by usage", "At or over a limit")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    rows = page.locator("#users-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("h78attn-over@example.com")
    expect(page.locator('a[href*="users.csv"]')).to_have_attribute(
        "href", "/api/billing/admin/users.csv?q=h78attn&usage=over&sort=-created"
    )

    choose(page, "Filter by usage", "Near a limit (80%+)")
    expect(page.get_by_text("1–2 of 2")).to_be_visible()

    choose(page, "Filter by usage", "At or over a limit")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    page.get_by_role("button", name="Details for h78attn-over@example.com").click()
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text("Over Limit")
    # The id the JSON API and the console's curl example name the customer by.
    uid = live_app.user_id("h78attn-over@example.com")
    expect(drawer.locator("#detail-user-id")).to_have_text(str(uid))
    resets = f"Resets on {fmt.date(calendar_month(datetime.now(UTC)).end)}"
    expect(drawer.locator("#meter-api_calls").locator("..")).to_contain_text(resets)
    expect(drawer.get_by_text(resets)).to_have_count(3)  # one per meter
