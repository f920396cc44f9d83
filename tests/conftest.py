"""Shared fixtures: a real database per test run (SQLite, or PostgreSQL when
TEST_DATABASE_URL points at one), migrated with Alembic, emptied between tests."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel

from billing_app import clock, db, plans, settings

PG_DEFAULT = "postgresql+psycopg://root@127.0.0.1:5432/test"

# Debian's Chromium, driven by pytest-playwright (`playwright install` cannot download here).
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API keeps an event loop running in this
    thread from the first of them to the end of the session, and asyncio.run (the State
    tests drive background handlers with it) refuses to start under a running loop.

    They need Chromium: reported as skipped on a machine without it, but never in CI,
    where `make test` installs it and a missing browser must fail the run."""
    unmarked = [
        i.nodeid
        for i in items
        if i.nodeid.startswith("tests/browser/") and not i.get_closest_marker("browser")
    ]
    if unmarked:  # it would run mid-suite under `-m "not browser"`, and break the rest
        raise pytest.UsageError(f"add `pytestmark = pytest.mark.browser` to: {unmarked[0]}")
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
    if os.path.exists(CHROMIUM) or os.environ.get("CI"):
        return
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.skip(reason=f"{CHROMIUM} not installed"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


def _backend_url(
    tmp_path_factory: pytest.TempPathFactory, template: str | None = None
) -> tuple[str, str | None]:
    """(url for the tests, admin url to drop a PostgreSQL database afterwards): an empty
    database, or a copy of `template`."""
    base = os.environ.get("TEST_DATABASE_URL", "")
    if not base.startswith("postgres"):
        path = tmp_path_factory.mktemp("db") / "test.db"
        if template:
            shutil.copyfile(make_url(template).database, path)
        return f"sqlite:///{path}", None
    base = base.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"billing_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{make_url(template).database}"' if template else ""
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    admin.dispose()
    return make_url(base).set(database=name).render_as_string(hide_password=False), base


@contextmanager
def _scratch_database(
    tmp_path_factory: pytest.TempPathFactory, template: str | None = None
) -> Iterator[str]:
    """An empty database of this run's kind (or a copy of `template`), dropped after
    (PostgreSQL)."""
    url, admin_url = _backend_url(tmp_path_factory, template)
    try:
        yield url
    finally:
        if admin_url:
            name = make_url(url).database
            admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _scratch_database(tmp_path_factory) as url:
        yield url


@pytest.fixture
def empty_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of its own, not migrated: for tests of the migrations themselves."""
    with _scratch_database(tmp_path_factory) as url:
        yield url


def alembic(url: str, action: str = "upgrade", revision: str = "head") -> None:
    """Run `alembic <action> <revision>` on `url`."""
    from alembic.config import Config

    from alembic import command

    cfg = Config(str(settings.PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    getattr(command, action)(cfg, revision)


def migrate(url: str) -> None:
    alembic(url)


@pytest.fixture(scope="session")
def _migrated(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture(scope="session")
def _migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database that nothing stays connected to (PostgreSQL copies only such a
    template): a copy takes well under a second, a migration a few."""
    with _scratch_database(tmp_path_factory) as url:
        migrate(url)  # alembic's engine keeps no connection (NullPool)
        yield url


@pytest.fixture
def migrated_database_url(
    _migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of its own, for a process of its own (a CLI, a server)."""
    with _scratch_database(tmp_path_factory, template=_migrated_template) as url:
        yield url


@pytest.fixture(autouse=True)
def app_settings(monkeypatch: pytest.MonkeyPatch, _migrated: str) -> Iterator[settings.Settings]:
    """Point the app's settings (and so get_engine) at the test database."""
    monkeypatch.setenv("DATABASE_URL", _migrated)
    monkeypatch.setenv("ENVIRONMENT", "test")
    for var in ("STRIPE_SECRET_KEY", "BILLING_PLANS_JSON", "ADMIN_EMAILS"):
        monkeypatch.delenv(var, raising=False)
    _clear_caches()
    yield settings.get_settings()
    clock.set_clock(None)
    _clear_caches()


def reachable_redis(url: str, setting: str) -> redis.Redis:
    """A client of the Redis at `url` that answered a PING. Without one the test is
    skipped, naming `setting`, except in CI, where Redis runs and it fails instead."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as err:
        client.close()
        reason = f"Redis at {url} ({setting}) is not reachable: {err}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} Redis is required in CI.", pytrace=False)
        pytest.skip(reason)
    return client


def _clear_caches() -> None:
    settings.get_settings.cache_clear()
    plans.get_catalog.cache_clear()
    db.dispose_engines()  # closes the pools too: 100 connections is PostgreSQL's limit


_ENGINES: dict[str, Engine] = {}


@pytest.fixture
def engine(_migrated: str) -> Iterator[Engine]:
    eng = _ENGINES.get(_migrated)
    if eng is None:
        eng = _ENGINES[_migrated] = db.create_db_engine(_migrated, pool_size=60)
    _truncate(eng)
    yield eng


def _truncate(eng: Engine) -> None:
    """Empty every table and restart the ids at 1 (tests name users by id)."""
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]  # children first
    with eng.begin() as conn:
        if eng.dialect.name == "postgresql":
            # TRUNCATE costs ~80 ms whatever the tables hold, over a thousand times a run;
            # deleting the few rows a test left and resetting the sequences, under 1 ms.
            used = set(
                conn.exec_driver_sql(
                    " UNION ALL ".join(f"(SELECT '{t}' FROM \"{t}\" LIMIT 1)" for t in tables)
                ).scalars()
            )
            for t in tables:
                if t in used:
                    conn.exec_driver_sql(f'DELETE FROM "{t}"')
            conn.exec_driver_sql(
                "SELECT setval(quote_ident(schemaname) || '.' || quote_ident(sequencename),"
                " start_value, false) FROM pg_sequences"
                " WHERE schemaname = current_schema() AND last_value IS NOT NULL"
            )
        else:
            for t in tables:
                conn.exec_driver_sql(f'DELETE FROM "{t}"')


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


@pytest.fixture
def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class FrozenClock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        clock.set_clock(lambda: self.now)

    def set(self, now: datetime) -> None:
        self.now = now


@pytest.fixture
def frozen_clock() -> Iterator[FrozenClock]:
    fc = FrozenClock(datetime(2026, 11, 15, 12, 0, tzinfo=UTC))
    yield fc
    clock.set_clock(None)
