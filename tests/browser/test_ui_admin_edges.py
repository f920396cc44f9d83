"""What an admin and a customer meet past the happy path: long names, the keyboard, a
search kept across visits, a revoked key's secret, numbers read again on demand, and a
chart and meters far past the limit."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.conftest import (
    LiveApp,
    assert_focus_kept,
    choose,
    ensure_invoices,
    ensure_user,
    focused,
    login,
    open_user_drawer,
    tab_to,
)

pytestmark = pytest.mark.browser

LONG_NAME = "Maximiliana Alexandrovna Konstantinopolskaya-Longname the 3rd"
LONG_EMAIL = (
    "x.maximiliana.alexandrovna.konstantinopolskaya.longaddress@subdomain.example-enterprise.com"
)


def _users(live_app: LiveApp) -> int:
    """The long-named customer (created once); returns their id."""
    return ensure_user(live_app, LONG_EMAIL, LONG_NAME, "long-pass-123")


def test_a_long_email_keeps_the_table_and_the_drawer_on_screen(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    _users(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("x.maximiliana")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    # Every column in sight at 1280 wide: the Details button too.
    details = page.get_by_role("button", name=f"Details for {LONG_EMAIL}")
    box = details.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280, box

    # On a phone the drawer fills the screen; its close button stays on it.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{live_app.url}/admin/billing")
    phone.locator("#user-search").fill("x.maximiliana")
    phone.get_by_role("button", name=LONG_EMAIL, exact=True).click()
    drawer = phone.locator("#user-drawer")
    expect(drawer).to_contain_text(LONG_EMAIL)
    phone.wait_for_function("document.getAnimations().every(a => a.playState !== 'running')")
    close = drawer.get_by_role("button", name="Close")
    box = close.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390, box
    # A sideways swipe (a wheel here) does not move the drawer's content.
    phone.mouse.move(200, 400)
    phone.mouse.wheel(600, 0)
    phone.wait_for_timeout(300)
    assert drawer.evaluate("d => d.scrollLeft") == 0
    close.click()
    expect(drawer).to_have_count(0)
    phone.close()


def test_the_console_by_keyboard(page: Page, live_app: LiveApp) -> None:
    uid = _users(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("x.maximiliana")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()

    # The drawer takes the focus and keeps it.
    details = page.get_by_role("button", name=f"Details for {LONG_EMAIL}")
    details.focus()
    page.keyboard.press("Enter")
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text(LONG_NAME)
    inside = "() => !!document.activeElement.closest('#user-drawer')"
    page.wait_for_function(inside)
    for key in ("Tab", "Tab", "Shift+Tab", "Shift+Tab", "Shift+Tab"):
        page.keyboard.press(key)
        assert page.evaluate(inside), key

    # Enter in the limit saves the override, as the button does.
    drawer.get_by_role("textbox", name="Reason").fill("Keyboard test")
    drawer.get_by_role("textbox", name="New limit").fill("4242")
    drawer.get_by_role("textbox", name="New limit").press("Enter")
    expect(drawer).to_contain_text("Tokens limit saved.")
    expect(drawer).to_contain_text("4,242")
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)

    # Enter in the key's name creates it; revoking it takes its secret off the screen.
    page.get_by_role("tab", name="API keys").click()
    # The form's boxes and its button on one line: the Service hint lifted its box above
    # the others, and the button sat level with neither.
    form = (("textbox", "Key name"), ("textbox", "Service"), ("combobox", "Access"))
    tops = [page.get_by_role(role, name=name).bounding_box() for role, name in form]
    tops.append(page.get_by_role("button", name="Create key").bounding_box())
    assert (
        all(b is not None for b in tops)
        and max(b["y"] for b in tops) - min(b["y"] for b in tops) <= 1
    ), tops
    page.get_by_role("textbox", name="Key name").fill("keyboard-key")
    page.get_by_role("textbox", name="Key name").press("Enter")
    expect(page.locator("#new-secret")).to_contain_text("bk_")
    row = page.locator("#keys-table").get_by_role("row").filter(has_text="keyboard-key")
    row.get_by_role("button", name="Revoke key keyboard-key").click()
    # The question names the key it is about.
    expect(page.get_by_role("alertdialog")).to_contain_text("Revoke the key “keyboard-key” (")
    page.get_by_role("alertdialog").get_by_role("button", name="Revoke key").click()
    expect(row).to_contain_text("Revoked")
    expect(page.locator("#new-secret")).to_have_count(0)
    assert uid


def test_closing_the_drawer_gives_focus_back_to_the_button_that_opened_it(
    page: Page, live_app: LiveApp
) -> None:
    """The drawer opens from State, not from a Radix Trigger: closing it (Escape, its
    Close button) dropped focus to <body>, and the next Tab started over at the top."""
    _users(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("x.maximiliana")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    drawer = page.locator("#user-drawer")
    inside = "() => !!document.activeElement.closest('#user-drawer')"
    details = page.get_by_role("button", name=f"Details for {LONG_EMAIL}")
    email = page.get_by_role("button", name=LONG_EMAIL, exact=True)
    for opener, close in ((details, "Escape"), (details, "Close"), (email, "Escape")):
        opener.focus()
        page.keyboard.press("Enter")
        expect(drawer).to_contain_text(LONG_NAME)
        page.wait_for_function(inside)
        if close == "Close":
            drawer.get_by_role("button", name="Close").focus()
            page.keyboard.press("Enter")
        else:
            page.keyboard.press("Escape")
        expect(drawer).to_have_count(0)
        expect(opener).to_be_focused()
        assert_focus_kept(page, f"closing the drawer by {close}")


def test_closing_the_drawer_after_its_row_left_the_list_gives_focus_to_the_search(
    page: Page, live_app: LiveApp
) -> None:
    """The list read again while the drawer is open (after an override) no longer holds
    the row that opened it: closing gives focus to the search box, not to <body>."""
    from sqlmodel import select

    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import User
    from billing_app.services import users

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:
            if users.get_user_by_email(session, "rowgone@example.com") is None:
                users.create_user(session, "rowgone@example.com", "Row Gone")
        login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
        page.locator("#user-search").fill("rowgone")
        expect(page.get_by_text("1–1 of 1")).to_be_visible()
        page.get_by_role("button", name="Details for rowgone@example.com").focus()
        page.keyboard.press("Enter")
        drawer = page.locator("#user-drawer")
        expect(drawer).to_contain_text("Row Gone")
        page.wait_for_function("() => !!document.activeElement.closest('#user-drawer')")
        # Meanwhile the user's email changes: the search no longer matches them.
        with session_scope(engine) as session:
            user = session.exec(select(User).where(User.email == "rowgone@example.com")).one()
            user.email = "moved-away@example.com"
            session.commit()
        drawer.get_by_role("textbox", name="Reason").fill("Row leaves")
        drawer.get_by_role("textbox", name="New limit").fill("55")
        drawer.get_by_role("textbox", name="New limit").press("Enter")
        expect(drawer).to_contain_text("Tokens limit saved.")
        expect(page.get_by_text("No users match")).to_be_attached()
        page.keyboard.press("Escape")
        expect(drawer).to_have_count(0)
        expect(page.locator("#user-search")).to_be_focused()
        assert_focus_kept(page, "closing the drawer of a row no longer listed")
    finally:
        engine.dispose()


def _walk_users(live_app: LiveApp, prefix: str, count: int) -> None:
    """`count` customers whose emails start with `prefix` (created once)."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:
            for i in range(count):
                email = f"{prefix}{i:02d}@example.com"
                if users.get_user_by_email(session, email) is None:
                    users.create_user(session, email, f"Walker {i:02d}")
    finally:
        engine.dispose()


def _pick(page: Page, trigger: str, option: str) -> None:
    """A Radix select by keyboard: Tab to its trigger, open it with Enter, arrow down to
    the option, Enter; the trigger keeps the focus."""
    tab_to(page, f'button[aria-label="{trigger}"]')
    page.keyboard.press("Enter")
    expect(page.get_by_role("listbox")).to_be_visible()
    # The open list focuses its selected option once placed (again after the first focus):
    # keys pressed before that are undone. A person is not that fast.
    page.wait_for_function("() => document.activeElement.getAttribute('role') === 'option'")
    page.wait_for_timeout(400)
    page.keyboard.press("Home")
    for _ in range(20):
        if page.evaluate("() => document.activeElement.innerText.trim()") == option:
            break
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(150)  # a key pressed while the list scrolls is dropped
    page.keyboard.press("Enter")
    expect(page.get_by_role("listbox")).to_have_count(0)
    expect(page.get_by_role("combobox", name=trigger)).to_contain_text(option)
    expect(page.get_by_role("combobox", name=trigger)).to_be_focused()
    assert_focus_kept(page, f"choosing {option}")


def test_the_console_walked_with_the_keyboard_only(page: Page, live_app: LiveApp) -> None:
    """Search, filters, sort, export, the pager, the drawer and its override form, and
    the tabs, with nothing but the keyboard: every stop reachable, its ring shown, and
    focus never left on <body> after an action."""
    prefix = "kbwalk"
    _walk_users(live_app, prefix, 23)
    page.goto(f"{live_app.url}/login?next=/admin/billing")
    expect(page.locator("#email")).to_be_visible()  # the form mounts once hydrated
    tab_to(page, "#email")
    page.keyboard.type(live_app.admin_email)
    tab_to(page, "#password")
    page.keyboard.type(live_app.admin_password)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/admin/billing$"))
    expect(page.locator("#user-search")).to_be_visible()

    tab_to(page, "#user-search")
    page.keyboard.type(prefix)
    expect(page.get_by_text("1–20 of 23")).to_be_visible()
    assert_focus_kept(page, "searching")
    _pick(page, "Filter by plan", "Free")
    _pick(page, "Filter by status", "No subscription")
    _pick(page, "Sort", "Email A–Z")
    expect(page.locator("#users-table tbody tr").first).to_contain_text(f"{prefix}00@")
    stops = tab_to(page, 'a[href*="users.csv"]')
    assert page.evaluate("document.activeElement.getAttribute('href')").endswith(
        f"q={prefix}&plan=free&status=none&sort=email"
    ), stops

    # The pager: Next to the last page and back, focus staying on the buttons.
    tab_to(page, 'button[aria-label="Next users page"]')
    page.keyboard.press("Enter")
    expect(page.get_by_text("21–23 of 23")).to_be_visible()
    assert_focus_kept(page, "Next users page")
    tab_to(page, 'button[aria-label="Previous users page"]', back=True)
    page.keyboard.press("Enter")
    expect(page.get_by_text("1–20 of 23")).to_be_visible()
    assert_focus_kept(page, "Previous users page")

    # The first row's Details, its override form, and back to the row.
    email = f"{prefix}00@example.com"
    tab_to(page, f'button[aria-label="Details for {email}"]', back=True)
    page.keyboard.press("Enter")
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text("Walker 00")
    expect(drawer.get_by_role("textbox", name="New limit")).to_be_visible()
    page.wait_for_function("() => !!document.activeElement.closest('#user-drawer')")
    _pick(page, "Metric", "API calls")
    tab_to(page, "#user-drawer input")
    page.keyboard.type("777")
    tab_to(page, "#user-drawer textarea")
    page.keyboard.type("Walked by keyboard")
    stops = tab_to(page, "#user-drawer button[type=submit]")
    page.keyboard.press("Enter")
    expect(drawer).to_contain_text("API calls limit saved.")
    expect(drawer).to_contain_text("777")
    assert_focus_kept(page, "Save override")
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)
    expect(page.get_by_role("button", name=f"Details for {email}")).to_be_focused()

    # The tabs: arrows move between them; the invoices' filter and export are in reach.
    tab_to(page, '[role="tab"][aria-selected="true"]', back=True)
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Invoices")).to_be_focused()
    expect(page.get_by_role("tab", name="Invoices")).to_have_attribute("aria-selected", "true")
    _pick(page, "Filter invoices by status", "Paid")
    tab_to(page, 'a[href*="invoices.csv"]')
    assert focused(page).startswith("A")


def test_the_search_stays_with_the_list_and_refresh_reads_again(
    page: Page, live_app: LiveApp
) -> None:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users

    _users(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("x.maximiliana")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    # Away and back: the box still says what the list is filtered by.
    page.get_by_role("link", name="Billing", exact=True).click()
    page.wait_for_url(re.compile(r".*/billing$"))
    page.get_by_role("link", name="Admin", exact=True).click()
    page.wait_for_url(re.compile(r".*/admin/billing$"))
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    expect(page.locator("#user-search")).to_have_value("x.maximiliana")

    # A customer signs up meanwhile: Refresh reads the numbers again.
    total = page.locator("#stats .rt-Card", has_text="Total users")
    before = int(re.sub(r"\D", "", total.inner_text()))
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        users.create_user(session, f"refresh{before}@example.com", "Refresh")
    engine.dispose()
    page.get_by_role("button", name="Refresh").click()
    expect(total).to_contain_text(f"{before + 1:,}")


def test_on_a_phone_the_headline_numbers_read_whole(page: Page, live_app: LiveApp) -> None:
    """Two stat cards a row at 375 px: an MRR of five figures stays inside its card."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users
    from tests.factories import make_subscription

    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        for i in range(25):  # $499 each: MRR past $12,000
            if users.get_user_by_email(session, f"mrr{i}@phone.test") is None:
                user = users.create_user(session, f"mrr{i}@phone.test", "MRR")
                make_subscription(session, user.id, plan="enterprise", sub_id=f"sub_mrr{i}")
    engine.dispose()
    page.set_viewport_size({"width": 375, "height": 800})
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    mrr = page.locator("#stats .rt-Card", has_text="MRR")
    expect(mrr).to_contain_text(re.compile(r"\$\d{2,3},\d{3}\.\d{2}"))
    for card in page.locator("#stats .rt-Card").all():
        # The card hides what runs past its edge: nothing may.
        assert card.evaluate("c => c.scrollWidth <= c.clientWidth"), card.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_the_override_form_still_says_what_a_limit_means_once_typed(
    page: Page, live_app: LiveApp
) -> None:
    """On a phone: the fields' labels and hints stay in sight, whole, while a limit is
    typed (a placeholder, "New limit (0 = unlimited)", was cut off and went on the first
    key); the hints are the fields' descriptions for a screen reader."""
    page.set_viewport_size({"width": 375, "height": 800})
    drawer = open_user_drawer(page, live_app, live_app.user_email, live_app.user_email)
    limit = drawer.get_by_role("textbox", name="New limit")
    limit.fill("0")
    hint = drawer.get_by_text("0 means unlimited")
    expect(hint).to_be_visible()
    expect(limit).to_have_accessible_description(re.compile("0 means unlimited"))
    reason = drawer.get_by_role("textbox", name="Reason")
    expect(reason).to_have_accessible_description(re.compile("kept in the audit log"))
    for text in ("New limit", "0 means unlimited", "kept in the audit log"):
        shown = drawer.get_by_text(text).first
        assert shown.evaluate("e => e.scrollWidth <= e.clientWidth"), text
        box = shown.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 375, (text, box)


def test_far_past_the_limit_the_numbers_read_whole(page: Page, live_app: LiveApp) -> None:
    uid = _users(live_app)
    live_app.post_usage(uid, "tokens", 1_050_000)
    login(page, live_app, LONG_EMAIL, "long-pass-123")
    # Thousands grouped in the percentage too (the limit may be an override by now).
    expect(page.locator("#meter-tokens")).to_contain_text(re.compile(r"· \d{1,3}(,\d{3})+%"))
    # The axis's top tick is drawn whole, inside the chart.
    tick = page.locator(".recharts-yAxis-tick-labels text").last
    expect(tick).to_have_text(re.compile(r"^1,\d{3},\d{3}$"))
    box, chart = tick.bounding_box(), page.locator(".recharts-wrapper").bounding_box()
    assert box is not None and chart is not None and box["x"] >= chart["x"] - 1, (box, chart)
    # "See plans" is one stop for Tab, a link to the plans.
    see = page.get_by_role("link", name="See plans")
    expect(see).to_have_count(1)
    assert see.evaluate("a => a.querySelectorAll('button, a').length") == 0
    # A long name in the header on a tablet: cut short, Sign out still on the screen.
    for width in (768, 900):
        page.set_viewport_size({"width": width, "height": 900})
        out = page.get_by_role("button", name="Sign out").bounding_box()
        assert out is not None and out["x"] + out["width"] <= width, (width, out)
        assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_signing_out_leaves_the_next_user_of_the_tab_nothing(page: Page, live_app: LiveApp) -> None:
    """The tab's pages keep their state under a token in sessionStorage: an admin who made
    a key and signed out must not hand that state (the key's secret) to whoever signs in
    next in the same tab."""
    _users(live_app)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()
    page.get_by_role("textbox", name="Key name").fill("left-behind")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("bk_")
    before = page.evaluate("sessionStorage.getItem('token')")
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(str(f))))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/login"))
    expect(page.locator("#email")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('token')") != before
    login(page, live_app, LONG_EMAIL, "long-pass-123")
    expect(page.get_by_text("Usage this period")).to_be_visible()
    assert frames and not any(secret in f for f in frames)


def _audit(live_app: LiveApp, uid: int) -> list[tuple[int, int, str]]:
    from sqlalchemy import text

    from billing_app.db import create_db_engine, session_scope

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as s:
            sql = "select old_limit, new_limit, reason from quota_audit where user_id = :u"
            return [tuple(r) for r in s.execute(text(sql + " order by id"), {"u": uid}).all()]
    finally:
        engine.dispose()


def _open_drawer(page: Page, live_app: LiveApp, sign_in: bool = True) -> Locator:
    if sign_in:
        login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.locator("#user-search").fill("x.maximiliana")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    page.get_by_role("button", name=f"Details for {LONG_EMAIL}").click()
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text(LONG_NAME)
    return drawer


def test_enter_twice_saves_once_and_two_admins_each_leave_an_audit_row(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    """Enter pressed twice quickly saves once and says so (the second is no "Enter a whole
    number" over a good save); two admins on one quota: the last wins, one audit row
    each, and each drawer shows the stored value once it reads again."""
    uid = _users(live_app)
    before = len(_audit(live_app, uid))
    drawer = _open_drawer(page, live_app)
    drawer.get_by_role("textbox", name="Reason").fill("double enter")
    limit = drawer.get_by_role("textbox", name="New limit")
    limit.fill("5151")
    limit.press("Enter")
    limit.press("Enter")
    expect(drawer).to_contain_text("Tokens limit saved.")
    expect(drawer).to_contain_text("5,151")
    # The state answers a tab's events in order: once the metric chosen after the two
    # Enters shows (the select shows the state's value), the second Enter was answered.
    metric = drawer.get_by_role("combobox", name="Metric")
    for option in ("API calls", "Tokens"):
        choose(page, metric, option)
        expect(metric).to_contain_text(option)
    expect(drawer).not_to_contain_text("Enter a whole number")
    expect(drawer).to_contain_text("Tokens limit saved.")
    assert [r[1:] for r in _audit(live_app, uid)[before:]] == [(5151, "double enter")]

    other = browser.new_page()
    drawer2 = _open_drawer(other, live_app)
    for d, value, reason in ((drawer, "6161", "admin one"), (drawer2, "7171", "admin two")):
        d.get_by_role("textbox", name="Reason").fill(reason)
        d.get_by_role("textbox", name="New limit").fill(value)
    drawer.get_by_role("button", name="Save override").click()
    drawer2.get_by_role("button", name="Save override").click()
    expect(drawer2).to_contain_text("Tokens limit saved.")
    expect(drawer).to_contain_text("Tokens limit saved.")
    rows = _audit(live_app, uid)[before + 1 :]
    assert sorted(r[2] for r in rows) == ["admin one", "admin two"], rows
    assert rows[0][0] == 5151 and rows[1][0] == rows[0][1], rows  # each logs what it replaced
    stored = f"{rows[1][1]:,}"
    expect(drawer2.locator("tr", has_text="Tokens").first).to_contain_text(stored)
    other.close()
    page.reload()
    drawer = _open_drawer(page, live_app, sign_in=False)
    expect(drawer.locator("tr", has_text="Tokens").first).to_contain_text(stored)


def test_a_key_made_to_read_only_reads(page: Page, live_app: LiveApp) -> None:
    """The key form's Access choice: a key made for a dashboard reads usage and is
    refused a write; the list and the ready-to-paste request say what it may do. Every
    field keeps a visible label (the name's was a placeholder, gone on the first key)."""
    import httpx

    uid = live_app.user_id(live_app.user_email)
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="API keys").click()
    name = page.get_by_label("Key name")
    name.fill("dashboard-reader")
    choose(page, "Access", "Read usage and check quotas")
    expect(page.get_by_role("combobox", name="Access")).to_contain_text("Read usage")
    expect(page.get_by_text("Key name", exact=True)).to_be_visible()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("bk_")
    expect(page.locator("#curl-example")).not_to_contain_text("-X POST")
    row = page.locator("#keys-table").get_by_role("row").filter(has_text="dashboard-reader")
    expect(row).to_contain_text("Read usage and check quotas")

    auth = {"Authorization": f"Bearer {secret}"}
    read = httpx.get(f"{live_app.url}/api/billing/usage?user_id={uid}", headers=auth, timeout=10)
    assert read.status_code == 200, read.text
    write = httpx.post(
        f"{live_app.url}/api/billing/usage",
        headers=auth,
        json={"user_id": uid, "metric": "tokens", "quantity": 1},
        timeout=10,
    )
    assert write.status_code == 403, write.text
    assert write.json()["error"]["code"] == "forbidden"


def test_an_invoices_customer_opens_their_drawer_and_gets_the_focus_back(
    page: Page, live_app: LiveApp
) -> None:
    """In the Invoices tab the customer's email was plain text: an admin looking into an
    unpaid invoice had to go and search the users list for its customer. It opens their
    drawer, and closing it gives the focus back to that invoice's email."""
    from datetime import UTC, datetime

    uid = _users(live_app)
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_drawer_test", user_id=uid, number="DRAWER-0001",
             status="uncollectible", total=9900, amount_due=9900, amount_paid=0,
             currency="usd", created_at=datetime(2030, 1, 1, tzinfo=UTC)),
    )  # fmt: skip
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    # The users list holds nobody: the focus's way back must not depend on it.
    page.locator("#user-search").fill("nobody-by-this-name")
    expect(page.get_by_text("No users match")).to_be_visible()
    page.get_by_role("tab", name="Invoices").click()
    row = page.locator("#admin-invoices-table").get_by_role("row").filter(has_text="DRAWER-0001")
    email = row.get_by_role("button", name=LONG_EMAIL, exact=True)
    email.focus()
    page.keyboard.press("Enter")
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text(LONG_NAME)
    expect(drawer).to_contain_text("DRAWER-0001")  # the drawer's own invoices
    page.wait_for_function("() => !!document.activeElement.closest('#user-drawer')")
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)
    expect(email).to_be_focused()
    assert_focus_kept(page, "closing the drawer opened from an invoice")


def test_closing_the_drawer_after_its_invoice_left_the_list_focuses_the_invoices_filter(
    page: Page, live_app: LiveApp
) -> None:
    """Opened from an invoice's customer, and the list read again meanwhile no longer
    holds that invoice: closing gave focus to the users search, in the hidden Users tab.
    It goes to the Invoices tab's filter, in sight."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from billing_app.db import create_db_engine, session_scope

    uid = _users(live_app)
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_leaves_list", user_id=uid, number="LEAVES-0001",
             status="void", total=4900, amount_due=0, amount_paid=0,
             currency="usd", created_at=datetime(2030, 2, 1, tzinfo=UTC)),
    )  # fmt: skip
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    page.get_by_role("tab", name="Invoices").click()
    status = page.get_by_role("combobox", name="Filter invoices by status")
    choose(page, status, "Void")
    # CSS, not roles: under the open drawer the page is hidden from the accessibility
    # tree, and a role locator finds no row there whether it is listed or not.
    row = page.locator("#admin-invoices-table tr", has_text="LEAVES-0001")
    expect(row).to_have_count(1)
    row.get_by_role("button", name=LONG_EMAIL, exact=True).focus()
    page.keyboard.press("Enter")
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text(LONG_NAME)
    page.wait_for_function("() => !!document.activeElement.closest('#user-drawer')")
    # Meanwhile the invoice is voided no more (Stripe's webhook), and the console reads
    # again (its Refresh, under the drawer's overlay: a stand-in for any read-again).
    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as s:
            s.execute(text("update invoice set status = 'paid' where number = 'LEAVES-0001'"))
            s.commit()
    finally:
        engine.dispose()
    page.locator("#refresh-console").dispatch_event("click")
    expect(row).to_have_count(0)
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)
    expect(status).to_be_focused()
    assert page.evaluate("() => document.activeElement.checkVisibility()"), focused(page)
    assert_focus_kept(page, "closing the drawer of an invoice no longer listed")


def test_the_drawers_invoices_open_without_scrolling_sideways(
    browser: Browser, live_app: LiveApp
) -> None:
    """A customer calls about an invoice: its View and PDF links in the drawer's Recent
    invoices were past the drawer's right edge, the Status column cut in half, on a
    desktop's 480px drawer and on a phone; the admin had to scroll the table sideways to
    open it. The whole row fits the drawer, with a Stripe-length number, a long
    description and a credit's note."""
    from datetime import UTC, datetime

    email = "calls-about-invoices@example.com"
    uid = ensure_user(live_app, email)
    links = {"hosted_invoice_url": "https://invoice.stripe.com/i/x", "invoice_pdf":
             "https://pay.stripe.com/invoice/x/pdf", "user_id": uid, "currency": "usd"}  # fmt: skip
    ensure_invoices(
        live_app,
        dict(stripe_invoice_id="in_fit_paid", number="7F3A2B1C-0012", status="uncollectible",
             total=49900, amount_due=49900, amount_paid=0, amount_remaining=49900,
             description="Remaining time on Enterprise after 25 Dec 2029 (prorated)",
             created_at=datetime(2029, 12, 25, tzinfo=UTC), **links),
        dict(stripe_invoice_id="in_fit_credit", number="7F3A2B1C-0011", status="paid",
             total=-4554, amount_due=0, amount_paid=0, amount_remaining=0,
             created_at=datetime(2029, 11, 25, tzinfo=UTC), **links),
    )  # fmt: skip
    for viewport in ({"width": 1280, "height": 800}, {"width": 390, "height": 844}):
        page = browser.new_page(viewport=viewport, is_mobile=viewport["width"] < 500)
        try:
            drawer = open_user_drawer(page, live_app, "calls-about-invoices@", email)
            table = drawer.locator("#drawer-invoices-table")
            expect(table).to_contain_text("credited to balance")
            expect(table).to_contain_text("Remaining time on Enterprise after 25 Dec 2029")
            right = drawer.evaluate("d => d.getBoundingClientRect().right")
            for link in table.get_by_role("link").all() + table.locator(".rt-Badge").all():
                box = link.bounding_box()
                assert box is not None and box["x"] + box["width"] <= right, (viewport, box)
            wide = table.evaluate("t => t.parentElement.scrollWidth - t.parentElement.clientWidth")
            assert wide <= 0, (viewport, f"the table scrolls {wide}px sideways")
        finally:
            page.close()
