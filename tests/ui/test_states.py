"""Reflex State classes without a browser: guards, loading, admin actions, view models."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import reflex as rx
import reflex.constants as c
from reflex.istate.data import RouterData
from sqlmodel import Session

from billing_app import settings as app_settings_module
from billing_app.services import auth, metering, quotas
from billing_app.services.auth import safe_next
from billing_app.states import auth_pages, views
from billing_app.states import format as fmt
from billing_app.states.admin import AdminState
from billing_app.states.auth_pages import AuthFormState
from billing_app.states.billing import BillingState, load_live, load_slow
from tests.factories import make_user


def state_for(
    cls: type[rx.State], *, cookie: str = "", path: str = "/billing", socket: str = "sock-1"
) -> Any:
    """A fresh state tree with the router a page load would give it (`socket`: the page's
    websocket; a reload opens a new one)."""
    root = rx.State()
    data = {
        c.RouteVar.HEADERS: {"cookie": cookie, "origin": "http://localhost:8000"},
        c.RouteVar.PATH: path.split("?")[0],
        c.RouteVar.ORIGIN: path,
        c.RouteVar.CLIENT_TOKEN: "test-token",
        c.RouteVar.SESSION_ID: socket,
    }
    root.router_data = data
    root.router = RouterData.from_router_data(data)
    return root.get_substate(tuple(cls.get_full_name().split(".")))


def cookie_for(session: Session, user_id: int) -> str:
    return f"{auth.SESSION_COOKIE}={auth.new_session(session, user_id)}"


def limit_of(session: Session, user_id: int, metric: str) -> int | None:
    """Read, then end the transaction: SQLite would otherwise keep the write lock."""
    value = quotas.limit_for(session, user_id, metric)
    session.rollback()
    return value


# ------------------------------------------------------------------ formatting


@pytest.mark.parametrize(
    ("percent", "unlimited", "color"),
    [(0, False, "indigo"), (79.9, False, "indigo"), (80, False, "amber"), (99, False, "amber"),
     (100, False, "red"), (250, False, "red"), (100, True, "grass")],
)  # fmt: skip
def test_meter_color_thresholds(percent: float, unlimited: bool, color: str) -> None:
    assert fmt.meter_color(percent, unlimited) == color


def test_money() -> None:
    assert fmt.money(9900, "usd") == "$99.00"
    assert fmt.money(123456, "sek") == "1,234.56 SEK"
    assert fmt.money(1500, "jpy") == "¥1,500"  # zero-decimal: the amount is in yen
    assert fmt.money(1500, "KRW") == "1,500 KRW"
    assert fmt.money(12345, "kwd") == "12.345 KWD"


def test_meter_view_over_limit_and_unlimited() -> None:
    resets = datetime(2026, 12, 1, tzinfo=UTC)
    over = views.meter_view(
        {"metric": "api_calls", "used": 105, "limit": 100, "unlimited": False, "percent": 100.0,
         "resets_at": resets}
    )  # fmt: skip
    assert (over.percent, over.percent_text, over.color) == (100, "105%", "red")
    assert over.used_text == "105" and over.limit_text == "100"
    assert over.resets_text == "Resets on Dec 1, 2026"
    unlimited = views.meter_view(
        {"metric": "tokens", "used": 5, "limit": 0, "unlimited": True, "percent": 0.0}
    )
    assert unlimited.limit_text == "Unlimited" and unlimited.percent_text == ""


def test_safe_next_refuses_other_sites() -> None:
    assert safe_next("/billing?x=1") == "/billing?x=1"
    for bad in ("https://evil.example", "//evil.example", "/\\evil", "", None):
        assert safe_next(bad) == "/billing"


# ------------------------------------------------------------------ billing


def test_billing_guard_sends_signed_out_visitor_to_login(session: Session) -> None:
    st = state_for(BillingState, path="/billing?checkout=success")
    result = asyncio.run(st.on_load())
    assert not st.signed_in
    spec = result
    assert spec.handler.fn.__name__ == "_redirect" or "redirect" in str(spec)
    assert "/login?next=/billing" in str(spec.args)


def test_billing_forged_cookie_is_not_a_user(session: Session) -> None:
    make_user(session, email="victim@example.com")
    st = state_for(BillingState, cookie=f"{auth.SESSION_COOKIE}=forged-token")
    asyncio.run(st.on_load())
    assert st.user_id == 0 and not st.signed_in


def test_billing_load_for_signed_in_user(session: Session) -> None:
    user = make_user(session, email="reader@example.com")
    st = state_for(BillingState, cookie=cookie_for(session, user.id), path="/billing")
    result = asyncio.run(st.on_load())
    assert st.user_email == "reader@example.com" and st.signed_in
    assert st.checkout_notice == ""
    assert result[-2:] == [BillingState.refresh, BillingState.poll]  # load, then poll

    metering.record(session, user.id, "tokens", 9_000)
    live = load_live(user.id)
    tokens = next(m for m in live.meters if m.metric == "tokens")
    assert (tokens.used, tokens.limit, tokens.color) == (9_000, 10_000, "amber")
    assert live.sub.plan == "free" and not live.sub.is_subscriber
    assert [p.key for p in live.plans] == ["basic", "pro", "enterprise"]

    slow = load_slow(user.id, 1)
    assert sum(h["quantity"] for h in slow.history if h["metric"] == "tokens") == 9_000
    st.history = slow.history
    st.chart_metric = "tokens"
    assert st.chart_total == "9,000"


def test_billing_chart_days_are_written_as_the_pages_dates() -> None:
    """The chart's axis read "12-01" beside "Resets on Jan 1, 2027" and "Dec 7, 2026"."""
    st = state_for(BillingState)
    st.history = [
        {"day": "2026-12-01", "metric": "tokens", "quantity": 5},
        {"day": "2026-12-17", "metric": "tokens", "quantity": 7},
    ]
    assert [p["day"] for p in st.chart_data] == ["Dec 1", "Dec 17"]


def test_billing_chart_metric_setter_validates(session: Session) -> None:
    st = state_for(BillingState)
    st.set_chart_metric("api_calls")
    assert st.chart_metric == "api_calls"
    st.set_chart_metric("bogus")
    assert st.chart_metric == "api_calls"


# ------------------------------------------------------------------ admin


def test_admin_page_forbidden_for_non_admin(session: Session) -> None:
    user = make_user(session, email="plain@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, user.id), path="/admin/billing")
    assert asyncio.run(st.on_load()) is None
    assert st.forbidden
    # Handlers refuse too, whatever the browser sends.
    asyncio.run(st.open_user(user.id))
    assert not st.drawer_open
    st.key_name = "sneaky"
    asyncio.run(st.create_key())
    assert st.new_secret == ""


def test_an_override_limit_with_digits_that_are_no_number_is_refused_in_words(
    session: Session,
) -> None:
    """An admin typing "10²" or "①": str.isdigit() takes them, int() does not; the form
    says what to type instead of the handler failing with nothing said."""
    admin = make_user(session, email="boss@example.com", admin=True)
    target = make_user(session, email="target@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    assert asyncio.run(st.on_load()) is not None
    asyncio.run(st.open_user(target.id))
    st.set_override_reason("Pilot customer")
    for typed in ("10²", "①"):
        st.set_override_limit(typed)
        asyncio.run(st.save_override())
        assert st.override_error == "Enter a whole number (0 means unlimited).", typed
    assert limit_of(session, target.id, "tokens") == 10_000


def test_admin_override_and_api_key(session: Session) -> None:
    admin = make_user(session, email="boss@example.com", admin=True)
    target = make_user(session, email="target@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    assert asyncio.run(st.on_load()) is not None and not st.forbidden

    asyncio.run(st.open_user(target.id))
    assert st.drawer_open and st.detail_id == target.id
    st.set_override_metric("tokens")
    st.set_override_limit("25,000")
    asyncio.run(st.save_override())
    assert "reason" in st.override_error.lower()
    st.set_override_reason("Pilot customer")
    asyncio.run(st.save_override())
    assert st.override_error == "" and st.override_saved == "Tokens limit saved."
    assert limit_of(session, target.id, "tokens") == 25_000

    st.set_override_limit("lots")
    st.set_override_reason("x")
    asyncio.run(st.save_override())
    assert "whole number" in st.override_error
    st.set_override_limit("99999999999999999999")  # a whole number, but too large: say so
    asyncio.run(st.save_override())
    assert st.override_error == (
        "Limit must be a whole number from 0 (unlimited) to 1,000,000,000,000."
    )
    assert limit_of(session, target.id, "tokens") == 25_000

    st.set_override_reason("Back to plan")
    asyncio.run(st.clear_override())
    assert limit_of(session, target.id, "tokens") == 10_000

    st.set_key_name("scraper-prod")
    asyncio.run(st.create_key())
    assert st.new_secret.startswith("bk_") and st.key_error == ""
    assert st.new_secret in st.curl_example and "/api/billing/usage" in st.curl_example
    assert any(k.name == "scraper-prod" for k in st.keys)
    asyncio.run(st.revoke_key(st.keys[0].id))
    assert st.keys[0].revoked or any(k.revoked for k in st.keys)


def test_a_console_key_gets_the_access_chosen_for_it(session: Session) -> None:
    """The console made every key able to record and read; an admin may now make a key
    that only reads (a dashboard) or only records (a worker). Its scopes are what was
    chosen, the list says so, and the ready-to-paste request is one the key may send."""
    from billing_app.services import api_keys
    from billing_app.states.admin import load_keys

    admin = make_user(session, email="boss@example.com", admin=True)
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    assert asyncio.run(st.on_load()) is not None
    made = {}
    for access, name in (("read", "dashboard"), ("write", "worker"), ("write_read", "both")):
        st.set_key_access(access)
        st.set_key_name(name)
        asyncio.run(st.create_key())
        assert st.key_error == "" and st.new_secret.startswith("bk_")
        made[name] = st.curl_example
    scopes = {k.name: sorted(k.scopes) for k in api_keys.list_keys(session)}
    assert scopes == {
        "dashboard": ["usage:read"],
        "worker": ["usage:write"],
        "both": ["usage:read", "usage:write"],
    }
    shown = {k.name: k.access for k in st.keys}
    assert shown == {
        "dashboard": "Read usage and check quotas",
        "worker": "Record usage only",
        "both": "Record and read usage",
    }
    assert 'curl "' in made["dashboard"] and "-X POST" not in made["dashboard"]
    assert "-X POST" in made["worker"] and "-X POST" in made["both"]
    st.set_key_access("admin")  # not a choice: nothing changes
    assert st.key_access == "write_read"
    # A key the command line made without scopes may do all its owner may.
    api_keys.create_key(session, name="cli", service_name="cli")
    assert {k.name: k.access for k in load_keys()}["cli"] == "Full access"


def test_admin_filters_only_accept_known_values(session: Session) -> None:
    st = state_for(AdminState, path="/admin/billing")
    st.set_plan_filter("pro")
    assert st.plan_filter == "pro"
    st.set_plan_filter("'; drop table")
    assert st.plan_filter == "all"
    st.set_sort("-usage_tokens")
    assert st.sort == "-usage_tokens"
    st.set_sort("nonsense")
    assert st.sort == "-created"
    st.page = 3
    st.set_status_filter("past_due")
    assert st.status_filter == "past_due" and st.page == 1


def test_admin_sort_closest_to_a_limit_is_offered_and_lists_the_fullest_first(
    session: Session,
) -> None:
    from billing_app.states.admin import load_users

    st = state_for(AdminState, path="/admin/billing")
    assert ["-quota", "Closest to a limit"] in st.sort_options
    st.set_sort("-quota")
    assert st.sort == "-quota"
    heavy = make_user(session, email="heavy@example.com", plan="enterprise")
    near = make_user(session, email="near@example.com")
    metering.record(session, heavy.id, "tokens", 9_000_000)  # unlimited
    metering.record(session, near.id, "api_calls", 99)  # 99% of Free's 100
    rows = load_users("", "all", "all", st.sort, 1)["rows"]
    assert [r.email for r in rows][0] == "near@example.com"
    assert rows[0].meters[1].percent_text == "99%"


def test_admin_invoices_tab_is_the_shared_invoice_table_with_a_customer_column(
    session: Session,
) -> None:
    from billing_app.models import Invoice
    from billing_app.pages.admin import invoices_panel
    from billing_app.states import admin as admin_state

    payer = make_user(session, email="payer@example.com")
    hosted = "http://127.0.0.1:12111/invoices/in_tab/hosted"
    session.add(
        Invoice(stripe_invoice_id="in_tab", user_id=payer.id, number="TAB-0001", status="paid",
                amount_due=1900, amount_paid=1900, hosted_invoice_url=hosted,
                invoice_pdf=hosted + "/pdf")
    )  # fmt: skip
    session.commit()
    (row,) = admin_state.load_invoices(admin_state.ALL, 1)["rows"]
    assert (row.user_email, row.hosted_url, row.pdf_url) == (
        "payer@example.com", hosted, hosted + "/pdf"
    )  # fmt: skip

    # Compiled, the tab's table leads with Customer, then the shared row's columns and
    # its View and PDF links.
    tab = str(invoices_panel())
    headers = re.findall(r"ColumnHeaderCell,\{\},\"([^\"]*)\"", tab)
    assert headers == ["Customer", "Number", "Date", "Description", "Amount", "Status"]
    # The links' column has a name for screen readers only (components.common.sr_only).
    assert tab.count("ColumnHeaderCell,{}") == 7 and '"Documents"' in tab
    assert '"View"' in tab and '"PDF"' in tab and 'to:inv_rx_state_?.["pdf_url"]' in tab


def test_an_invoices_customer_opens_the_drawer_named_at_once(session: Session) -> None:
    """From the Invoices tab: the drawer is the invoice's customer's, headed by their
    email while it loads (the users list's page need not hold them), and the invoice's
    button is the one the focus goes back to."""
    from billing_app.models import Invoice
    from billing_app.states import admin as admin_state

    admin = make_user(session, email="boss@example.com", admin=True)
    payer = make_user(session, email="payer@example.com")
    session.add(Invoice(stripe_invoice_id="in_x", user_id=payer.id, status="open",
                        amount_due=1900, amount_paid=0))  # fmt: skip
    session.commit()
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    assert asyncio.run(st.on_load()) is not None
    st.invoices = admin_state.load_invoices(admin_state.ALL, 1)["rows"]
    st.users = []  # the users list's page holds someone else
    (inv,) = st.invoices
    assert inv.user_id == payer.id
    asyncio.run(st.open_user(inv.user_id, f"invoice-{inv.id}"))
    assert st.drawer_open and st.detail_id == payer.id
    assert st.detail_email == "payer@example.com"
    assert st.drawer_opener == f"invoice-{inv.id}"
    assert st.opener_listed  # closing gives its button the focus
    st.invoices = []
    assert not st.opener_listed  # gone: the search box takes it
    asyncio.run(st.open_user(payer.id, "invoice-" + "9" * 500))  # a crafted one: bounded
    assert len(st.drawer_opener) == 80


def test_a_phone_cards_buttons_are_the_ones_the_focus_goes_back_to(session: Session) -> None:
    """On a phone the users and invoices are cards with their own email, Details and
    customer buttons (admin_state.CARD before the opener): the drawer records the card's,
    not its hidden twin's in the table, which could not take the focus back."""
    from billing_app.models import Invoice
    from billing_app.states import admin as admin_state

    admin = make_user(session, email="boss-h82@example.com", admin=True)
    payer = make_user(session, email="card-h82@example.com")
    session.add(Invoice(stripe_invoice_id="in_card_h82", user_id=payer.id, status="open",
                        amount_due=1900, amount_paid=0))  # fmt: skip
    session.commit()
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    assert asyncio.run(st.on_load()) is not None
    st.users = [views.AdminUserView(id=payer.id, email=payer.email)]
    st.invoices = admin_state.load_invoices(admin_state.ALL, 1)["rows"]
    (inv,) = st.invoices
    for opener, recorded in (
        ("card-details", f"card-details-{payer.id}"),
        ("card-email", f"card-email-{payer.id}"),
        (f"card-invoice-{inv.id}", f"card-invoice-{inv.id}"),
        ("details", f"details-{payer.id}"),
    ):
        asyncio.run(st.open_user(payer.id, opener))
        assert (st.drawer_opener, st.opener_listed) == (recorded, True), opener
    asyncio.run(st.open_user(payer.id, f"card-invoice-{inv.id}"))
    st.invoices = []
    assert not st.opener_listed  # gone: the Invoices tab's filter takes it


def test_a_credit_badge_has_one_colour_whatever_stripes_status() -> None:
    """A credit reads "Credit" whether Stripe still has it open or already paid: it was
    blue for one and green for the other, one word in two colours."""
    base = {"total": -4000, "amount_due": 0, "amount_paid": 0, "currency": "usd"}
    credits = [views.invoice_view({**base, "status": s}) for s in ("open", "paid")]
    shown = {(v.status_label, v.status_color) for v in credits}
    assert shown == {("Credit", "cyan")}
    paid = views.invoice_view({**base, "total": 1900, "amount_paid": 1900, "status": "paid"})
    assert (paid.status_label, paid.status_color) == ("Paid", "grass")


def test_subscription_view_past_due_and_canceled() -> None:
    from billing_app.plans import get_catalog

    end = datetime(2026, 12, 25, tzinfo=UTC)
    base = {"plan": "pro", "plan_name": "Pro", "current_period_end": end, "amount": 9900,
            "currency": "usd", "cancel_at_period_end": False,
            "grace_ends_at": datetime(2026, 12, 2, tzinfo=UTC)}  # fmt: skip
    past_due = views.subscription_view({**base, "status": "past_due"}, get_catalog())
    assert past_due.past_due and past_due.is_subscriber and past_due.plan == "pro"
    assert past_due.status_color == "amber" and "Dec 2, 2026" in past_due.grace_text
    canceling = views.subscription_view(
        {**base, "status": "active", "cancel_at_period_end": True, "ends_at": end}, get_catalog()
    )
    assert canceling.renews_text == "Cancels on Dec 25, 2026"
    canceled = views.subscription_view({**base, "status": "canceled"}, get_catalog())
    assert not canceled.is_subscriber and canceled.plan_name == "Free"
    assert views.subscription_view(None, get_catalog()).plan == "free"


def test_subscription_view_says_past_due_does_not_renew_and_when_a_plan_ended() -> None:
    """A past-due card promised "Renews on"; an ended subscription said nothing at all."""
    from billing_app.plans import get_catalog

    end = datetime(2026, 12, 25, tzinfo=UTC)
    base = {"plan": "pro", "plan_name": "Pro", "current_period_end": end, "amount": 9900,
            "currency": "usd", "cancel_at_period_end": False}  # fmt: skip
    past_due = views.subscription_view({**base, "status": "past_due"}, get_catalog())
    assert past_due.renews_text == "Payment failed · billing period ends Dec 25, 2026"
    # Lapsed at its period's end, or canceled at once: the day it ended, with its plan.
    lapsed = {**base, "status": "canceled", "cancel_at_period_end": True}
    assert views.subscription_view(lapsed, get_catalog()).ended_text == (
        "Your Pro subscription ended on Dec 25, 2026."
    )
    now = {**base, "status": "canceled", "canceled_at": datetime(2026, 12, 3, tzinfo=UTC)}
    assert views.subscription_view(now, get_catalog()).ended_text == (
        "Your Pro subscription ended on Dec 3, 2026."
    )
    # A first payment that never went through began nothing, so nothing ended.
    never = views.subscription_view({**base, "status": "incomplete_expired"}, get_catalog())
    assert never.ended_text == "" and never.plan_name == "Free"


def test_login_page_reads_error_next_and_sso(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OIDC_ISSUER", "https://sso.example.com")
    monkeypatch.setenv("OIDC_CLIENT_ID", "billing")  # the issuer alone is refused
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "s3cret")
    app_settings_module.get_settings.cache_clear()
    st = state_for(AuthFormState, path="/login?error=login_failed&next=//evil")
    assert asyncio.run(st.on_load()) is None
    assert st.error == "Email or password is incorrect."
    assert st.next_path == "/billing" and st.sso_enabled
    assert st.sso_url == "/api/auth/oidc/login?next=/billing"

    user = make_user(session, email="back@example.com")
    st = state_for(
        AuthFormState, cookie=cookie_for(session, user.id), path="/login?next=/admin/billing"
    )
    result = asyncio.run(st.on_load())  # already signed in: straight on to `next`
    assert result is not None and "/admin/billing" in str(result.args)


# ------------------------------------------------------------------ auth pages


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("login_failed", "Email or password is incorrect."),
        ("email_taken", auth_pages.EMAIL_TAKEN),
        ("signup_limited", auth.SIGNUP_LIMITED),
        ("invalid_password", auth_pages.BAD_PASSWORD),
        ("sso_failed", auth_pages.SSO_FAILED),
        ("sso_linked_elsewhere", auth_pages.SSO_LINKED_ELSEWHERE),
        # Anything else is someone else's text, even one the app once sent: generic.
        ("Email or password is incorrect.", auth_pages.SIGN_IN_FAILED),
        ("Your account was suspended. Call +1 555 0100 now.", auth_pages.SIGN_IN_FAILED),
        ("A user with email x@y.z already exists. Call 555", auth_pages.SIGN_IN_FAILED),
        ("", ""),
        (None, ""),
    ],
)  # fmt: skip
def test_auth_error_shows_only_the_apps_messages(raw: str | None, shown: str) -> None:
    assert auth_pages.error_message(raw) == shown


def test_login_and_signup_pages_never_echo_the_error_query(session: Session) -> None:
    spoof = "/login?error=Your+account+was+suspended.+Call+%2B1+555+0100"
    st = state_for(AuthFormState, path=spoof)
    asyncio.run(st.on_load())
    assert st.error == "Sign-in failed. Please try again."
    st = state_for(AuthFormState, path="/signup?error=Visit+evil.example+to+verify")
    asyncio.run(st.on_load())
    assert st.error == auth_pages.SIGN_UP_FAILED


def test_the_sign_in_page_after_a_sign_out_says_it_happened(session: Session) -> None:
    st = state_for(AuthFormState, path="/login?signed_out=1")
    assert asyncio.run(st.on_load()) is None
    assert st.notice == auth_pages.SIGNED_OUT and st.error == ""
    # A refused sign-in from that page: the refusal, not the old notice.
    st.router = state_for(AuthFormState, path="/login?error=login_failed").router
    asyncio.run(st.on_load())
    assert st.notice == "" and st.error == "Email or password is incorrect."
    st.router = state_for(AuthFormState, path="/login").router
    asyncio.run(st.on_load())
    assert st.notice == ""


def test_signup_keeps_name_and_email_after_a_refused_post(session: Session) -> None:
    st = state_for(AuthFormState, path="/signup")
    asyncio.run(st.on_load())
    st.set_form_name("Ada")
    st.set_form_email("ada@example.com")
    # The API refused the post and redirected back: same tab, same state.
    st.router = state_for(AuthFormState, path="/signup?error=email_taken").router
    asyncio.run(st.on_load())
    assert (st.form_name, st.form_email) == ("Ada", "ada@example.com")
    assert st.error == auth_pages.EMAIL_TAKEN
    assert not hasattr(st, "form_password")
    # A fresh visit starts empty.
    st.router = state_for(AuthFormState, path="/signup").router
    asyncio.run(st.on_load())
    assert (st.form_name, st.form_email) == ("", "")


def test_admin_reset_to_plan_needs_no_typed_reason(session: Session) -> None:
    admin = make_user(session, email="resetter@example.com", admin=True)
    target = make_user(session, email="reset-me@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
    asyncio.run(st.open_user(target.id))
    st.set_override_metric("api_calls")
    st.set_override_limit("500")
    st.set_override_reason("Load test")
    asyncio.run(st.save_override())
    assert st.override_saved == "API calls limit saved." and st.override_reason == ""
    assert limit_of(session, target.id, "api_calls") == 500

    # Saving cleared the Reason box; the reset still goes through, logged as such.
    asyncio.run(st.clear_override())
    assert st.override_error == ""
    assert st.override_saved == "API calls limit reset to the plan."
    assert limit_of(session, target.id, "api_calls") == 100
    log = quotas.audit_log(session, target.id)
    session.rollback()
    assert [e["reason"] for e in log] == [quotas.RESET_REASON, "Load test"]

    # An override itself still needs a reason.
    st.set_override_limit("900")
    asyncio.run(st.save_override())
    assert "reason" in st.override_error.lower()
    assert limit_of(session, target.id, "api_calls") == 100


def test_stat_cards_say_what_a_subscriber_is() -> None:
    cards = views.stat_views(
        {"total_users": 9, "active_subscribers": 4, "mrr": 21700, "currency": "usd",
         "subscribers_by_plan": {"basic": 2, "pro": 2}, "failed_payments": 0,
         "past_due_subscriptions": 1}
    )  # fmt: skip
    by_label = {c.label: c for c in cards}
    assert by_label["Subscribers"].value == "4"
    assert "past due within the grace period" in by_label["Subscribers"].hint
    assert "trials excluded" in by_label["MRR"].hint and by_label["MRR"].value == "$217.00"
    assert by_label["Pro subscribers"].value == "2"
    assert [c.label for c in cards][:2] == ["MRR", "Subscribers"]


def test_a_renamed_plans_card_says_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """BILLING_PLANS_JSON names "pro" "Team": its card says "Team subscribers", as the
    plan filter, the users list and the drawer name it, not "Pro subscribers"."""
    from tests.conftest import _clear_caches

    monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"name": "Team"}}')
    _clear_caches()
    cards = views.stat_views({"subscribers_by_plan": {"basic": 1, "pro": 2}})
    assert {c.label: c.value for c in cards} == {
        "Basic subscribers": "1",
        "Team subscribers": "2",
    }


def test_checkout_notice_shows_once_and_leaves_the_url(session: Session) -> None:
    user = make_user(session, email="payer@example.com")
    cookie = cookie_for(session, user.id)
    st = state_for(BillingState, cookie=cookie, path="/billing?checkout=success&session_id=x")
    redirect = asyncio.run(st.on_load())
    # The query is replaced away (no new history entry), the notice kept for the next load.
    args = {str(k): str(v) for k, v in redirect.args}
    assert args["path"] == '"/billing"' and args["replace"] == "true"
    assert st.checkout_notice == "success"

    st.router = state_for(BillingState, cookie=cookie, path="/billing").router
    assert asyncio.run(st.on_load())[-2:] == [BillingState.refresh, BillingState.poll]
    assert st.checkout_notice == "success"
    # A reload (a new socket), or coming Back, does not show it again.
    st.router = state_for(BillingState, cookie=cookie, path="/billing", socket="sock-2").router
    asyncio.run(st.on_load())
    assert st.checkout_notice == ""
    # Nor a reload that cut off the redirect's own load before it reached the server.
    st.router = state_for(BillingState, cookie=cookie, path="/billing?checkout=success").router
    asyncio.run(st.on_load())
    st.router = state_for(BillingState, cookie=cookie, path="/billing", socket="sock-3").router
    asyncio.run(st.on_load())
    assert st.checkout_notice == ""
    # An unknown value shows nothing but is still cleared from the URL.
    st.router = state_for(BillingState, cookie=cookie, path="/billing?checkout=paid").router
    assert dict((str(k), str(v)) for k, v in asyncio.run(st.on_load()).args)["replace"] == "true"
    assert st.checkout_notice == ""


@pytest.mark.parametrize(
    ("used", "limit", "text", "color"),
    [(0, 100, "0%", "indigo"), (29, 100, "29%", "indigo"), (9_999, 10_000, "99%", "amber"),
     (10_000, 10_000, "100%", "red"), (10_001, 10_000, "100%+", "red"),
     (10_150, 10_000, "102%", "red"), (105, 100, "105%", "red")],
)  # fmt: skip
def test_meter_percent_is_rounded_half_up_and_never_hides_an_overage(
    used: int, limit: int, text: str, color: str
) -> None:
    m = views.meter_view({"metric": "tokens", "used": used, "limit": limit, "unlimited": False})
    assert (m.percent_text, m.color) == (text, color)
    assert m.percent == min(used * 100 // limit, 100)


def test_the_consoles_filters_name_every_badge_their_lists_show(session: Session) -> None:
    """Invoices: a credit (negative total) is badged "Credit" and has a filter of its own;
    "Paid" lists none. Users: each subscription status a row can show can be listed."""
    from billing_app.models import Invoice
    from billing_app.services import admin as admin_service
    from billing_app.states import admin as admin_state

    st = state_for(AdminState, path="/admin/billing")
    assert st.invoice_status_options == [
        ["all", "All invoices"], ["paid", "Paid"], ["credit", "Credit"], ["open", "Open"],
        ["draft", "Draft"], ["void", "Void"], ["uncollectible", "Uncollectible"],
        ["failed", "Payment failed"],  # what the Failed payments card counts
    ]  # fmt: skip
    shown = [v for v, _ in st.status_options[1:]]
    assert sorted(shown) == sorted(admin_service.STATUS_FILTERS)
    assert ["incomplete_expired", "Incomplete expired"] in st.status_options
    st.set_status_filter("paused")
    assert st.status_filter == "paused"

    payer = make_user(session, email="payer@example.com")
    for n, total in enumerate((1900, -4000)):
        session.add(
            Invoice(stripe_invoice_id=f"in_{n}", user_id=payer.id, status="paid", total=total,
                    amount_due=max(total, 0), amount_paid=max(total, 0))
        )  # fmt: skip
    session.commit()
    st.set_invoice_status("credit")
    assert st.invoice_status == "credit"
    assert st.invoices_csv_href == "/api/billing/admin/invoices.csv?status=credit"
    labels = {
        shown: [(r.amount, r.status_label) for r in admin_state.load_invoices(shown, 1)["rows"]]
        for shown in ("paid", "credit")
    }
    assert labels == {"paid": [("$19.00", "Paid")], "credit": [("−$40.00", "Credit")]}


def test_a_failed_payment_reads_as_one_on_billing_and_in_the_console(session: Session) -> None:
    """An open invoice whose payment failed was badged "Open" on /billing and in the
    console's Invoices tab, its "Payment failed" filter too; the card counted every
    uncollectible invoice ever. Now: "Payment failed" (red) in both, and the card counts
    the failed payments still owed, which the filter lists."""
    from billing_app.models import Invoice
    from billing_app.states import admin as admin_state
    from tests.factories import make_subscription

    payer = make_user(session, email="late@example.com")
    make_subscription(session, payer.id, plan="pro", status="past_due", sub_id="sub_late")
    for n, (status, attempts) in enumerate((("open", 1), ("uncollectible", 4), ("paid", 0))):
        session.add(
            Invoice(stripe_invoice_id=f"in_{status}", user_id=payer.id, number=f"N-{n}",
                    status=status, stripe_subscription_id="sub_late", attempt_count=attempts,
                    total=1900, amount_due=1900, amount_paid=1900 if status == "paid" else 0,
                    created_at=datetime(2026, 10, 3 - n, tzinfo=UTC))
        )  # fmt: skip
    session.commit()
    badges = [("N-0", "Payment failed", "red"), ("N-1", "Uncollectible", "red"),
              ("N-2", "Paid", "grass")]  # fmt: skip
    mine = load_slow(payer.id, 1).invoices
    assert [(i.number, i.status_label, i.status_color) for i in mine] == badges
    tab = admin_state.load_invoices(admin_state.ALL, 1)["rows"]
    assert [(i.number, i.status_label, i.status_color) for i in tab] == badges
    failed = admin_state.load_invoices("failed", 1)
    assert [(i.number, i.status_label) for i in failed["rows"]] == [("N-0", "Payment failed")]
    assert admin_state.load_invoices("open", 1)["rows"] == []
    card = next(c for c in admin_state.load_stats() if c.label == "Failed payments")
    assert card.value == str(failed["total"]) == "1"
    assert card.hint == "$19.00 still owed on open invoices whose payment failed"
    assert card.action == "failed"  # its List them: the Invoices tab's failed filter


def test_a_page_past_the_end_after_a_change_shows_the_last_one(session: Session) -> None:
    """Page 2 of the invoices (or users) open, and fewer match when the tab reads again
    (Refresh, a paid invoice leaving "Open"): the last page, not an empty table under
    "16–3 of 3"."""
    from billing_app.models import Invoice
    from billing_app.states import admin as admin_state

    payer = make_user(session, email="payer@example.com")
    for n in range(3):
        session.add(Invoice(stripe_invoice_id=f"in_{n}", user_id=payer.id, status="open"))
    session.commit()
    st = state_for(AdminState, path="/admin/billing")
    st._set_invoices(admin_state.load_invoices("open", 2))
    assert (st.invoice_page, len(st.invoices), st.invoice_page_text) == (1, 3, "1–3 of 3")
    st._set_users(admin_state.load_users("payer", admin_state.ALL, admin_state.ALL, "email", 4))
    assert (st.page, [u.email for u in st.users], st.page_text) == (
        1, ["payer@example.com"], "1–1 of 1"
    )  # fmt: skip
