"""The product in a real browser: sign-up, guards, checkout, live usage, portal, admin."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.conftest import LiveApp, choose, login, screenshot, signup

pytestmark = pytest.mark.browser


def meter_bar(page: Page, label: str):  # noqa: ANN201
    return page.get_by_role("progressbar", name=label)


def expect_paid_invoice(table: Locator, amount: str) -> None:
    """The invoice table lists a paid invoice of `amount` whose View and PDF links answer."""
    expect(table).to_contain_text(amount)
    expect(table).to_contain_text("Paid")
    for name in ("View", "PDF"):
        href = table.get_by_role("link", name=name).first.get_attribute("href")
        assert href and href.startswith("http")
        assert httpx.get(href, timeout=10).status_code == 200


def test_signup_logout_and_login(page: Page, live_app: LiveApp) -> None:
    page.goto(f"{live_app.url}/signup")
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    expect(page.locator("#email")).to_be_visible()  # the form mounts once the state loaded
    screenshot(page, "signup")

    email = signup(page, live_app, "ada")
    expect(page.get_by_text(email)).to_be_visible()
    expect(page.locator("#current-plan")).to_have_text("Free")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/login"))
    expect(page.get_by_role("status")).to_have_text("You are signed out.")

    # A wrong password is refused with an inline error (and no word of the sign-out).
    page.locator("#email").fill(email)
    page.locator("#password").fill("not-the-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("incorrect")
    expect(page.get_by_text("You are signed out.")).to_have_count(0)
    # There is no reset by email; the page says who can reset it.
    expect(page.locator("#forgot-password")).to_contain_text("Ask an administrator to reset it")

    login(page, live_app, email, "correct-horse-battery")
    expect(page.get_by_text(email)).to_be_visible()


def test_sso_button_signs_in_through_the_identity_provider(page: Page, live_app: LiveApp) -> None:
    """The button leaves the app for the provider (a full page load, not the app's own
    routing, which would answer its 404) and comes back signed in, to the page asked."""
    page.goto(f"{live_app.url}/login?next=/billing")
    page.get_by_role("link", name="Sign in with SSO").click()
    page.wait_for_url(re.compile(re.escape(live_app.url) + r"/billing/?$"))
    expect(page.get_by_text("sso@example.com")).to_be_visible()
    expect(page.locator("#current-plan")).to_have_text("Free")


def test_signed_out_billing_goes_to_login_and_back(page: Page, live_app: LiveApp) -> None:
    page.goto(f"{live_app.url}/billing")
    page.wait_for_url(re.compile(r".*/login\?next=%2Fbilling|.*/login\?next=/billing"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#email")).to_be_visible()
    screenshot(page, "login")
    page.locator("#email").fill(live_app.user_email)
    page.locator("#password").fill(live_app.user_password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(re.escape(live_app.url) + "/billing"))
    expect(page.get_by_text("Usage this period")).to_be_visible()

    # "/" goes to the dashboard once signed in; a canceled Checkout says so.
    page.goto(live_app.url + "/")
    page.wait_for_url(re.compile(re.escape(live_app.url) + "/billing"))
    page.goto(f"{live_app.url}/billing?checkout=canceled")
    expect(page.locator("#checkout-canceled")).to_contain_text("You have not been charged")


def test_non_admin_sees_403(page: Page, live_app: LiveApp) -> None:
    login(page, live_app, live_app.user_email, live_app.user_password)
    # /admin, as typed, leads to the console's page (not a 404), which refuses.
    page.goto(f"{live_app.url}/admin")
    page.wait_for_url(re.compile(re.escape(live_app.url) + r"/admin/billing/?$"))
    expect(page.get_by_text("403")).to_be_visible()
    expect(page.get_by_text("You don't have access to this page")).to_be_visible()
    expect(page.locator("#users-table")).to_have_count(0)
    screenshot(page, "403")
    # The admin API refuses the same user too.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    r = httpx.get(f"{live_app.url}/api/billing/admin/users", cookies=cookies, timeout=10)
    assert r.status_code == 403


def test_usage_moves_bars_live_with_thresholds(page: Page, live_app: LiveApp) -> None:
    email = signup(page, live_app, "meter")
    user_id = live_app.user_id(email)
    bar = meter_bar(page, "API calls")
    expect(bar).to_have_attribute("aria-valuenow", "0")

    live_app.post_usage(user_id, "api_calls", 50)  # 50 of 100 on Free
    expect(bar).to_have_attribute("aria-valuenow", "50", timeout=4000)
    expect(bar).to_have_attribute("data-color", "indigo")
    expect(page.locator("#meter-api_calls")).to_contain_text("50 / 100")

    live_app.post_usage(user_id, "api_calls", 30)  # 80 %: amber
    expect(bar).to_have_attribute("data-color", "amber", timeout=4000)
    expect(page.get_by_text("You have used 80% or more of a limit")).to_be_visible()

    live_app.post_usage(user_id, "api_calls", 25)  # 105 %: red, bar full
    expect(bar).to_have_attribute("data-color", "red", timeout=4000)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#meter-api_calls")).to_contain_text("105%")
    expect(page.locator("#limit-reached")).to_contain_text("API calls: limit reached (105 of 100)")
    expect(page.locator("#meter-api_calls")).to_contain_text("Limit reached")


def test_subscribe_pro_then_change_plan_in_portal(
    page: Page, live_app: LiveApp, browser: Browser
) -> None:
    email = signup(page, live_app, "buyer")
    expect(page.locator("#meter-tokens")).to_contain_text("/ 10,000")

    page.locator("#choose-pro").click()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    expect(page.locator("#checkout-success")).to_be_visible()
    # Shown once: the query leaves the URL, so a reload does not bring the banner back.
    expect(page).to_have_url(re.compile(re.escape(live_app.url) + r"/billing/?$"))
    # The webhook lands asynchronously; the page picks it up without a reload.
    expect(page.locator("#current-plan")).to_have_text("Pro")
    expect(page.locator("#meter-tokens")).to_contain_text("/ 1,000,000")
    expect(page.locator("#meter-api_calls")).to_contain_text("/ 10,000")
    expect(page.get_by_role("button", name="Current plan")).to_be_disabled()

    # The invoice table lists the payment with working links.
    expect_paid_invoice(page.locator("#invoices-table"), "$99.00")

    # Some usage, so the screenshot shows bars and a chart.
    user_id = live_app.user_id(email)
    live_app.post_usage(user_id, "tokens", 420_000)
    live_app.post_usage(user_id, "api_calls", 8_600)
    live_app.post_usage(user_id, "scraping_tasks", 120)
    expect(page.locator("#meter-api_calls")).to_contain_text("8,600 / 10,000")
    # Days without usage draw no bar; today's does.
    expect(page.locator(".recharts-bar-rectangle path").first).to_be_visible()
    # Thousands grouped on the chart's axis and in its tooltip, as on the meters.
    expect(page.locator(".recharts-yAxis-tick-labels text").last).to_have_text(
        re.compile(r"^\d{1,3}(,\d{3})+$")
    )
    screenshot(page, "billing")
    page.locator(".recharts-bar-rectangle path").last.hover()
    expect(page.locator(".recharts-tooltip-item")).to_have_text("tokens: 420,000")
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{live_app.url}/billing")
    expect(phone.locator("#current-plan")).to_have_text("Pro")
    screenshot(phone, "billing-phone")
    phone.close()

    # Portal: switch to Basic, come back, see the new plan and limits.
    page.locator("#manage-subscription").click()
    page.wait_for_url(re.compile(r".*/portal/.*"))
    page.locator("#switch-price_sandbox_basic").click()
    page.locator("#return-link").click()
    page.wait_for_url(re.compile(re.escape(live_app.url) + "/billing"))
    expect(page.locator("#current-plan")).to_have_text("Basic")
    expect(page.locator("#meter-tokens")).to_contain_text("/ 100,000")


def test_admin_console(page: Page, live_app: LiveApp, browser: Browser) -> None:
    from sqlmodel import select

    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import Invoice
    from billing_app.services import users

    # Enough users for several pages, all sharing a searchable domain.
    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        for i in range(45):
            if users.get_user_by_email(session, f"crowd{i:02d}@pager.test") is None:
                users.create_user(session, f"crowd{i:02d}@pager.test", f"Crowd {i}")
        # A paid invoice of the crowd's own (not a crowd subscription: the filters below
        # expect nobody in it to pay), so the test does not lean on the checkout test.
        if (
            session.exec(select(Invoice).where(Invoice.stripe_invoice_id == "in_crowd")).first()
            is None
        ):
            payer = users.get_user_by_email(session, "crowd44@pager.test")
            session.add(
                Invoice(
                    stripe_invoice_id="in_crowd",
                    user_id=payer.id,
                    number="CROWD-0001",
                    status="paid",
                    amount_due=1900,
                    amount_paid=1900,
                )
            )
            session.commit()
    engine.dispose()

    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    expect(page.get_by_role("heading", name="Billing admin")).to_be_visible()
    expect(page.locator("#stats")).to_contain_text("MRR")
    expect(page.locator("#users-table")).to_be_visible()
    screenshot(page, "admin", full_page=False)

    # Search, then paginate the matches.
    page.locator("#user-search").fill("crowd")
    expect(page.get_by_text("1–20 of 45")).to_be_visible()
    page.get_by_role("button", name="Next users page").click()
    expect(page.get_by_text("21–40 of 45")).to_be_visible()
    page.get_by_role("button", name="Next users page").click()
    expect(page.get_by_text("41–45 of 45")).to_be_visible()

    # Filter by plan: nobody in the crowd pays.
    choose(page, "Filter by plan", "Pro")
    expect(page.get_by_text("No users match")).to_be_visible()
    choose(page, "Filter by plan", "Free")
    expect(page.get_by_text("1–20 of 45")).to_be_visible()

    choose(page, "Filter by status", "Active")
    expect(page.get_by_text("No users match")).to_be_visible()
    choose(page, "Filter by status", "No subscription")
    expect(page.get_by_text("1–20 of 45")).to_be_visible()

    # Override a quota with a reason, from the user drawer.
    page.locator("#user-search").fill("crowd07@")
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    page.get_by_role("button", name="Details for crowd07@pager.test").click()
    drawer = page.locator("#user-drawer")
    expect(drawer).to_contain_text("crowd07@pager.test")
    drawer.get_by_role("textbox", name="New limit").fill("777")
    drawer.get_by_role("button", name="Save override").click()
    expect(drawer).to_contain_text("A reason is required")
    drawer.get_by_role("textbox", name="Reason").fill("Pilot customer")
    drawer.get_by_role("button", name="Save override").click()
    expect(drawer).to_contain_text("Tokens limit saved.")
    expect(drawer).to_contain_text("777")
    expect(drawer.get_by_text("Override", exact=True)).to_be_visible()
    # Saving cleared the Reason box; Reset to plan needs no typed reason.
    expect(drawer.get_by_role("textbox", name="Reason")).to_have_value("")
    drawer.get_by_role("button", name="Reset to plan").click()
    expect(drawer).to_contain_text("Tokens limit reset to the plan.")
    expect(drawer).not_to_contain_text("A reason is required")
    expect(drawer.get_by_text("Override", exact=True)).to_have_count(0)
    expect(drawer).to_contain_text("Reset to plan")  # the audit log's reason
    drawer.get_by_role("textbox", name="New limit").fill("777")
    drawer.get_by_role("textbox", name="Reason").fill("Pilot customer")
    drawer.get_by_role("button", name="Save override").click()
    expect(drawer).to_contain_text("Tokens limit saved.")
    page.keyboard.press("Escape")

    # A paying customer (through the sandbox's Checkout, in a page of their own): the
    # drawer shows their plan, status, renewal, Stripe ids and invoices.
    pro_card = page.locator("#stats .rt-Card", has_text="Pro subscribers")
    found = re.search(r"Pro subscribers\s*(\d+)", pro_card.inner_text())
    assert found
    pros = int(found.group(1))
    buyer = browser.new_page()
    buyer_email = signup(buyer, live_app, "drawer")
    buyer.locator("#choose-pro").click()
    buyer.wait_for_url(re.compile(r".*/checkout/.*"))
    buyer.locator("#card-number").fill("4242 4242 4242 4242")
    buyer.locator("#pay").click()
    expect(buyer.locator("#current-plan")).to_have_text("Pro")
    expect(buyer.locator("#invoices-table")).to_contain_text("$99.00")
    buyer.close()
    # The filters above still say Free / No subscription.
    choose(page, "Filter by plan", "All plans")
    choose(page, "Filter by status", "All statuses")
    page.locator("#user-search").fill(buyer_email)
    # The counts are reloaded with the list: the new customer is in both.
    expect(pro_card).to_contain_text(re.compile(rf"Pro subscribers\s*{pros + 1}\b"))
    page.get_by_role("button", name=f"Details for {buyer_email}").click()
    expect(drawer).to_contain_text(buyer_email)
    summary = drawer.locator("#drawer-subscription")
    expect(summary).to_contain_text("Pro · $99.00 / month")
    expect(summary.get_by_text("Active", exact=True)).to_be_visible()
    expect(summary).to_contain_text(re.compile(r"Renews on [A-Z][a-z]{2} \d{1,2}, \d{4}"))
    expect(summary).to_contain_text(re.compile(r"cus_\w+"))
    expect(summary).to_contain_text(re.compile(r"sub_\w+"))
    # The sandbox has no Stripe dashboard: the ids are text, not links.
    expect(summary.get_by_role("link")).to_have_count(0)
    expect_paid_invoice(drawer.locator("#drawer-invoices-table"), "$99.00")
    # Taller than the screen now: the tables keep their height and the drawer scrolls
    # (stretched to the screen, the drawer's column had squeezed the quotas to a header).
    assert drawer.evaluate(
        "d => [...d.querySelectorAll('.rt-TableRoot')]"
        ".every(t => t.parentElement.clientHeight >= t.offsetHeight)"
    )
    # Not mid-slide: the drawer has just opened.
    page.wait_for_function("document.getAnimations().every(a => a.playState !== 'running')")
    screenshot(page, "admin-user", full_page=False)
    page.keyboard.press("Escape")

    # Invoices across all users, filtered by status.
    page.get_by_role("tab", name="Invoices").click()
    choose(page, "Filter invoices by status", "Void")
    expect(page.get_by_text("Nothing matches this filter.")).to_be_visible()
    choose(page, "Filter invoices by status", "Paid")
    invoices = page.locator("#admin-invoices-table")
    expect(invoices).to_contain_text("CROWD-0001")
    expect(invoices).to_contain_text("Paid")
    expect(invoices).not_to_contain_text("Open")
    # The billing page's invoice table with a leading Customer column: the same View
    # and PDF links (the buyer's invoice is the newest).
    expect(invoices.get_by_role("columnheader").first).to_have_text("Customer")
    bought = invoices.get_by_role("row").filter(has_text=buyer_email)
    expect(bought.get_by_role("cell").first).to_have_text(buyer_email)
    expect_paid_invoice(bought, "$99.00")

    # API key: created, shown once, and it works against the usage API.
    page.get_by_role("tab", name="API keys").click()
    page.get_by_role("textbox", name="Key name").fill("browser-test")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("bk_")
    expect(page.locator("#curl-example")).to_contain_text(secret)
    expect(page.locator("#keys-table")).to_contain_text("browser-test")
    live_app.post_usage(live_app.user_id("crowd07@pager.test"), "tokens", 5, key=secret)


def test_error_query_is_never_shown_verbatim(page: Page, live_app: LiveApp) -> None:
    spoof = "Your account was suspended. Call +1 555 0100 to restore it."
    page.goto(f"{live_app.url}/login?error={spoof.replace(' ', '+').replace('+1', '%2B1')}")
    expect(page.get_by_role("alert")).to_have_text("Sign-in failed. Please try again.")
    expect(page.get_by_text("suspended")).to_have_count(0)
    page.goto(f"{live_app.url}/signup?error=Verify+your+card+at+evil.example")
    expect(page.get_by_role("alert")).to_have_text(
        "Could not create the account. Please try again."
    )
    expect(page.get_by_text("evil.example")).to_have_count(0)
    # The app's own refusals still read as before.
    page.goto(f"{live_app.url}/login")
    page.locator("#email").fill(live_app.user_email)
    page.locator("#password").fill("not-the-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("Email or password is incorrect.")


def test_signup_error_keeps_name_and_email_not_password(page: Page, live_app: LiveApp) -> None:
    page.goto(f"{live_app.url}/signup")
    page.locator("#display_name").fill("Second Ada")
    page.locator("#email").fill(live_app.user_email)  # taken
    page.locator("#password").fill("correct-horse-battery")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_have_text(
        "An account with this email already exists. Sign in instead."
    )
    expect(page).to_have_url(re.compile(r".*/signup/?\?error="))
    expect(page.locator("#display_name")).to_have_value("Second Ada")
    expect(page.locator("#email")).to_have_value(live_app.user_email)
    expect(page.locator("#password")).to_have_value("")
    # Fixing the email and signing up goes through with the kept name.
    email = f"second-ada-{int(time.time() * 1000) % 10**8}@example.com"
    page.locator("#email").fill(email)
    page.locator("#password").fill("correct-horse-battery")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(re.escape(live_app.url) + "/billing"))
    expect(page.get_by_text("Second Ada")).to_be_visible()


def test_signup_page_past_the_limit_says_so_and_keeps_the_form(
    page: Page, live_app: LiveApp
) -> None:
    """The page's form posts to the same route as JSON callers; refused there for the
    address's sign-up limit, the page says why (not sign-in's limit text)."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import SignupAttempt
    from billing_app.services import auth

    engine = create_db_engine(live_app.database_url)
    try:
        with session_scope(engine) as session:  # this machine's addresses, at the limit
            for ip in ("127.0.0.1", "::1"):
                session.add_all(SignupAttempt(ip=ip) for _ in range(auth.MAX_SIGNUPS_PER_IP))
            session.commit()
    finally:
        engine.dispose()
    page.goto(f"{live_app.url}/signup")
    page.locator("#display_name").fill("Eleventh")
    page.locator("#email").fill(f"eleventh-{int(time.time() * 1000) % 10**8}@example.com")
    page.locator("#password").fill("correct-horse-battery")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r".*/signup/?\?error=signup_limited"))
    expect(page.get_by_role("alert")).to_have_text(auth.SIGNUP_LIMITED)
    expect(page.locator("#display_name")).to_have_value("Eleventh")


def test_checkout_success_link_claims_no_payment_and_shows_once(
    page: Page, live_app: LiveApp
) -> None:
    signup(page, live_app, "forged")
    page.goto(f"{live_app.url}/billing?checkout=success&session_id=anything")
    notice = page.locator("#checkout-success")
    expect(notice).to_contain_text("as soon as Stripe confirms the payment")
    expect(page.get_by_text("Payment received")).to_have_count(0)
    expect(page).to_have_url(re.compile(re.escape(live_app.url) + r"/billing/?$"))
    page.reload()
    expect(page.get_by_text("Usage this period")).to_be_visible()
    expect(notice).to_have_count(0)
    # Dismissible too.
    page.goto(f"{live_app.url}/billing?checkout=canceled")
    expect(page.locator("#checkout-canceled")).to_be_visible()
    page.locator("#checkout-canceled").get_by_role("button", name="Dismiss").click()
    expect(page.locator("#checkout-canceled")).to_have_count(0)


def test_meter_over_the_limit_by_one_says_so(page: Page, live_app: LiveApp) -> None:
    email = signup(page, live_app, "overage")
    live_app.post_usage(live_app.user_id(email), "tokens", 10_001)  # Free: 10,000
    meter = page.locator("#meter-tokens")
    expect(meter).to_contain_text("10,001 / 10,000", timeout=4000)
    expect(meter).to_contain_text("100%+")
    expect(meter_bar(page, "Tokens")).to_have_attribute("data-color", "red")


def test_404_has_the_apps_look_and_a_way_back(page: Page, live_app: LiveApp) -> None:
    page.goto(f"{live_app.url}/no/such/page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page).to_have_title(re.compile("Page not found"))
    page.get_by_role("link", name="Back to billing").click()
    page.wait_for_url(re.compile(r".*/(billing|login).*"))


def test_phone_sign_out_and_admin_user_drawer(browser: Browser, live_app: LiveApp) -> None:
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    login(phone, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    # The icon-only Sign out button still has a name.
    sign_out = phone.get_by_role("button", name="Sign out")
    expect(sign_out).to_be_visible()
    # The user's email opens the drawer: it is on screen and keyboard reachable.
    phone.locator("#user-search").fill(live_app.user_email)
    expect(phone.get_by_text("1–1 of 1")).to_be_visible()
    email = phone.get_by_role("button", name=live_app.user_email, exact=True)
    expect(email).to_be_visible()
    box = email.bounding_box()
    assert box is not None and box["x"] + box["width"] / 2 < 390
    email.focus()
    phone.keyboard.press("Enter")
    drawer = phone.locator("#user-drawer")
    expect(drawer).to_contain_text(live_app.user_email)
    phone.keyboard.press("Escape")
    sign_out.click()
    phone.wait_for_url(re.compile(r".*/login"))
    phone.close()
