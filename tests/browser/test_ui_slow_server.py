"""Typing while the server is slow: what a person types stays in the box and reaches
the state whole. A field that showed a state value (`value=` + `on_change`) was put back
to an older value when the server's late answer to the first keys came in after the
next ones were typed."""

from __future__ import annotations

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import LiveApp, login, open_user_drawer, ws_delay

pytestmark = pytest.mark.browser

# Each state delta this late, as from a slow server.
SLOW_MS = 1200
KEY_MS = 50  # between two keys of a burst
PAUSE_MS = 800  # between bursts: a person's pause, longer than the fields' 300 ms debounce


def _type(page: Page, box: Locator, *bursts: str) -> str:
    """Type `bursts` (5 keys or fewer after the first) into `box` as a person does: keys
    close together, a pause between bursts. Returns the whole text. The answer to a
    burst comes back `SLOW_MS` after it went up, in the pause after the next burst: a
    field showing the state's value took that older text back then, and the next burst
    went on from it."""
    box.click()
    for i, burst in enumerate(bursts):
        if i:
            page.wait_for_timeout(PAUSE_MS)  # the person's pause: part of the input
        page.keyboard.type(burst, delay=KEY_MS)
    return "".join(bursts)


def _make_users(live_app: LiveApp, *emails: str) -> None:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:
            for email in emails:
                if users.get_user_by_email(session, email) is None:
                    users.create_user(session, email, email.split("@")[0].title())
    finally:
        engine.dispose()


def _audit_becomes(
    live_app: LiveApp, email: str, expected: tuple[int, str], seconds: float = 10
) -> tuple[int, str] | None:
    """The newest audit row: once it is `expected`, or as it is after `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while (row := _last_audit(live_app, email)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return row


def _last_audit(live_app: LiveApp, email: str) -> tuple[int, str] | None:
    from sqlalchemy import text

    from billing_app.db import create_db_engine, session_scope

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as s:
            row = s.execute(
                text(
                    "select a.new_limit, a.reason from quota_audit a join user u"
                    " on u.id = a.user_id where u.email = :e order by a.id desc limit 1"
                ),
                {"e": email},
            ).first()
            return None if row is None else (row[0], row[1])
    finally:
        engine.dispose()


def test_the_search_keeps_every_key_typed_while_the_server_is_slow(
    page: Page, live_app: LiveApp
) -> None:
    _make_users(
        live_app,
        "slowsearch-alpha@example.com",
        "slowsearch-beta@example.com",
        "slowsearch-beta-team@example.com",
    )
    ws_delay(page, SLOW_MS)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    box = page.locator("#user-search")
    text = _type(page, box, "slowsearch-", "beta", "-team")
    # The box still says all of it, and the list filtered by it (not by a part: beta
    # matches two) has come back.
    expect(box).to_have_value(text)
    rows = page.locator("#users-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("slowsearch-beta-team@example.com")
    # The state holds it too: away and back, the box shows the whole search.
    page.get_by_role("link", name="Billing", exact=True).click()
    page.get_by_role("link", name="Admin", exact=True).click()
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    expect(page.locator("#user-search")).to_have_value(text)


def test_the_override_form_keeps_every_key_typed_while_the_server_is_slow(
    page: Page, live_app: LiveApp
) -> None:
    email = "slowform@example.com"
    _make_users(live_app, email)
    ws_delay(page, SLOW_MS)
    drawer = open_user_drawer(page, live_app, email, email)
    expect(drawer).to_contain_text("Slowform")
    limit = drawer.get_by_role("textbox", name="New limit")
    reason = drawer.get_by_role("textbox", name="Reason")
    typed_reason = _type(page, reason, "Pilot", " deal", " won.")
    typed_limit = _type(page, limit, "12", "34", "56")
    expect(reason).to_have_value(typed_reason)
    expect(limit).to_have_value(typed_limit)
    limit.press("Enter")
    expect(drawer).to_contain_text("Tokens limit saved.")
    expect(drawer.locator("tr", has_text="Tokens").first).to_contain_text("123,456")
    assert _last_audit(live_app, email) == (123_456, typed_reason)
    # A saved form starts empty again.
    expect(limit).to_have_value("")
    expect(reason).to_have_value("")
    # The box holds no more than the state keeps (the audit's 500 characters).
    reason.fill("r" * 600)
    expect(reason).to_have_value("r" * 500)


def test_a_new_keys_name_keeps_every_key_typed_while_the_server_is_slow(
    page: Page, live_app: LiveApp
) -> None:
    ws_delay(page, SLOW_MS)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()
    name = page.get_by_role("textbox", name="Key name")
    typed = _type(page, name, "slow", "-key", "-one")
    expect(name).to_have_value(typed)
    name.press("Enter")
    expect(page.locator("#new-secret")).to_contain_text("bk_")
    expect(page.locator("#keys-table")).to_contain_text(typed)
    expect(name).to_have_value("")  # cleared for the next key


def test_sign_in_keeps_every_key_typed_while_the_server_is_slow(
    page: Page, live_app: LiveApp
) -> None:
    """Guard: the sign-in form's fields were uncontrolled already."""
    ws_delay(page, SLOW_MS)
    page.goto(f"{live_app.url}/login?next=/admin/billing")
    email = page.locator("#email")
    typed = _type(page, email, "admin", "@exam", "ple.c", "om")
    expect(email).to_have_value(typed)
    page.locator("#password").fill(live_app.admin_password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#user-search")).to_be_visible()


def test_text_typed_after_an_override_is_saved_stays_in_the_box_and_the_state(
    page: Page, live_app: LiveApp
) -> None:
    """Enter, then on typing in the same box before the slow answer arrives: the answer
    emptied the box (what was typed after the Enter, gone) while the state kept it, so
    the next Enter saved text the box did not show. A box still holding what was saved
    is emptied, as before."""
    email = "slowafter@example.com"
    _make_users(live_app, email)
    ws_delay(page, SLOW_MS)
    drawer = open_user_drawer(page, live_app, email, email)
    limit = drawer.get_by_role("textbox", name="New limit")
    reason = drawer.get_by_role("textbox", name="Reason")
    reason.fill("First pass")
    limit.fill("1000")
    limit.press("Enter")
    page.keyboard.type("0", delay=KEY_MS)  # on typing: 10000 now, before the answer
    assert "limit saved" not in drawer.inner_text()  # the answer is still on its way
    expect(drawer).to_contain_text("Tokens limit saved.")
    # The detail read after the save shows (so the answer's own work is done): the box
    # keeps its text; the reason, untouched since the save, starts empty again.
    expect(drawer.locator("tr", has_text="Tokens").first).to_contain_text("1,000")
    expect(limit).to_have_value("10000", timeout=3000)
    expect(reason).to_have_value("")
    assert _last_audit(live_app, email) == (1000, "First pass")
    # The state holds what the box shows: the next Enter saves 10000, no key in between.
    reason.fill("Second pass")
    limit.press("Enter")
    expect(drawer.locator("tr", has_text="Tokens").first).to_contain_text("10,000")
    # Read until it shows: the page's row can show the new limit a moment before this
    # reader's connection sees the save's commit (seen once in a full run under load).
    row = _audit_becomes(live_app, email, (10_000, "Second pass"))
    assert row == (10_000, "Second pass"), row
    expect(limit).to_have_value("")
    expect(reason).to_have_value("")


def test_text_typed_after_a_key_is_created_stays_in_the_box_and_the_state(
    page: Page, live_app: LiveApp
) -> None:
    """As for the override form: a new key's name typed on after the Enter stays, and
    the next Enter makes a key of that name."""
    ws_delay(page, SLOW_MS)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()
    name = page.get_by_role("textbox", name="Key name")
    name.fill("after-key")
    name.press("Enter")
    page.keyboard.type("-two", delay=KEY_MS)
    expect(page.locator("#new-secret")).not_to_be_attached()  # the answer is on its way
    first = page.locator("#new-secret")
    expect(first).to_contain_text("bk_")
    table = page.locator("#keys-table")
    expect(table.get_by_role("row").filter(has_text="after-key")).to_have_count(1)
    expect(name).to_have_value("after-key-two", timeout=3000)
    secret = first.inner_text()
    name.press("Enter")
    expect(page.locator("#new-secret")).not_to_have_text(secret)
    expect(table.get_by_role("row").filter(has_text="after-key-two")).to_have_count(1)
    expect(name).to_have_value("")
