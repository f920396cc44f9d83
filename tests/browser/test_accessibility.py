"""Every page audited with axe-core (the engine behind Lighthouse's accessibility score):
landmarks, names of controls and table columns, colour contrast, ARIA use. Zero
violations of any impact, in each state a user meets: signed out, a customer near a
limit with invoices (one a credit), on a phone, 403 and 404, and the admin console's
tabs and drawer.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, Page, expect

from billing_app.settings import PROJECT_ROOT
from tests.browser.conftest import LiveApp, login, signup

pytestmark = pytest.mark.browser

AXE = PROJECT_ROOT / "tools" / "axe" / "node_modules" / "axe-core" / "axe.min.js"

_RUN_AXE = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.map(v => `${v.id} (${v.impact}): ${v.help} at ` +
    v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '));
}"""


def violations(page: Page) -> list[str]:
    assert AXE.exists(), f"{AXE} is missing: `make browsers` installs it"
    # Animations settled, so contrast is measured on the final colours (an endless one, a
    # loading pulse, never settles: not waited for).
    page.wait_for_function(
        """() => document.getAnimations().every(
            a => a.playState !== 'running' || a.effect.getComputedTiming().endTime === Infinity
        )"""
    )
    page.add_script_tag(path=str(AXE))
    return page.evaluate(_RUN_AXE)


def _give_invoice(live_app: LiveApp, email: str) -> None:
    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import Invoice

    engine = create_db_engine(live_app.database_url)
    with session_scope(engine) as session:
        session.add(
            Invoice(
                stripe_invoice_id=f"in_a11y_{live_app.user_id(email)}",
                user_id=live_app.user_id(email),
                number="A11Y-0001",
                status="paid",
                amount_due=1900,
                amount_paid=1900,
                hosted_invoice_url="https://invoice.example/a11y",
                invoice_pdf="https://invoice.example/a11y.pdf",
            )
        )
        # A downgrade's credit: paid 0, its negative total credited to the balance.
        session.add(
            Invoice(
                stripe_invoice_id=f"in_a11y_credit_{live_app.user_id(email)}",
                user_id=live_app.user_id(email),
                number="A11Y-0002",
                status="paid",
                amount_due=0,
                amount_paid=0,
                total=-1234,
                amount_remaining=0,
            )
        )
        session.commit()
    engine.dispose()


def test_every_page_has_no_axe_violations(page: Page, live_app: LiveApp, browser: Browser) -> None:
    for path in ("/login", "/signup", "/login?signed_out=1"):
        page.goto(f"{live_app.url}{path}")
        expect(page.locator("#email")).to_be_visible()
        assert violations(page) == [], path
    expect(page.get_by_role("status")).to_have_text("You are signed out.")

    # A customer over 80 % of a limit (the amber notice), with an invoice and a chart.
    email = signup(page, live_app, "a11y")
    live_app.post_usage(live_app.user_id(email), "tokens", 9_000)
    _give_invoice(live_app, email)
    page.reload()
    expect(page.get_by_text("You have used 80% or more of a limit")).to_be_visible()
    expect(page.locator("#invoices-table")).to_contain_text("A11Y-0001")
    credit = page.locator("#invoices-table").get_by_role("row").filter(has_text="A11Y-0002")
    expect(credit).to_contain_text("−$12.34credited to balanceCredit")
    expect(page.locator(".recharts-bar-rectangle path").first).to_be_visible()
    assert violations(page) == [], "/billing"

    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{live_app.url}/billing")
    expect(phone.locator("#invoices-list")).to_contain_text("A11Y-0001")  # a phone's list
    assert violations(phone) == [], "/billing on a phone"
    phone.close()

    page.goto(f"{live_app.url}/admin/billing")
    expect(page.get_by_text("403")).to_be_visible()
    assert violations(page) == [], "403"
    page.goto(f"{live_app.url}/no/such/page")
    expect(page.get_by_text("404")).to_be_visible()
    assert violations(page) == [], "404"

    page.context.clear_cookies()
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    expect(page.locator("#users-table")).to_be_visible()
    assert violations(page) == [], "admin users"

    page.locator("#user-search").fill(email)
    page.get_by_role("button", name=f"Details for {email}").click()
    drawer = page.locator("#user-drawer")
    expect(drawer.locator("#drawer-invoices-table")).to_contain_text("A11Y-0001")
    assert violations(page) == [], "admin user drawer"
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="Invoices").click()
    expect(page.locator("#admin-invoices-table")).to_contain_text("A11Y-0001")
    assert violations(page) == [], "admin invoices"

    page.get_by_role("tab", name="API keys").click()
    page.get_by_role("textbox", name="Key name").fill("a11y")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-secret")).to_contain_text(re.compile(r"^bk_"))
    assert violations(page) == [], "admin API keys, a new secret shown"


def test_the_dashboards_outline_and_chart_control_are_named_for_a_screen_reader(
    page: Page, live_app: LiveApp
) -> None:
    """Every heading on /billing was an h1 (the page's, each card's, each plan's), the
    chart's metric switch an unnamed radio group, and the chart named by its axis ticks."""
    email = signup(page, live_app, "outline")
    live_app.post_usage(live_app.user_id(email), "tokens", 5)  # a chart: none without usage
    expect(page.get_by_role("heading", level=1)).to_have_text(["Billing"])
    sections = page.get_by_role("heading", level=2)
    expect(sections).to_have_text(
        ["Free", "Usage this period", "Usage over time", "Plans", "Invoices"]
    )
    expect(page.locator("#plans").get_by_role("heading", level=3)).to_have_text(
        ["Basic", "Pro", "Enterprise"]
    )
    expect(page.get_by_role("radiogroup", name="Metric shown in the chart")).to_be_visible()
    # The chart, a Tab stop, is named for what it shows (its ticks in a row, before).
    expect(page.get_by_role("application", name="Daily tokens this period")).to_be_visible()


def test_the_consoles_outline_has_one_h1_and_its_sections_below_it(
    page: Page, live_app: LiveApp
) -> None:
    """The console's panels and the drawer's sections were h1s beside the page's own:
    a screen reader's list of headings was flat."""
    from tests.browser.conftest import open_user_drawer

    drawer = open_user_drawer(page, live_app, live_app.user_email, live_app.user_email)
    expect(drawer.get_by_role("heading", level=2)).to_have_text([live_app.user_email])
    # (Recent invoices and Recent changes show only when there are some.)
    expect(drawer.get_by_role("heading", level=3)).to_have_text(
        ["Subscription", "Usage this period", "Quotas", "Override a quota"]
    )
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)
    expect(page.get_by_role("heading", level=1)).to_have_text(["Billing admin"])
    page.get_by_role("tab", name="Invoices").click()
    expect(page.get_by_role("heading", level=2)).to_have_text(["Invoices"])
    page.get_by_role("tab", name="API keys").click()
    expect(page.get_by_role("heading", level=2)).to_have_text(["API keys"])
