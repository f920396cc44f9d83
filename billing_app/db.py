"""Engine and sessions. SQLite gets WAL and write-lock-first transactions; PostgreSQL a pool."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pydantic_core
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from psycopg.pq import ExecStatus
from psycopg.rows import dict_row
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session

from billing_app import pg_arrays  # noqa: F401  # registers its dumpers before any connection
from billing_app.clock import as_utc
from billing_app.errors import ServiceUnavailable
from billing_app.models.types import UTCDateTime
from billing_app.settings import get_settings

# Execution option naming how a SQLite transaction begins: IMMEDIATE takes the write
# lock up front, so a read-then-write never fails half-way with "database is locked".
# None: no BEGIN at all, each statement is its own transaction (one-statement reads).
SQLITE_BEGIN = "sqlite_begin"


# Seconds a SQLite writer waits for the write lock (in-process lock, then busy_timeout).
SQLITE_LOCK_TIMEOUT = 30.0
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


class _QueuedWriterConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions queue on an in-process lock.

    SQLite allows one writer; a second BEGIN IMMEDIATE waits in SQLite's busy handler,
    which sleeps in growing steps (up to 100 ms) instead of waking when the lock is free.
    Under 32-64 concurrent writers that convoy put p99 into seconds (measured, see
    bench/README.md). Writers of this process now wait on a threading.Lock, handed over
    as soon as the holder commits or rolls back; other processes still meet busy_timeout.
    """

    write_lock: threading.Lock
    _holding = False

    def acquire_write(self) -> None:
        if not self.write_lock.acquire(timeout=SQLITE_LOCK_TIMEOUT):
            # Wrapped as SQLAlchemy wraps the driver's own: raised from the "begin" event,
            # a bare sqlite3 error escaped the API's database rule and answered 500.
            raise sa_exc.OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        self._holding = True

    def release_write(self) -> None:
        if self._holding:
            self._holding = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_write()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_write()


def _connection_class(url: str) -> type[sqlite3.Connection]:
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.setdefault(url, threading.Lock())
    return type("QueuedWriterConnection", (_QueuedWriterConnection,), {"write_lock": lock})


def json_text(value: Any) -> str:
    """JSON columns' encoder (pydantic-core, in Rust): a Stripe event's 4.6 KB payload in
    a tenth of json.dumps' time, which was 4 % of a webhook delivery (py-spy)."""
    return pydantic_core.to_json(value).decode()


def sqlite_timestamp(value: datetime) -> str:
    """A timestamp as SQLAlchemy stores it on SQLite (UTCDateTime): naive UTC text with
    microseconds. For writes on the driver's cursor, which must meet the ORM's rows."""
    return as_utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def from_sqlite_timestamp(text: str) -> datetime:
    """A timestamp SQLite returned (as text), as UTCDateTime gives it: aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sqlite_params(row: dict[str, Any]) -> dict[str, Any]:
    """Parameters for the SQLite driver's cursor, as SQLAlchemy would bind them there:
    timestamps as `sqlite_timestamp` text, JSON objects and lists as `json_text`."""
    return {k: _sqlite_value(v) for k, v in row.items()}


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return sqlite_timestamp(value)
    return json_text(value) if isinstance(value, dict | list) else value


def sqlite_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`sqlite_params` of many rows with the same keys, each column of one type (or
    None), as for an executemany. Column by column, and a timestamp the rows share (a
    batch's one `now`, a period's bounds) is formatted once: a 1,000-event batch's rows
    took a quarter of its CPU on SQLite row by row (cProfile)."""
    if len(rows) < 2:
        return [sqlite_params(row) for row in rows]
    keys = list(rows[0])
    columns = [_sqlite_column([row[k] for row in rows]) for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]


def sqlite_columns(columns: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Positional rows for an executemany, from their columns (each of one type, or
    None), converted as `sqlite_rows` converts them. Tuples, not dicts: sqlite3 binds a
    dict's values by name, and for a 1,000-event batch that cost ~0.7 ms of the events'
    insert and ~0.9 ms of the counters' (bench/README.md, finding 51)."""
    return list(zip(*(_sqlite_column(c) for c in columns), strict=True))


def _sqlite_column(values: list[Any]) -> list[Any]:
    """One column's values as `_sqlite_value` converts them; each distinct timestamp
    formatted once."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, datetime):
        texts: dict[Any, str | None] = {None: None}
        texts.update((v, sqlite_timestamp(v)) for v in set(values) if v is not None)
        return list(map(texts.__getitem__, values))
    if isinstance(sample, dict | list):
        return [None if v is None else json_text(v) for v in values]
    return values


# The write pool holds up to this many times DB_POOL_SIZE connections; the read pool
# (PostgreSQL) DB_POOL_SIZE.
WRITE_POOL_FACTOR = 2


def create_db_engine(url: str, pool_size: int = 10) -> Engine:
    """The write engine: up to 2 x `pool_size` connections, opened as needed and kept.

    Not `pool_size` kept plus as many overflow: the pool closes an overflow connection as
    soon as it comes back, so 16 webhook deliveries at once against 10 kept connections
    opened and closed ~20 PostgreSQL sessions a second (finding 38).
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": 30,
                "factory": _connection_class(url),
            },
            pool_size=WRITE_POOL_FACTOR * pool_size,
            max_overflow=0,
            json_serializer=json_text,
        )
        _configure_sqlite(engine)
        return engine
    return _pg_engine(url, WRITE_POOL_FACTOR * pool_size, max_overflow=0)


def _pg_engine(url: str | sa.URL, pool_size: int, **options: Any) -> Engine:
    return sa.create_engine(
        url,
        pool_size=pool_size,
        pool_timeout=10,
        pool_recycle=1800,
        # Sessions in UTC: psycopg then loads timestamps with datetime.timezone.utc, the
        # tzinfo of the app's own datetimes. With the server's zone (here Etc/UTC, a
        # ZoneInfo) every comparison of the two took the slow path through utcoffset().
        connect_args={"connect_timeout": 5, "options": "-c TimeZone=UTC"},
        json_serializer=json_text,
        **options,
    )


# Pages the WAL may hold before a commit copies them back into the database file (SQLite's
# default: 1,000, ~4 MB). A 1,000-event batch dirties ~4,000 pages (an index leaf per
# user), so with the default every batch paid a checkpoint of its own; with 10,000
# (~40 MB of WAL) a page written by several batches is copied back once. Measured over
# HTTP (bench/README.md, finding 42): batches 17,400-17,900 -> 21,900-23,600 events/s.
SQLITE_WAL_AUTOCHECKPOINT = 10_000


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        if mode is None:
            return
        raw = conn.connection.dbapi_connection
        queued = mode == "IMMEDIATE" and isinstance(raw, _QueuedWriterConnection)
        if queued:
            raw.acquire_write()
        try:
            conn.exec_driver_sql(f"BEGIN {mode}")
        except BaseException:
            if queued:
                raw.release_write()
            raise


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    settings = get_settings()
    return create_db_engine(settings.database_url, settings.db_pool_size)


# Derived engines per main engine: (reads, one-statement reads). Kept here rather than
# in an lru_cache so that dispose_engines() can close their pools.
_DERIVED: dict[Engine, tuple[Engine, Engine]] = {}
_DERIVED_LOCK = threading.Lock()


def _derived(engine: Engine) -> tuple[Engine, Engine]:
    found = _DERIVED.get(engine)
    if found is None:
        with _DERIVED_LOCK:
            found = _DERIVED.get(engine)
            if found is None:
                found = _DERIVED[engine] = _make_derived(engine)
    return found


def _make_derived(engine: Engine) -> tuple[Engine, Engine]:
    """SQLite: the same pool; reads begin DEFERRED (they do not queue behind writers),
    one-statement reads begin nothing. PostgreSQL: one pool of its own for both, whose
    connections are in autocommit from the start, so a read is its statements alone,
    without the BEGIN and ROLLBACK round trips (3 round trips -> 1 for a quota check).
    Its own pool, because switching a shared connection to autocommit and back at each
    checkout, and the pool's rollback on return, cost ~110 µs of CPU per quota check
    (measured in-process: the check's statement 190 -> 60 µs with this pool and the
    driver's cursor). No overflow: reads wait for one of its connections rather than
    open more."""
    if engine.dialect.name == "sqlite":
        return (
            engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"}),
            engine.execution_options(**{SQLITE_BEGIN: None}),
        )
    reads = _pg_engine(
        engine.url,
        engine.pool.size() // WRITE_POOL_FACTOR,  # type: ignore[attr-defined]
        max_overflow=0,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,  # nothing to roll back in autocommit
    )
    return reads, reads


def read_engine(engine: Engine) -> Engine:
    """The engine for reads that may be several statements (see _make_derived)."""
    return _derived(engine)[0]


def dispose_engines() -> None:
    """Close the pooled connections of the app's engine and of every read engine, and
    forget them; the next use builds them again from the settings (tests change them)."""
    with _DERIVED_LOCK:
        derived = list(_DERIVED.items())
        _DERIVED.clear()
    for main, (reads, _) in derived:
        if reads.pool is not main.pool:
            reads.dispose()
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()


# What callers are told while the database cannot be reached (the API's 503, the pages).
UNAVAILABLE_MESSAGE = "The database is unavailable; retry shortly."
# The Retry-After (seconds) of every 503 that names no shorter wait.
UNAVAILABLE_RETRY_AFTER = 5
# ... and while another transaction holds what this one needs (it was rolled back).
BUSY_MESSAGE = "The database is busy with a conflicting change; retry shortly."
BUSY_RETRY_AFTER = 1


def unavailable(err: BaseException) -> ServiceUnavailable | None:
    """The app's ServiceUnavailable when `err` means the database cannot serve now, else
    None (a bug, a constraint, bad input: not an outage).

    An outage: the driver's OperationalError or InterfaceError (PostgreSQL stopped or
    unreachable, the SQLite file locked past its timeout), any DBAPIError that lost its
    connection, and the pool's TimeoutError (every connection taken while the database
    hangs). The rule the API has always answered 503 by, with what that takes in: a
    deadlock, serialization failure or lock timeout on PostgreSQL, and SQLite's "database
    is locked", for which a retry is right too, but which are no outage: they get
    BUSY_MESSAGE and a shorter Retry-After, so neither a caller nor an operator goes
    looking for a stopped database. On SQLite an SQL syntax error is an OperationalError
    too, and counts as an outage.

    A missing table or column while the database is not at this code's migration is one
    too, with schema_problem's line as the message: PostgreSQL raises it as a
    ProgrammingError, which was a 500, and SQLite's 503 did not say what to do.
    """
    if missing_schema(err):
        try:
            problem = schema_problem()
        except Exception:  # the database went away meanwhile: the plain rule below
            problem = None
        if problem is not None:
            return ServiceUnavailable(problem)
    if isinstance(err, sa_exc.DBAPIError):
        down = err.connection_invalidated or isinstance(
            err, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    else:
        down = isinstance(err, sa_exc.TimeoutError)
    if not down:
        return None
    if _busy(err):
        return ServiceUnavailable(BUSY_MESSAGE, retry_after=BUSY_RETRY_AFTER)
    return ServiceUnavailable(UNAVAILABLE_MESSAGE)


# PostgreSQL's deadlock_detected, serialization_failure and lock_not_available.
_PG_BUSY = frozenset({"40P01", "40001", "55P03"})


def _busy(err: BaseException) -> bool:
    """Another transaction held what this one needed: the database itself is up."""
    orig = getattr(err, "orig", None)
    if getattr(orig, "sqlstate", None) in _PG_BUSY:
        return True
    return isinstance(orig, sqlite3.OperationalError) and str(orig).startswith(
        ("database is locked", "database table is locked")
    )


# PostgreSQL's undefined_table and undefined_column.
_PG_MISSING = frozenset({"42P01", "42703"})


def missing_schema(err: BaseException) -> bool:
    """A table or column the statement names is not in the database."""
    if not isinstance(err, sa_exc.DBAPIError):
        return False
    orig = err.orig
    if getattr(orig, "sqlstate", None) in _PG_MISSING:
        return True
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    text = str(orig)
    return text.startswith(("no such table", "no such column")) or "has no column named" in text


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that rolls back on error and always closes."""
    session = Session(engine or get_engine(), expire_on_commit=False)
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_session(engine: Engine | None = None) -> Iterator[Session]:
    with session_scope(read_engine(engine or get_engine())) as session:
        yield session


@contextmanager
def read_connection(engine: Engine | None = None) -> Iterator[sa.Connection]:
    """A pooled connection for a read that is one statement: no BEGIN, no ROLLBACK and no
    ORM session around it (measured for the quota check: 174 -> 93 µs on SQLite,
    447 -> 344 µs on PostgreSQL, and 85 µs on PostgreSQL's own read pool)."""
    with _derived(engine or get_engine())[1].connect() as conn:
        yield conn


@contextmanager
def driver_errors(conn: sa.Connection, sql: str) -> Iterator[None]:
    """Errors of the connection's DB-API connection raised as SQLAlchemy raises them
    (IntegrityError, DataError, OperationalError, ...), with a lost connection invalidated
    in the pool: callers tell bad input from an outage by those."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as err:
        lost = conn.dialect.is_disconnect(err, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(err)
        raise sa_exc.DBAPIError.instance(
            sql, None, err, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from err


@contextmanager
def driver_cursor(conn: sa.Connection, sql: str, **options: Any) -> Iterator[Any]:
    """A cursor on the connection's DB-API connection (in its transaction), closed after.
    `options`: the driver's cursor options (psycopg's `row_factory`)."""
    cur = conn.connection.dbapi_connection.cursor(**options)  # type: ignore[union-attr]
    try:
        with driver_errors(conn, sql):
            yield cur
    finally:
        cur.close()


@dataclass(frozen=True, slots=True)
class CompiledForDriver:
    sql: str
    # Result columns holding timestamps: SQLite returns them as text.
    timestamps: tuple[str, ...]


# Each statement compiled once per dialect and set of parameter names.
_COMPILED: dict[tuple[Any, str, frozenset[str]], CompiledForDriver] = {}
# SQLite with named parameters, so that both drivers take the same dict of values.
_SQLITE_NAMED = sqlite.dialect(paramstyle="named")


def compile_for_driver(dialect: sa.Dialect, stmt: Any, keys: frozenset[str]) -> CompiledForDriver:
    """A Core statement's SQL for the driver's cursor, given the parameters it will get.
    Refuses a statement that needs others: the driver fills in no column default."""
    found = _COMPILED.get((stmt, dialect.name, keys))
    if found is None:
        target = _SQLITE_NAMED if dialect.name == "sqlite" else dialect
        compiled = stmt.compile(dialect=target, column_keys=sorted(keys))
        missing = set(compiled.bind_names.values()) - keys
        if missing:  # e.g. a column default SQLAlchemy would have filled in
            raise ValueError(f"parameters missing for the driver's cursor: {sorted(missing)}")
        columns = getattr(stmt, "exported_columns", ())
        timestamps = tuple(c.name for c in columns if isinstance(c.type, UTCDateTime))
        found = CompiledForDriver(compiled.string, timestamps)
        _COMPILED[(stmt, dialect.name, keys)] = found
    return found


def driver_rows(
    conn: sa.Connection, stmt: Any, params: dict[str, Any] | list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run a Core statement on the driver's cursor (a list of parameters: executemany)
    and return its rows as dicts.

    Compiled once (compile_for_driver): SQLAlchemy's execution around a statement
    (context, result, typing of the row) cost ~110 µs of the ~230 a one-row locked read
    takes on PostgreSQL (finding 38). The types that need converting are done here:
    JSON objects go as text; on SQLite, timestamps go and come back as the naive UTC text
    SQLAlchemy writes there. PostgreSQL sessions are in UTC, so psycopg returns UTC
    timestamps as they are.
    """
    batch = params if isinstance(params, list) else [params]
    compiled = compile_for_driver(conn.dialect, stmt, frozenset(batch[0]))
    if conn.dialect.name == "postgresql":
        # Lists stay lists: psycopg sends them as arrays.
        batch = [{k: json_text(v) if isinstance(v, dict) else v for k, v in p.items()}
                 for p in batch]  # fmt: skip
        with driver_cursor(conn, compiled.sql, row_factory=dict_row) as cur:
            if len(batch) > 1:
                cur.executemany(compiled.sql, batch)
                return []
            cur.execute(compiled.sql, batch[0])
            # Not `cur.description`: psycopg builds a Column per column for it.
            return cur.fetchall() if cur.pgresult.status == ExecStatus.TUPLES_OK else []
    batch = sqlite_rows(batch)
    with driver_cursor(conn, compiled.sql) as cur:
        if len(batch) > 1:
            cur.executemany(compiled.sql, batch)
            return []
        found = cur.execute(compiled.sql, batch[0]).fetchall()
        if not found:
            return []
        names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in found]
    for row in rows:
        for name in compiled.timestamps:
            if row[name] is not None:
                row[name] = from_sqlite_timestamp(row[name])
    return rows


@lru_cache(maxsize=1)
def _migrations() -> tuple[str, frozenset[str]]:
    """This code's migration head and every revision it knows (alembic/versions), read once."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from billing_app.settings import PROJECT_ROOT

    script = ScriptDirectory.from_config(Config(str(PROJECT_ROOT / "alembic.ini")))
    head = script.get_current_head()
    assert head is not None
    return head, frozenset(rev.revision for rev in script.walk_revisions())


def schema_head() -> str:
    """The migration this code needs (alembic/versions' single head)."""
    return _migrations()[0]


def _revision_number(revision: str) -> int | None:
    """The number this repository's revision ids start with (0016, 0002b), None without."""
    digits = revision[: len(revision) - len(revision.lstrip("0123456789"))]
    return int(digits) if digits else None


def schema_problem(engine: Engine | None = None) -> str | None:
    """None when the database is at this code's migration; else what to do, in one line.
    An un-migrated database otherwise starts fine and fails each request with a 500.

    A revision this code does not know: numbered after its head (ids here are numbered in
    order), most likely newer code's, so this worker needs that code and another
    upgrade would not help; numbered otherwise (or not at all), nothing tells it is newer
    (another branch's, say), so the line says only that this code does not know it."""
    from alembic.runtime.migration import MigrationContext

    head, known = _migrations()
    with (engine or get_engine()).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return None
    if current is None:
        return f"The database has no schema yet: run `billing-app db upgrade` (to {head})."
    if current not in known:
        number, ours = _revision_number(current), _revision_number(head)
        if number is not None and ours is not None and number > ours:
            return (
                f"The database schema is at {current}, a migration this code does not have, "
                f"numbered after its {head}: most likely newer code migrated it; run this "
                "worker on that code (`billing-app db upgrade` here cannot help)."
            )
        return (
            f"The database schema is at {current}, a revision this code does not know "
            f"(not numbered after its {head}: another branch's migration?); run this worker "
            "on the code that migrated the database, or with that code downgrade it to a "
            "revision this code has (`billing-app db upgrade` here cannot help)."
        )
    return (
        f"The database schema is at {current}; this code needs {head}: "
        "run `billing-app db upgrade`."
    )
