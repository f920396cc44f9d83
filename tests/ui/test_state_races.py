"""Background loads whose answers arrive out of order, or fail: the admin console's users
list, invoices tab and page load.

Each test runs the real background handler with one loader swapped for a wire that reads at
once and holds the answer (or the error) until the test releases it, as a slow query or a
busy worker would: the newest load's answer is the one shown whatever the order, and a
failed load shows its message over the previous data, left whole."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session

from billing_app.errors import BillingError, ServiceUnavailable
from billing_app.models import Invoice
from billing_app.states import admin as admin_state
from billing_app.states.admin import AdminState
from tests.factories import make_user
from tests.ui.test_admin_drawer import _Locked
from tests.ui.test_states import cookie_for, state_for

BUSY = "The database is busy; try again shortly."
REFRESH_ALL = AdminState.event_handlers["refresh_all"].fn
RELOAD_USERS = AdminState.event_handlers["reload_users"].fn
RELOAD_INVOICES = AdminState.event_handlers["reload_invoices"].fn


class Wire:
    """Replaces one loader of a state module. Each call reads at once through the real
    loader (or, when `start` says so, fails), then its answer waits until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self._real = getattr(module, name)
        self.held: list[threading.Event] = []
        self._read = threading.Semaphore(0)
        self._fail: BillingError | None = None
        monkeypatch.setattr(module, name, self._load)

    def _load(self, *args: Any) -> Any:
        fail, self._fail = self._fail, None
        answer = None if fail is not None else self._real(*args)
        gate = threading.Event()
        self.held.append(gate)
        self._read.release()
        assert gate.wait(10), "answer never released"
        if fail is not None:
            raise fail
        return answer

    async def start(
        self, handler: Callable[..., Any], st: Any, fail: BillingError | None = None
    ) -> asyncio.Task[Any]:
        """The handler as Reflex runs it, up to this loader's answer being read and held."""
        self._fail = fail
        task = asyncio.create_task(handler(_Locked(st)))
        assert await asyncio.to_thread(self._read.acquire, True, 10)
        return task

    async def deliver(self, n: int, task: asyncio.Task[Any]) -> None:
        self.held[n].set()
        await task


# ------------------------------------------------------------------ admin console


def _console(session: Session) -> AdminState:
    admin = make_user(session, email="boss@example.com", admin=True)
    for email in ("alice@example.com", "albert@example.com", "bob@example.com"):
        make_user(session, email=email)
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    st.on_load()
    asyncio.run(REFRESH_ALL(_Locked(st)))
    assert st.loaded and st.error == ""
    return st


def emails(st: AdminState) -> list[str]:
    return sorted(u.email for u in st.users)


def test_an_older_answer_for_the_search_in_the_box_does_not_undo_a_newer_one(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _console(session)
    wire = Wire(monkeypatch, admin_state, "load_users")

    async def scenario() -> None:
        st.set_search("a")
        first = await wire.start(RELOAD_USERS, st)
        make_user(session, email="ann@example.com")  # signs up meanwhile
        st.set_search("ab")
        typo = await wire.start(RELOAD_USERS, st)
        st.set_search("a")  # the typo erased: the same search as the first load
        again = await wire.start(RELOAD_USERS, st)
        await wire.deliver(2, again)
        await wire.deliver(1, typo)
        await wire.deliver(0, first)  # read before Ann signed up: dropped
        assert emails(st) == ["albert@example.com", "alice@example.com", "ann@example.com"]
        assert st.total == 3

    asyncio.run(scenario())


def test_users_list_shows_only_the_newest_loads_error_over_the_list_it_had(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _console(session)
    wire = Wire(monkeypatch, admin_state, "load_users")

    async def scenario() -> None:
        st.set_search("al")
        failing = await wire.start(RELOAD_USERS, st, fail=ServiceUnavailable(BUSY))
        st.set_search("bob")
        found = await wire.start(RELOAD_USERS, st)
        await wire.deliver(1, found)
        # The older load's failure, arriving last, is not this list's.
        await wire.deliver(0, failing)
        assert (emails(st), st.error) == (["bob@example.com"], "")

        # The newest load fails: its message, over the list it had, whole.
        st.set_search("alice")
        await wire.deliver(2, await wire.start(RELOAD_USERS, st, fail=ServiceUnavailable(BUSY)))
        assert st.error == BUSY
        assert (emails(st), st.total, st.pages) == (["bob@example.com"], 1, 1)

        # The next good answer takes the message away.
        st.set_search("al")
        await wire.deliver(3, await wire.start(RELOAD_USERS, st))
        assert emails(st) == ["albert@example.com", "alice@example.com"]
        assert st.error == ""

    asyncio.run(scenario())


def _invoice(session: Session, user_id: int, number: str, status: str, day: int) -> None:
    session.add(
        Invoice(stripe_invoice_id=f"in_{number}", user_id=user_id, number=number, status=status,
                amount_due=1900, amount_paid=1900 if status == "paid" else 0,
                created_at=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=day))
    )  # fmt: skip
    session.commit()


def _console_with_invoices(session: Session) -> AdminState:
    payer = make_user(session, email="payer@example.com")
    _invoice(session, payer.id, "PAID-1", "paid", 1)
    _invoice(session, payer.id, "OPEN-1", "open", 2)
    return _console(session)


def numbers(invoices: list[Any]) -> list[str]:
    return [i.number for i in invoices]


def test_invoices_tab_shows_the_newest_filters_answer_whatever_order_they_arrive(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _console_with_invoices(session)
    wire = Wire(monkeypatch, admin_state, "load_invoices")

    async def scenario() -> None:
        st.set_invoice_status("paid")
        paid = await wire.start(RELOAD_INVOICES, st)
        st.set_invoice_status("open")
        open_ = await wire.start(RELOAD_INVOICES, st)
        await wire.deliver(1, open_)
        await wire.deliver(0, paid)
        assert (numbers(st.invoices), st.invoice_total) == (["OPEN-1"], 1)

        # Nor does an older filter's failure, arriving last.
        st.set_invoice_status("paid")
        failing = await wire.start(RELOAD_INVOICES, st, fail=ServiceUnavailable(BUSY))
        st.set_invoice_status(admin_state.ALL)
        every = await wire.start(RELOAD_INVOICES, st)
        await wire.deliver(3, every)
        await wire.deliver(2, failing)
        assert (numbers(st.invoices), st.error) == (["OPEN-1", "PAID-1"], "")

    asyncio.run(scenario())


def test_an_invoices_tab_error_is_a_message_over_the_invoices_it_had(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _console_with_invoices(session)
    before = (numbers(st.invoices), st.invoice_total, st.invoice_pages)
    assert before == (["OPEN-1", "PAID-1"], 2, 1)
    wire = Wire(monkeypatch, admin_state, "load_invoices")

    async def scenario() -> None:
        st.set_invoice_status("paid")
        await wire.deliver(0, await wire.start(RELOAD_INVOICES, st, fail=ServiceUnavailable(BUSY)))
        assert st.error == BUSY
        assert (numbers(st.invoices), st.invoice_total, st.invoice_pages) == before

        st.set_invoice_status("open")
        await wire.deliver(1, await wire.start(RELOAD_INVOICES, st))
        assert (numbers(st.invoices), st.error) == (["OPEN-1"], "")

    asyncio.run(scenario())


def test_a_page_loads_late_answer_leaves_a_newer_search_and_a_new_key(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _console(session)
    users_wire = Wire(monkeypatch, admin_state, "load_users")

    async def search_during_load() -> None:
        page_load = await users_wire.start(REFRESH_ALL, st)
        st.set_search("bob")
        search = await users_wire.start(RELOAD_USERS, st)
        await users_wire.deliver(1, search)
        await users_wire.deliver(0, page_load)
        assert (emails(st), st.total) == (["bob@example.com"], 1)

    asyncio.run(search_during_load())
    monkeypatch.undo()

    keys_wire = Wire(monkeypatch, admin_state, "load_keys")

    async def key_during_load() -> None:
        page_load = await keys_wire.start(REFRESH_ALL, st)
        st.set_key_name("scraper-prod")
        st.create_key()
        await keys_wire.deliver(0, page_load)  # its list was read before the key existed
        assert [k.name for k in st.keys] == ["scraper-prod"]

    asyncio.run(key_during_load())
