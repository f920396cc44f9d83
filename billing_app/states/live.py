"""Background tasks' two questions: is the browser tab that started one still connected,
and is the answer it brings back still the one the page wants? And how a state's database
work fails when the database cannot be reached: as a message, like any BillingError."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billing_app.db import unavailable

log = logging.getLogger(__name__)


def client_connected(token: str) -> bool:
    """True while the websocket for `token` is open on this worker.

    Background pollers check this so they stop when the tab closes. Outside a
    running app (unit tests) there is no namespace, and the answer is False.
    """
    try:
        from reflex.utils.prerequisites import get_and_validate_app

        namespace = get_and_validate_app().app.event_namespace
    except Exception:
        return False
    if namespace is None:
        return False
    return token in namespace.token_to_sid


def start_load(state: Any, counter: str) -> int:
    """Number a load of one part of the page: bumps `counter`, an int backend var of the
    state (`_users_load`), and returns this load's number. Call it inside `async with self`,
    with the load's arguments read in the same block."""
    n = getattr(state, counter) + 1
    setattr(state, counter, n)
    return n


def is_newest(state: Any, counter: str, n: int) -> bool:
    """True while load `n` is the newest of its part (inside `async with self`). Answers
    arrive in any order (a slower query, another thread), so only the newest load's answer
    or error may be shown: an older one arriving last would show data, or an error, for
    filters, a page or a moment the page has moved on from."""
    return getattr(state, counter) == n


@contextmanager
def outage_as_error() -> Iterator[None]:
    """Around a state's database work: an outage (db.unavailable: the database stopped or
    unreachable, the SQLite file locked past its timeout, the pool exhausted) is raised as
    the app's ServiceUnavailable, a BillingError, so the handler shows its message where
    it shows any BillingError. Any other error (a bug, a constraint) goes on as it was."""
    try:
        yield
    except Exception as err:
        down = unavailable(err)
        if down is None:
            raise
        log.warning("database unavailable: %s", type(err).__name__)
        raise down from err
