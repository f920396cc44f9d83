"""Background tasks' two questions: is the browser tab that started one still connected,
and is the answer it brings back still the one the page wants? Where a state's database
work runs (`in_thread`: never on the event loop), and how it fails when the database
cannot be reached: as a message, like any BillingError."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from billing_app.db import unavailable
from billing_app.settings import get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Threads:
    """The pages' own threads for their database work. Reflex runs an event handler on
    the worker's event loop, which also answers the JSON API (the fast lane) and every
    other tab: a query there, or a save waiting on another admin's row lock, would hold
    them all up. Not the loop's default executor either, which the fast lane's batches,
    cancels and key lookups use (as the webhooks' threads, api/webhook.py): admins
    waiting on a lock never take those. Half of DB_POOL_SIZE threads (at least 2)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def get(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # a forked worker starts its own threads
            size = max(2, get_settings().db_pool_size // 2)
            self._pool = ThreadPoolExecutor(size, thread_name_prefix="pages")
            self._pid = os.getpid()
        assert self._pool is not None
        return self._pool


_threads = _Threads()


async def in_thread(fn: Callable[[], T]) -> T:
    """`fn()` (blocking: database reads and writes, Stripe) on the pages' threads, the
    event loop free meanwhile. A handler that is not a background task keeps its tab's
    state lock while it waits, so the tab's events still run one at a time, in order.
    `fn` must not touch the state: it takes plain values and returns DTOs or views."""
    return await asyncio.get_running_loop().run_in_executor(_threads.get(), fn)


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
