"""The pages' states while the database cannot be reached: every handler that reads or
writes says "The database is unavailable; retry shortly." where it shows its other errors,
over what the page had, and raises nothing; a database error that is not an outage still
raises.

The outage is real: DATABASE_URL points at a port nothing listens on (as the API's
test_database_down_is_503_not_500 does). Each scenario runs twice: with the session's user
lookup meeting the outage first ("lookup"), and with that lookup answered from just before
the outage, so that the handler's own reads and writes meet it ("loads")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from sqlmodel import Session

from billing_app.models import Invoice
from billing_app.services import api_keys
from billing_app.services.dto import UserDTO
from billing_app.states import billing as billing_state
from billing_app.states import session as session_state
from billing_app.states.admin import AdminState
from billing_app.states.auth_pages import AuthFormState
from billing_app.states.billing import PRESSED, BillingState
from billing_app.states.session import SessionState
from tests.conftest import _clear_caches
from tests.factories import make_user
from tests.ui.test_admin_drawer import _Locked
from tests.ui.test_state_races import one_tick
from tests.ui.test_states import cookie_for, state_for

DOWN = "The database is unavailable; retry shortly."
NOBODY_LISTENS = "postgresql://nobody@127.0.0.1:1/none"
WHERE = pytest.mark.parametrize("where", ["lookup", "loads"])

REFRESH = BillingState.event_handlers["refresh"].fn
POLL = BillingState.event_handlers["poll"].fn
CHOOSE_PLAN = BillingState.event_handlers["choose_plan"].fn
MANAGE = BillingState.event_handlers["manage_subscription"].fn
REFRESH_ALL = AdminState.event_handlers["refresh_all"].fn
RELOAD_USERS = AdminState.event_handlers["reload_users"].fn
RELOAD_INVOICES = AdminState.event_handlers["reload_invoices"].fn
LOAD_DETAIL = AdminState.event_handlers["load_detail"].fn


@contextmanager
def outage(signed_in: UserDTO | None = None) -> Iterator[None]:
    """The database unreachable for the block. `signed_in`: the session lookups answer
    this user, as a lookup just before the outage would have."""
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DATABASE_URL", NOBODY_LISTENS)
            _clear_caches()
            if signed_in is not None:
                for module in (session_state, billing_state):
                    mp.setattr(module, "user_from_cookie", lambda _cookie: signed_in)
            yield
    finally:
        _clear_caches()  # the test's database again


def run(handler: Any, st: Any, *args: Any) -> Any:
    """A background handler as Reflex runs it, to the end."""
    return asyncio.run(handler(_Locked(st), *args))


def _spec(spec: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    return spec.handler.fn.__qualname__, tuple((str(k), str(v)) for k, v in spec.args)


def released(answer: Any) -> bool:
    """A /billing Stripe button's answer includes the event that puts the pressed button
    back to normal (billing.PRESSED)."""
    specs = answer if isinstance(answer, list) else [answer]
    return any(hasattr(s, "handler") and _spec(s) == _spec(PRESSED.push("")) for s in specs)


# ------------------------------------------------------------------ sign-in, home, header


def test_sign_in_and_sign_up_pages_say_the_database_is_down(session: Session) -> None:
    user = make_user(session, email="back@example.com")
    cookie = cookie_for(session, user.id)
    for path in ("/login?next=/admin/billing", "/signup"):
        st = state_for(AuthFormState, cookie=cookie, path=path)
        with outage():
            assert asyncio.run(st.on_load()) is None  # the form, with the message
        assert st.error == DOWN
        # Back up: a signed-in visitor goes straight on, as always.
        result = asyncio.run(st.on_load())
        assert result is not None and st.error == ""


def test_home_sends_to_the_sign_in_page_and_the_header_stays_as_it_was(
    session: Session,
) -> None:
    user = make_user(session, email="back@example.com")
    st = state_for(SessionState, cookie=cookie_for(session, user.id), path="/")
    asyncio.run(st.load_user())
    assert st.user_email == "back@example.com"
    with outage():
        home = asyncio.run(st.redirect_home())
        asyncio.run(st.load_user())  # the 404 page's on_load: nowhere to say it, nothing raised
    assert "/login" in str(home.args)  # whose page says the database is down
    assert st.user_email == "back@example.com"


# ------------------------------------------------------------------ /billing


def _dashboard(session: Session) -> tuple[BillingState, UserDTO]:
    user = make_user(session, email="payer@example.com")
    session.add(Invoice(stripe_invoice_id="in_1", user_id=user.id, number="INV-1",
                        status="paid", amount_due=1900, amount_paid=1900))  # fmt: skip
    session.commit()
    st = state_for(BillingState, cookie=cookie_for(session, user.id), path="/billing")
    assert asyncio.run(st.on_load())[-2:] == [BillingState.refresh, BillingState.poll]
    run(REFRESH, st)
    assert st.loaded and st.error == "" and [i.number for i in st.invoices] == ["INV-1"]
    return st, user


def shown(st: BillingState) -> tuple[Any, ...]:
    return (st.meters, st.sub, st.plans, st.history, st.invoices, st.invoice_total)


def test_dashboard_page_load_says_the_database_is_down_and_the_poller_takes_it_away(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    before = shown(st)
    with outage():
        assert asyncio.run(st.on_load())[-1] == BillingState.poll  # reads again each tick
    assert st.error == DOWN and st.loaded and shown(st) == before

    one_tick(monkeypatch)
    monkeypatch.setattr(billing_state, "SLOW_EVERY", 1)  # this tick reads all of the page
    run(POLL, st)  # the database is back: the first full read takes the message away
    assert st.error == "" and shown(st) == before


def test_a_dashboard_first_opened_while_the_database_is_down_says_so_then_shows_itself(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh tab: who this is cannot be known, so the page (not yet shown) says why
    instead of spinning; once the database is back, the poller shows the whole page."""
    from billing_app.pages.billing import billing

    user = make_user(session, email="fresh@example.com")
    st = state_for(BillingState, cookie=cookie_for(session, user.id), path="/billing")
    with outage():
        assert asyncio.run(st.on_load())[-1] == BillingState.poll
    assert st.error == DOWN and not st.loaded and not st.signed_in
    # The page shows the message where the spinner was.
    assert '"load-error"' in str(billing())

    one_tick(monkeypatch)
    run(POLL, st)
    assert st.loaded and st.signed_in and st.error == ""
    assert st.user_email == "fresh@example.com" and st.meters


def test_a_tab_opened_during_the_outage_by_someone_signed_out_goes_to_sign_in(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = state_for(BillingState, cookie="billing_session=expired", path="/billing")
    with outage():
        asyncio.run(st.on_load())
    assert st.error == DOWN and not st.loaded
    one_tick(monkeypatch)
    result = run(POLL, st)
    assert result is not None and "/login" in str(result.args)


@WHERE
def test_dashboard_reads_say_the_database_is_down_over_what_they_had(
    session: Session, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    st, user = _dashboard(session)
    before = shown(st)
    monkeypatch.setattr(billing_state, "SLOW_EVERY", 1)
    with outage(user if where == "loads" else None):
        st.next_invoices()
        st.invoice_pages = 2
        st.next_invoices()
        assert st.invoice_page == 2
        run(REFRESH, st)  # paging
        assert st.error == DOWN and shown(st) == before
        assert st.invoice_page == 1  # the pager tells of the invoices still shown

        st.error = ""
        one_tick(monkeypatch)
        run(POLL, st)  # one tick: it says so, and would read again at the next
        assert st.error == DOWN and shown(st) == before

    one_tick(monkeypatch)
    run(POLL, st)
    assert st.error == "" and shown(st) == before and st.invoice_page == 1


@WHERE
def test_plan_buttons_say_the_database_is_down(session: Session, where: str) -> None:
    st, user = _dashboard(session)
    with outage(user if where == "loads" else None):
        # The message, and the pressed button back to normal (test_billing_busy.py).
        assert released(run(CHOOSE_PLAN, st, "pro"))
        assert (st.error, st.busy) == (DOWN, "")
        st.error = ""
        assert released(run(MANAGE, st))
        assert (st.error, st.busy) == (DOWN, "")


# ------------------------------------------------------------------ /admin/billing


def _console(session: Session) -> tuple[AdminState, UserDTO, int]:
    """An admin's console, loaded, with a customer's drawer open and one API key."""
    admin = make_user(session, email="boss@example.com", admin=True)
    customer = make_user(session, email="alice@example.com").id
    make_user(session, email="bob@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
    run(REFRESH_ALL, st)
    asyncio.run(st.open_user(customer))
    run(LOAD_DETAIL, st)
    st.set_key_name("scraper-prod")
    asyncio.run(st.create_key())
    st.dismiss_secret()
    assert st.loaded and st.error == st.override_error == st.key_error == ""
    assert st.detail_email == "alice@example.com" and len(st.keys) == 1
    return st, admin, customer


def test_a_console_first_opened_while_the_database_is_down_says_so_and_tries_again(
    session: Session,
) -> None:
    from billing_app.pages.admin import admin as admin_page

    admin = make_user(session, email="boss@example.com", admin=True)
    make_user(session, email="alice@example.com")
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    with outage():
        assert asyncio.run(st.on_load()) is None
    assert st.error == DOWN and not st.loaded and not st.signed_in
    page = str(admin_page())
    assert '"load-error"' in page and '"Try again"' in page  # where the spinner was
    # Back up: Try again (the page's on_load) loads the console and takes the message away.
    assert asyncio.run(st.on_load()) == [AdminState.refresh_all]
    run(REFRESH_ALL, st)
    assert st.loaded and st.signed_in and st.error == "" and st.total == 2


def console(st: AdminState) -> tuple[Any, ...]:
    return (st.users, st.total, st.stats, st.invoices, st.keys, st.detail_meters)


@WHERE
def test_console_loads_say_the_database_is_down_over_what_they_had(
    session: Session, where: str
) -> None:
    st, admin, customer = _console(session)
    before = console(st)
    with outage(admin if where == "loads" else None):
        if where == "lookup":
            assert asyncio.run(st.on_load()) is None
            assert st.error == DOWN
            st.error = ""
        run(REFRESH_ALL, st)
        assert st.error == DOWN
        st.error = ""
        st.set_invoice_status("paid")
        run(RELOAD_INVOICES, st)
        assert st.error == DOWN
        st.set_search("bob")
        run(RELOAD_USERS, st)
        assert st.error == DOWN and console(st) == before

        st.detail_loading = True
        run(LOAD_DETAIL, st)
        assert (st.override_error, st.detail_loading) == (DOWN, False)
        assert console(st) == before

    run(RELOAD_USERS, st)  # back up: the users list's next answer takes the message away
    assert st.error == "" and [u.email for u in st.users] == ["bob@example.com"]


@WHERE
def test_a_page_that_could_not_load_leaves_the_pager_on_the_rows_shown(
    session: Session, where: str
) -> None:
    """Next during an outage: the list keeps its rows and says why, and the pager stays
    on their page ("1–20 of 45", not "21–40"), so Next once the database is back asks
    for page 2, not 3."""
    st, admin, _customer = _console(session)
    for i in range(40):
        make_user(session, email=f"u{i:02d}@example.com")
    make_user(session, email="inv@example.com")
    run(REFRESH_ALL, st)
    st.invoice_pages = 2  # as if there were a second page of invoices
    assert (st.page, st.pages, st.page_text) == (1, 3, "1–20 of 44")
    rows = st.users
    with outage(admin if where == "loads" else None):
        st.next_page()
        assert st.page == 2
        run(RELOAD_USERS, st)
        assert st.error == DOWN and st.users == rows
        assert (st.page, st.page_text) == (1, "1–20 of 44")
        st.next_invoices()
        run(RELOAD_INVOICES, st)
        assert st.error == DOWN and (st.invoice_page, st.invoice_page_text) == (1, "No invoices")
        st.next_page()
        st.next_invoices()
        run(REFRESH_ALL, st)
        assert st.error == DOWN and (st.page, st.invoice_page) == (1, 1)
    st.next_page()
    run(RELOAD_USERS, st)
    assert (st.page, st.page_text) == (2, "21–40 of 44") and st.users != rows
    run(REFRESH_ALL, st)  # the console's own load takes its message away
    assert st.error == "" and st.page == 2


@WHERE
def test_console_actions_say_the_database_is_down(session: Session, where: str) -> None:
    st, admin, customer = _console(session)
    before = console(st)
    key = st.keys[0].id
    with outage(admin if where == "loads" else None):
        st.set_override_limit("500")
        st.set_override_reason("Pilot customer")
        assert asyncio.run(st.save_override()) is None
        assert (st.override_error, st.override_saved) == (DOWN, "")
        st.override_error = ""
        assert asyncio.run(st.clear_override()) is None
        assert st.override_error == DOWN

        st.set_key_name("another")
        asyncio.run(st.create_key())
        assert (st.key_error, st.new_secret) == (DOWN, "")
        st.key_error = ""
        asyncio.run(st.revoke_key(key))
        assert st.key_error == DOWN
        assert console(st) == before and not st.keys[0].revoked

        if where == "lookup":  # opening a user reads nothing but who is asking
            st.drawer_open = False
            assert asyncio.run(st.open_user(customer)) is None
            assert st.error == DOWN and not st.drawer_open

    asyncio.run(st.revoke_key(key))  # back up: done, and the message goes
    assert st.key_error == "" and st.keys[0].revoked


# ------------------------------------------------------------------ not an outage


def test_a_database_error_that_is_not_an_outage_still_raises(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second key with the first one's secret: a unique constraint (a bug, were it to
    happen), not the database being down. It raises, and says nothing on the page."""
    st, _, _ = _console(session)

    class SameSecrets:
        token_hex = staticmethod(lambda _n: "c0ffee00")
        token_urlsafe = staticmethod(lambda _n: "same-secret")

    monkeypatch.setattr(api_keys, "secrets", SameSecrets)
    st.set_key_name("first")
    asyncio.run(st.create_key())
    assert st.key_error == "" and st.new_secret
    st.set_key_name("second")
    with pytest.raises(sa_exc.IntegrityError):
        asyncio.run(st.create_key())
    assert st.key_error == ""


def test_the_pollers_other_errors_are_logged_and_it_reads_again(
    session: Session, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that is not an outage (a bug) does not stop the live view, and is not
    lost: it is logged with its traceback, and the next tick reads again."""
    st, _user = _dashboard(session)
    real = billing_state.load_live
    calls: list[int] = []

    def broken_once(user_id: int) -> Any:
        calls.append(user_id)
        if len(calls) == 1:
            raise RuntimeError("a bug in a read")
        return real(user_id)

    monkeypatch.setattr(billing_state, "load_live", broken_once)
    monkeypatch.setattr(billing_state, "POLL_SECONDS", 0)
    answers = iter([True, True])
    monkeypatch.setattr(billing_state, "client_connected", lambda _t: next(answers, False))
    with caplog.at_level("ERROR", logger="billing_app.states.billing"):
        run(POLL, st)
    assert len(calls) == 2 and st.error == ""
    logged = [r for r in caplog.records if r.name == "billing_app.states.billing"]
    assert len(logged) == 1 and "a bug in a read" in str(logged[0].exc_info[1])
