"""The notices a return from Checkout or the portal brings: shown on the clean URL once (a
quick reload that beats the redirect neither shows it twice nor loses it), kept for that
visit until dismissed, and gone at the next load of any kind, a failed one included."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlmodel import Session

from billing_app.pages.billing import notices
from billing_app.states import billing as billing_state
from billing_app.states.billing import BillingState
from tests.factories import make_user
from tests.ui.test_state_db_down import outage
from tests.ui.test_states import cookie_for, state_for

RETURN = "/billing?checkout=success&session_id=cs_test_h97"
# A comparison of a notice in the compiled page (not its text shown).
NOTICE_TEST = r"\.(checkout|portal)_notice_rx_state_\?\.valueOf\?\.\(\) ==="


def load(st: Any, cookie: str, path: str, socket: str) -> Any:
    """The page's load for `path` on `socket` (a reload opens a new one); its answer."""
    st.router = state_for(BillingState, cookie=cookie, path=path, socket=socket).router
    return asyncio.run(st.on_load())


def redirects_clean(answer: Any) -> bool:
    args = dict((str(k), str(v)) for k, v in answer.args)
    return args["path"] == '"/billing"' and args["replace"] == "true"


def test_a_quick_reload_after_checkout_shows_the_notice_once_on_the_clean_url(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    cookie = cookie_for(session, make_user(session, email="h97-reload@example.com").id)
    st = state_for(BillingState, cookie=cookie, path=RETURN)
    assert redirects_clean(asyncio.run(st.on_load()))
    assert st.checkout_notice == ""  # not on the URL with the query: a reload there repeats it
    # Reloaded before the redirect took effect: the query again, on a new socket.
    assert redirects_clean(load(st, cookie, RETURN, "sock-2"))
    assert st.checkout_notice == ""
    load(st, cookie, "/billing", "sock-2")  # the redirect's load: shown, once
    assert st.checkout_notice == "success"
    load(st, cookie, "/billing", "sock-3")  # a reload of the clean URL
    assert st.checkout_notice == ""
    assert redirects_clean(load(st, cookie, RETURN, "sock-3"))  # Back to the return URL
    load(st, cookie, "/billing", "sock-3")
    assert st.checkout_notice == ""

    # A reload that cut off the redirect's own load (the URL already clean): shown there.
    load(st, cookie, "/billing?checkout=canceled", "sock-4")
    load(st, cookie, "/billing", "sock-5")
    assert st.checkout_notice == "canceled"
    # Guard: a held notice no load took soon (the tab went elsewhere) is not shown later.
    load(st, cookie, "/billing?checkout=canceled", "sock-6")
    now = billing_state.time.time()
    monkeypatch.setattr(
        billing_state.time, "time", lambda: now + billing_state.NOTICE_CARRY_SECONDS + 1
    )
    load(st, cookie, "/billing", "sock-7")
    assert st.checkout_notice == ""


def test_a_later_visit_drops_the_notice_even_when_its_load_fails(session: Session) -> None:
    """The tab's next load of /billing (a navigation on the same socket) drops the notice
    whatever it finds: the database down, or the session gone."""
    cookie = cookie_for(session, make_user(session, email="h97-later@example.com").id)
    for later in ("outage", "signed out"):
        st = state_for(BillingState, cookie=cookie, path=RETURN.replace("h97", later[:3]))
        asyncio.run(st.on_load())
        load(st, cookie, "/billing", "sock-1")
        assert st.checkout_notice == "success"
        if later == "outage":
            with outage():
                load(st, cookie, "/billing", "sock-1")
            assert st.error  # it said why it could not load
        else:
            load(st, "", "/billing", "sock-1")
            assert not st.signed_in
        assert st.checkout_notice == "", later


def test_the_return_notices_wait_for_the_pages_load() -> None:
    """In the browser, a later visit first renders what the last one held: the notices
    show only once this visit's load has decided them."""
    compiled = str(notices())
    uses = [m.start() for m in re.finditer(NOTICE_TEST, compiled)]
    assert len(uses) == 3, compiled[:1000]
    # Each test of a notice (not its text): is_hydrated first.
    before = [compiled[max(0, at - 200) : at] for at in uses]
    assert all("pyAnd(reflex___state____state.is_hydrated_rx_state_" in b for b in before), before
