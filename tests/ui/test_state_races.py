"""Background loads whose answers arrive out of order, or fail: the admin console's users
list, invoices tab and page load, and the /billing dashboard's paging and live poller.

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

from billing_app.errors import BillingError, PaymentProviderError, ServiceUnavailable
from billing_app.models import Invoice
from billing_app.services import metering
from billing_app.states import admin as admin_state
from billing_app.states import billing as billing_state
from billing_app.states.admin import AdminState
from billing_app.states.billing import BillingState
from tests.factories import make_user
from tests.ui.test_admin_drawer import _Locked
from tests.ui.test_states import cookie_for, state_for

BUSY = "The database is busy; try again shortly."
REFUSED = "Stripe refused the request."
REFRESH_ALL = AdminState.event_handlers["refresh_all"].fn
RELOAD_USERS = AdminState.event_handlers["reload_users"].fn
RELOAD_INVOICES = AdminState.event_handlers["reload_invoices"].fn
REFRESH = BillingState.event_handlers["refresh"].fn
POLL = BillingState.event_handlers["poll"].fn
CHOOSE_PLAN = BillingState.event_handlers["choose_plan"].fn


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


def one_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The /billing poller ticks at once, and once: the tab is gone at its second tick."""
    monkeypatch.setattr(billing_state, "POLL_SECONDS", 0)
    answers = iter([True])
    monkeypatch.setattr(billing_state, "client_connected", lambda _t: next(answers, False))


# ------------------------------------------------------------------ admin console


def _console(session: Session) -> AdminState:
    admin = make_user(session, email="boss@example.com", admin=True)
    for email in ("alice@example.com", "albert@example.com", "bob@example.com"):
        make_user(session, email=email)
    st = state_for(AdminState, cookie=cookie_for(session, admin.id), path="/admin/billing")
    asyncio.run(st.on_load())
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
        await st.create_key()
        await keys_wire.deliver(0, page_load)  # its list was read before the key existed
        assert [k.name for k in st.keys] == ["scraper-prod"]

    asyncio.run(key_during_load())


# ------------------------------------------------------------------ /billing dashboard


def _dashboard(session: Session) -> tuple[BillingState, int]:
    """A customer with 25 invoices (3 pages of 10, newest first: INV-25 ... INV-1)."""
    user = make_user(session, email="payer@example.com")
    for n in range(1, 26):
        _invoice(session, user.id, f"INV-{n}", "paid", n)
    st = state_for(BillingState, cookie=cookie_for(session, user.id), path="/billing")
    assert asyncio.run(st.on_load())[-2:] == [BillingState.refresh, BillingState.poll]
    asyncio.run(REFRESH(_Locked(st)))
    assert st.loaded and st.invoice_pages == 3
    return st, user.id


def page_of(n: int) -> list[str]:
    last = 25 - (n - 1) * 10
    return [f"INV-{k}" for k in range(last, max(last - 10, 0), -1)]


def tokens_used(st: BillingState) -> int:
    return next(m.used for m in st.meters if m.metric == "tokens")


def test_invoice_paging_shows_the_newest_pages_answer(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    wire = Wire(monkeypatch, billing_state, "load_slow")

    async def scenario() -> None:
        st.next_invoices()
        to_2 = await wire.start(REFRESH, st)
        st.next_invoices()
        to_3 = await wire.start(REFRESH, st)
        await wire.deliver(1, to_3)
        await wire.deliver(0, to_2)
        assert (st.invoice_page, numbers(st.invoices)) == (3, page_of(3))

        # Nor does an older page's failure, arriving last.
        st.prev_invoices()
        failing = await wire.start(REFRESH, st, fail=ServiceUnavailable(BUSY))
        st.prev_invoices()
        to_1 = await wire.start(REFRESH, st)
        await wire.deliver(3, to_1)
        await wire.deliver(2, failing)
        assert (st.error, st.invoice_page, numbers(st.invoices)) == ("", 1, page_of(1))

    asyncio.run(scenario())


def test_a_poll_tick_read_before_next_does_not_bring_the_old_page_back(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    one_tick(monkeypatch)
    monkeypatch.setattr(billing_state, "SLOW_EVERY", 1)  # this tick reads invoices too
    wire = Wire(monkeypatch, billing_state, "load_slow")

    async def scenario() -> None:
        tick = await wire.start(POLL, st)  # page 1's invoices, on their way
        st.next_invoices()
        to_2 = await wire.start(REFRESH, st)
        await wire.deliver(1, to_2)
        await wire.deliver(0, tick)
        assert (st.invoice_page, numbers(st.invoices)) == (2, page_of(2))

    asyncio.run(scenario())


def test_a_poll_ticks_older_usage_does_not_move_the_bars_back(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, uid = _dashboard(session)
    one_tick(monkeypatch)
    wire = Wire(monkeypatch, billing_state, "load_live")

    async def scenario() -> None:
        tick = await wire.start(POLL, st)  # read before the usage below
        metering.record(session, uid, "tokens", 5_000)
        st.next_invoices()
        fresh = await wire.start(REFRESH, st)
        await wire.deliver(1, fresh)
        assert tokens_used(st) == 5_000
        await wire.deliver(0, tick)
        assert tokens_used(st) == 5_000

    asyncio.run(scenario())


def test_a_poll_that_sees_usage_move_brings_the_chart_total_and_invoices_with_it(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick between the every-SLOW_EVERY reads moved the bars but left the chart's total
    (and the invoices) as they were for up to SLOW_EVERY ticks: "5,000 / 10,000" over
    "0 tokens this period" on one page."""
    st, uid = _dashboard(session)
    one_tick(monkeypatch)  # tick 1: not a SLOW_EVERY tick
    metering.record(session, uid, "tokens", 5_000)
    _invoice(session, uid, "INV-26", "paid", 26)
    asyncio.run(POLL(_Locked(st)))
    assert tokens_used(st) == 5_000
    assert st.chart_total == "5,000"
    assert numbers(st.invoices)[0] == "INV-26"


def test_a_poll_that_sees_nothing_move_reads_no_chart_or_invoices(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guard: the quick tick stays quick while nothing changes."""
    st, _ = _dashboard(session)
    one_tick(monkeypatch)
    reads: list[int] = []
    real = billing_state.load_slow
    monkeypatch.setattr(billing_state, "load_slow", lambda *a: reads.append(1) or real(*a))
    asyncio.run(POLL(_Locked(st)))
    assert reads == []


def test_a_failed_page_of_invoices_is_a_message_over_the_dashboard_it_had(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    before = (numbers(st.invoices), st.invoice_total, st.invoice_pages, st.meters, st.history)
    wire = Wire(monkeypatch, billing_state, "load_slow")

    async def scenario() -> None:
        st.next_invoices()
        await wire.deliver(0, await wire.start(REFRESH, st, fail=ServiceUnavailable(BUSY)))
        assert st.error == BUSY
        assert (numbers(st.invoices), st.invoice_total, st.invoice_pages, st.meters,
                st.history) == before  # fmt: skip
        assert st.invoice_page == 1  # the pager stays on the page shown

        st.next_invoices()  # Next again, and this time it loads
        await wire.deliver(1, await wire.start(REFRESH, st))
        assert (st.error, numbers(st.invoices), st.invoice_page) == ("", page_of(2), 2)

        # A plan button's message is not a load's: the next good load leaves it.
        st.prev_invoices()
        await wire.deliver(2, await wire.start(REFRESH, st, fail=ServiceUnavailable(BUSY)))
        await CHOOSE_PLAN(_Locked(st), "pro")
        assert (st.error, st.busy) == (REFUSED, "")
        st.prev_invoices()
        await wire.deliver(3, await wire.start(REFRESH, st))
        assert (st.error, numbers(st.invoices)) == (REFUSED, page_of(1))

    def refused(*_args: Any) -> str:
        raise PaymentProviderError(REFUSED)

    monkeypatch.setattr(billing_state, "start_checkout", refused)
    asyncio.run(scenario())


def test_a_failed_first_load_keeps_the_spinner_until_the_poller_loads_the_page(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user(session, email="payer@example.com")
    _invoice(session, user.id, "INV-1", "paid", 1)
    st = state_for(BillingState, cookie=cookie_for(session, user.id), path="/billing")
    asyncio.run(st.on_load())
    one_tick(monkeypatch)
    wire = Wire(monkeypatch, billing_state, "load_slow")

    async def scenario() -> None:
        await wire.deliver(0, await wire.start(REFRESH, st, fail=ServiceUnavailable(BUSY)))
        # No dashboard of empty defaults (a Free plan) as this customer's.
        assert not st.loaded
        await wire.deliver(1, await wire.start(POLL, st))
        assert st.loaded and st.error == ""
        assert numbers(st.invoices) == ["INV-1"] and tokens_used(st) == 0

    asyncio.run(scenario())
