"""Group commit: one writer thread per process stores many requests' usage in ONE transaction.

A request hands its validated write to the writer and waits for its own outcome, which
is set only after the commit, so a 2xx still means "stored". Under load the requests
that arrive while a transaction runs go into the next one together: one commit, a few
statements and one counter-row lock handoff for the whole group instead of one each
(measured in bench/README.md: the hot-row consume and single-event ingestion were bound
by exactly those). With no load a group is one write, as before.

Records and consumes are committed in separate transactions, each taking counter rows
in sorted order, so groups of one kind in different processes do not deadlock on their
counters (a record and a consume sharing a key still can: metering.lost_lock_race). If a
group fails as a whole (a value the database refuses, a deadlock), each write is retried
alone so only the bad one fails, and a write that alone loses a lock race (deadlock,
lock or serialization failure) or finds its user deleted meanwhile runs again, up to
CONFLICT_RETRIES times; a lost database connection fails the group at once (503) rather
than retrying into an outage.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import sqlalchemy.exc as sa_exc

from billing_app.db import session_scope
from billing_app.errors import BillingError
from billing_app.services.dto import RecordResult
from billing_app.services.metering import (
    UsageWrite,
    apply_writes,
    lost_lock_race,
    user_vanished,
)

log = logging.getLogger(__name__)

MAX_GROUP = 256  # writes per transaction; bounds statement size and lock hold time

_Item = tuple[UsageWrite, "Future[RecordResult]"]


# How long the writer's transaction waits for a row another transaction holds; past it
# PostgreSQL answers lock_not_available. The writer runs its groups one at a time, so
# one row held by a long transaction (a psql session, a slow job) stalled every user's
# writes in the worker for as long as it was held (measured: 11 s for a 12 s lock). Its
# own rows are held for milliseconds: the other workers' writers are its only rivals.
# Only here: callers of the service with many sessions on one row (tests, scripts)
# queue longer, and are not holding up anyone else's writes.
LOCK_TIMEOUT = "2s"
_SET_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
# The failed write is not run again: it answers 503 at once, and the writes grouped with
# it go on one by one.
_LOCK_TIMEOUT_STATE = "55P03"
CONFLICT_RETRIES = 3


_conflict = lost_lock_race


def _connection_lost(err: BaseException) -> bool:
    if (
        _conflict(err)
        or getattr(getattr(err, "orig", None), "sqlstate", None) == _LOCK_TIMEOUT_STATE
    ):
        return False  # an OperationalError too, but the connection is fine
    if isinstance(err, sa_exc.DBAPIError):
        return err.connection_invalidated or isinstance(
            err, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(err, sa_exc.TimeoutError)  # pool exhausted while the database is down


class UsageWriter:
    """Queue of pending writes drained by one daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()
        self._gate = threading.Lock()
        self.writes = 0  # writes submitted
        self.groups = 0  # transactions run (a failed group's one-by-one retries included)

    def submit(self, write: UsageWrite) -> Future[RecordResult]:
        """Queue a write; the future gets the RecordResult after commit, or its error."""
        future: Future[RecordResult] = Future()
        # Running from the start: a caller that goes away (a cancelled request) cannot
        # cancel a write the writer will commit anyway, nor trip up its result delivery.
        future.set_running_or_notify_cancel()
        self._ensure_thread()
        self.writes += 1
        self._queue.put((write, future))
        return future

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the writer: what is submitted meanwhile is committed as one group after."""
        with self._gate:
            yield

    def write(self, write: UsageWrite) -> RecordResult:
        """Blocking form for callers already on a worker thread."""
        return self.submit(write).result()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            with self._gate:
                while len(group) < MAX_GROUP:
                    try:
                        group.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                records = [item for item in group if not item[0].consume]
                consumes = [item for item in group if item[0].consume]
                for part in (records, consumes):
                    if part:
                        self._commit(part)
            except BaseException as err:  # never let the thread die with requests waiting
                log.exception("usage writer failed")
                for _, future in group:
                    if not future.done():
                        future.set_exception(err)

    def _commit(self, items: list[_Item], attempt: int = 1) -> None:
        self.groups += 1
        try:
            with session_scope() as session:
                conn = session.connection()
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(_SET_LOCK_TIMEOUT)
                outcomes = apply_writes(session, [write for write, _ in items], commit=True)
                session.commit()  # the reads after apply_writes' own commit
        except Exception as err:
            retry = _conflict(err) or user_vanished(err)
            if len(items) == 1 and retry and attempt <= CONFLICT_RETRIES:
                # Another process's transaction held what this one needed, or deleted
                # its user; it has finished now, so run it again (then UserNotFound).
                log.info("write lost a race (%s); retrying", err.orig)  # type: ignore[attr-defined]
                self._commit(items, attempt + 1)
                return
            if len(items) == 1 or _connection_lost(err):
                for _, future in items:
                    future.set_exception(err)
                return
            log.warning("group of %d writes failed (%s); retrying one by one", len(items), err)
            for item in items:
                self._commit([item])
            return
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, BillingError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


writer = UsageWriter()
