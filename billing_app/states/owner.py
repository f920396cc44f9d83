"""A tab's server-side State belongs to the session cookie it was filled under.

Reflex keeps every page's State on the server under the tab's client token and sends the
whole tree to whoever presents that token (the hydrate event), before any handler runs.
The token is not a secret the app controls (sessionStorage, the websocket URL), and a tab
can sign in as someone else without signing out (the sign-in form over a live or expired
session). So before every event the State is checked against the session cookie of the
connection sending it: under another cookie (another user, nobody, a new session), it is
wiped first, and the previous owner's data (an admin's user list, a new key's secret, a
customer's usage and invoices) never reaches the newcomer.
"""

from __future__ import annotations

import hashlib
from typing import Any

from reflex.middleware import Middleware

from billing_app.services import auth
from billing_app.states.session import SessionState

# Load numbers and poller generations: kept counting up across a wipe, so an answer
# still on its way for the previous owner is dropped (live.is_newest) and a poller
# started for them stops.
COUNTERS = (
    "_users_load", "_invoices_load", "_keys_load", "_detail_load",
    "_live_load", "_slow_load", "_poll_gen",
)  # fmt: skip


def cookie_owner(cookie_header: str) -> str:
    """Who the connection is, as far as the State is concerned: a digest of the session
    tokens its cookie carries ("" for none). No database read: a new session, even of
    the same user, is a new owner."""
    tokens = auth.session_tokens(cookie_header)
    if not tokens:
        return ""
    return hashlib.sha256("\n".join(sorted(tokens)).encode()).hexdigest()


async def _all_states(root: Any) -> list[Any]:
    """SessionState and every page state under it, loaded (a Redis state manager loads
    substates lazily: one not loaded would keep its data through the wipe)."""
    out: list[Any] = []
    pending = [SessionState]
    while pending:
        cls = pending.pop()
        out.append(await root.get_state(cls))
        pending.extend(cls.get_substates())
    return out


class StateOwnerMiddleware(Middleware):
    """Before each event: the State is wiped when the connection's session cookie is not
    the one it was filled under."""

    async def preprocess(self, app: Any, state: Any, event: Any) -> None:
        session = await state.get_state(SessionState)
        owner = cookie_owner(state.router.headers.cookie)
        bound = session._state_owner
        if bound == owner:
            return None
        if bound is not None:  # filled under another cookie (None: a fresh State)
            states = await _all_states(state)
            counters = {
                (id(s), name): getattr(s, name)
                for s in states
                for name in COUNTERS
                if name in type(s).__fields__
            }
            session.reset()  # SessionState and every page state under it
            for s in states:
                for name in COUNTERS:
                    if (id(s), name) in counters:
                        setattr(s, name, counters[(id(s), name)] + 1)
        session._state_owner = owner
        return None
