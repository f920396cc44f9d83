"""The /billing Stripe buttons' busy state, the life of its two flags: PRESSED (in the
browser, set by the press itself, so a slow link shows the button working at once) and
the state's `busy` (which refuses a second press). Every answer that leaves the person
on the page releases PRESSED with the message; only the redirect to Stripe keeps it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlmodel import Session

from billing_app.errors import PaymentProviderError
from billing_app.states import billing as billing_state
from billing_app.states.billing import BillingState
from tests.ui.test_admin_drawer import _Locked
from tests.ui.test_state_db_down import DOWN, _dashboard, _spec, outage, released, run
from tests.ui.test_states import state_for

CHOOSE_PLAN = BillingState.event_handlers["choose_plan"].fn
MANAGE = BillingState.event_handlers["manage_subscription"].fn
REFUSED = "Stripe refused the request."
CHECKOUT_URL = "http://127.0.0.1:12111/checkout/cs_test_1"


class _Stripe:
    """start_checkout / open_portal held until the test lets it answer (or fail)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.called = threading.Event()
        self.go = threading.Event()
        self.fail: Exception | None = None
        monkeypatch.setattr(billing_state, name, self._call)

    def _call(self, *_args: Any) -> str:
        self.called.set()
        assert self.go.wait(10), "never answered"
        if self.fail is not None:
            raise self.fail
        return CHECKOUT_URL


def test_a_plan_buttons_press_is_busy_until_the_error_then_released(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    stripe = _Stripe(monkeypatch, "start_checkout")
    stripe.fail = PaymentProviderError(REFUSED)

    async def scenario() -> Any:
        first = asyncio.create_task(CHOOSE_PLAN(_Locked(st), "pro"))
        assert await asyncio.to_thread(stripe.called.wait, 10)
        assert (st.busy, st.error) == ("pro", "")
        # A second press meanwhile (another plan's button) is refused and releases
        # nothing: the first press's answer will.
        assert await CHOOSE_PLAN(_Locked(st), "basic") is None
        assert await MANAGE(_Locked(st)) is None
        assert st.busy == "pro"
        stripe.go.set()
        return await first

    answer = asyncio.run(scenario())
    assert released(answer)
    assert (st.busy, st.error) == ("", REFUSED)


def test_the_redirect_to_stripe_keeps_the_button_busy_until_the_page_goes(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    stripe = _Stripe(monkeypatch, "start_checkout")
    stripe.go.set()
    answer = run(CHOOSE_PLAN, st, "pro")
    assert not released(answer)
    assert CHECKOUT_URL in dict(_spec(answer)[1])["path"]
    assert (st.busy, st.error) == ("pro", "")
    # Back on the page (Back from Stripe, a reload): its load starts it afresh.
    asyncio.run(st.on_load())
    assert st.busy == ""


def test_the_portal_buttons_press_is_released_by_its_error(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, _ = _dashboard(session)
    stripe = _Stripe(monkeypatch, "open_portal")
    stripe.fail = RuntimeError("connection reset")  # not a BillingError: still a message
    stripe.go.set()
    assert released(run(MANAGE, st))
    assert st.busy == "" and "payment provider" in st.error


def test_presses_the_server_turns_away_release_the_button(session: Session) -> None:
    st, _ = _dashboard(session)
    # Not a plan (a forged event): nothing happens, and the button is itself again.
    assert released(run(CHOOSE_PLAN, st, "platinum")) and st.busy == ""
    # The database down: the message, and the button back.
    with outage():
        assert released(run(CHOOSE_PLAN, st, "pro"))
        assert (st.busy, st.error) == ("", DOWN)
        assert released(run(MANAGE, st))
        assert (st.busy, st.error) == ("", DOWN)
    # Signed out meanwhile: to the sign-in page, the button released first.
    st = state_for(BillingState, cookie="", path="/billing")
    answer = run(CHOOSE_PLAN, st, "pro")
    assert isinstance(answer, list) and released(answer)
    assert "/login" in dict(_spec(answer[-1])[1])["path"] and st.busy == ""


def test_a_reconnect_releases_a_press_whose_answer_the_dropped_socket_lost(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket dropped between the press and the redirect: the redirect went nowhere and
    the button span on. The reconnect's load (Reflex runs on_load again) releases it, and a
    press again works; a server restarted meanwhile (a fresh state) releases it too."""
    st, _ = _dashboard(session)
    stripe = _Stripe(monkeypatch, "start_checkout")
    stripe.go.set()
    assert not released(run(CHOOSE_PLAN, st, "pro"))  # the redirect, lost with the socket
    assert released(asyncio.run(st.on_load())) and st.busy == ""
    assert CHECKOUT_URL in dict(_spec(run(CHOOSE_PLAN, st, "pro"))[1])["path"]
    fresh = state_for(BillingState, cookie=st.router.headers.cookie, path="/billing")
    assert released(asyncio.run(fresh.on_load()))


def test_a_reconnect_while_stripe_still_answers_keeps_the_button_busy(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconnected while the call still runs: its answer reaches the new socket, so the
    button stays busy and a second press is refused until then."""
    st, _ = _dashboard(session)
    stripe = _Stripe(monkeypatch, "start_checkout")

    async def scenario() -> tuple[Any, Any]:
        first = asyncio.create_task(CHOOSE_PLAN(_Locked(st), "pro"))
        assert await asyncio.to_thread(stripe.called.wait, 10)
        load = await st.on_load()
        assert st.busy == "pro"
        assert await CHOOSE_PLAN(_Locked(st), "basic") is None
        stripe.go.set()
        return load, await first

    load, answer = asyncio.run(scenario())
    assert not released(load)
    assert CHECKOUT_URL in dict(_spec(answer)[1])["path"]


def test_a_press_running_past_its_time_is_released_and_its_late_answer_dropped(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that never answers (its worker restarted, the state kept in Redis) does not
    hold the buttons forever: past PRESS_LOST_SECONDS the next load releases them, and if
    the call does answer after all, that answer no longer navigates nor shows."""
    st, _ = _dashboard(session)
    stripe = _Stripe(monkeypatch, "start_checkout")
    stripe.fail = PaymentProviderError(REFUSED)

    async def scenario() -> tuple[Any, Any]:
        first = asyncio.create_task(CHOOSE_PLAN(_Locked(st), "pro"))
        assert await asyncio.to_thread(stripe.called.wait, 10)
        st._press_since -= billing_state.PRESS_LOST_SECONDS
        load = await st.on_load()
        stripe.go.set()
        return load, await first

    load, answer = asyncio.run(scenario())
    assert released(load) and answer is None
    assert (st.busy, st.error) == ("", "")
