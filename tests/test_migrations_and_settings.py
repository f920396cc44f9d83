"""Alembic creates exactly the models' schema; settings fail early with one clear line."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import Session, SQLModel, select

from billing_app import db
from billing_app.settings import PROJECT_ROOT, ConfigError, load_settings
from tests.conftest import alembic


def test_upgrade_head_matches_the_models(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "render_as_batch": engine.dialect.name == "sqlite"}
        )
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == []


def test_counter_pages_keep_room_for_in_place_updates(engine, is_postgres):
    """Migrations 0004 and 0008 (a storage setting, which the comparison above does not
    see): both tables of rows bumped in place."""
    if not is_postgres:
        pytest.skip("fillfactor is a PostgreSQL setting (PostgreSQL leg)")
    with engine.connect() as conn:
        options = dict(
            conn.exec_driver_sql(
                "SELECT relname, reloptions FROM pg_class "
                "WHERE relname IN ('usage_counter', 'usage_daily')"
            ).all()
        )
    assert options == {"usage_counter": ["fillfactor=70"], "usage_daily": ["fillfactor=70"]}


def test_0006_swaps_the_events_user_key_for_a_trigger_and_back(empty_database_url):
    """Upgrade and downgrade (through 0007) keep the rows, and in both directions deleting
    a user deletes its events: by the trigger at head, by the key's CASCADE at 0005."""
    url = empty_database_url

    def add_user_with_an_event(conn: sa.Connection, uid: int) -> None:
        now = "2026-11-25 12:00:00"
        conn.exec_driver_sql(
            'INSERT INTO "user" (id, email, display_name, role, created_at) '
            f"VALUES ({uid}, 'u{uid}@example.com', 'U', 'user', '{now}')"
        )
        conn.exec_driver_sql(
            "INSERT INTO usage_event (user_id, metric, quantity, occurred_at, recorded_at, "
            f"idempotency_key) VALUES ({uid}, 'tokens', 1, '{now}', '{now}', 'k{uid}')"
        )

    def state(eng: sa.Engine) -> tuple[list[str], list[int]]:
        keys = [fk["referred_table"] for fk in sa.inspect(eng).get_foreign_keys("usage_event")]
        with eng.connect() as conn:
            users = conn.exec_driver_sql("SELECT user_id FROM usage_event ORDER BY 1")
            return keys, [u for (u,) in users]

    def delete_user(eng: sa.Engine, uid: int) -> None:
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DELETE FROM "user" WHERE id = {uid}')

    alembic(url, "upgrade", "0005")
    eng = db.create_db_engine(url)  # SQLite: with foreign keys enforced, as the app runs
    try:
        with eng.begin() as conn:
            for uid in (1, 2, 3):
                add_user_with_an_event(conn, uid)
        assert state(eng) == (["user"], [1, 2, 3])
        eng.dispose()
        alembic(url, "upgrade", "head")
        assert state(eng) == ([], [1, 2, 3])
        delete_user(eng, 1)
        assert state(eng) == ([], [2, 3])
        eng.dispose()
        alembic(url, "downgrade", "0005")
        assert state(eng) == (["user"], [2, 3])
        delete_user(eng, 2)
        assert state(eng) == (["user"], [3])
        eng.dispose()
        alembic(url, "upgrade", "head")
        delete_user(eng, 3)
        assert state(eng) == ([], [])
    finally:
        eng.dispose()


def test_0008_fills_usage_daily_from_the_events_and_drops_the_chart_index(
    empty_database_url, frozen_clock
):
    """Upgrade: each stored event in its counter's period and UTC day, so the chart shows
    what it showed before; downgrade: the index is back and the table gone."""
    from billing_app.models import UsageCounter, UsageEvent, User
    from billing_app.services import metering

    url = empty_database_url
    alembic(url, "upgrade", "0007")
    eng = db.create_db_engine(url)
    oct_, nov = (metering.calendar_month(datetime(2026, m, 5, tzinfo=UTC)) for m in (10, 11))
    events = [  # (period, day, hour, metric, quantity)
        (oct_, 31, 23, "tokens", 4),
        (nov, 1, 0, "tokens", 5),
        (nov, 1, 23, "tokens", 6),
        (nov, 2, 12, "api_calls", 1),
        (nov, 2, 13, "api_calls", 2),
    ]

    def indexes() -> set[str]:
        return {ix["name"] for ix in sa.inspect(eng).get_indexes("usage_event")}

    try:
        with eng.begin() as conn:
            now = datetime(2026, 11, 2, 14, tzinfo=UTC)
            conn.execute(sa.insert(User.__table__), [{"id": 1, "email": "u@example.com",
                         "display_name": "U", "role": "user", "created_at": now}])  # fmt: skip
            totals: dict[tuple[datetime, str], int] = {}
            for i, (p, day, hour, metric, q) in enumerate(events):
                at = p.start.replace(day=day, hour=hour)
                conn.execute(sa.insert(UsageEvent.__table__), [{
                    "user_id": 1, "metric": metric, "quantity": q, "occurred_at": at,
                    "recorded_at": now, "idempotency_key": f"k{i}"}])  # fmt: skip
                totals[(p.start, metric)] = totals.get((p.start, metric), 0) + q
            c = UsageCounter.__table__.c  # the table as 0007 had it: no day columns yet
            counters_0007 = sa.table(
                "usage_counter",
                *(sa.column(k, c[k].type) for k in ("user_id", "metric", "period_start",
                                                     "period_end", "used")),
            )  # fmt: skip
            conn.execute(sa.insert(counters_0007), [
                {"user_id": 1, "metric": m, "period_start": start,
                 "period_end": metering.calendar_month(start).end, "used": used}
                for (start, m), used in totals.items()
            ])  # fmt: skip
        assert "ix_usage_event_user_metric_occurred" in indexes()
        eng.dispose()
        alembic(url, "upgrade", "head")
        assert "ix_usage_event_user_metric_occurred" not in indexes()
        frozen_clock.set(datetime(2026, 11, 2, 14, tzinfo=UTC))
        with Session(eng) as s:
            for p, expected in (
                (oct_, {("2026-10-31", "tokens"): 4}),
                (nov, {("2026-11-01", "tokens"): 11, ("2026-11-02", "api_calls"): 3}),
            ):
                history = metering.daily_history(s, 1, p)
                assert {(h.day, h.metric): h.quantity for h in history if h.quantity} == expected
        eng.dispose()
        alembic(url, "downgrade", "0007")
        assert "ix_usage_event_user_metric_occurred" in indexes()
        assert "usage_daily" not in sa.inspect(eng).get_table_names()
    finally:
        eng.dispose()


def _a_subscription(eng: sa.Engine, stripe_id: str) -> None:
    """A user, a subscription, its invoice and a usage event (key `k_<stripe_id>`), written
    as the schema before the migration stores them."""
    now = "2026-11-25 12:00:00"
    with eng.begin() as conn:
        conn.exec_driver_sql(
            'INSERT INTO "user" (id, email, display_name, role, created_at) '
            f"VALUES (1, 'u@example.com', 'U', 'user', '{now}')"
        )
        conn.exec_driver_sql(
            "INSERT INTO subscription (user_id, stripe_subscription_id, plan, status, "
            "cancel_at_period_end, created_at, updated_at) "
            f"VALUES (1, '{stripe_id}', 'pro', 'active', false, '{now}', '{now}')"
        )
        conn.exec_driver_sql(
            "INSERT INTO invoice (stripe_invoice_id, user_id, status, amount_due, amount_paid, "
            f"currency, created_at) VALUES ('in_{stripe_id}', 1, 'open', 9900, 0, 'usd', '{now}')"
        )
        conn.exec_driver_sql(
            "INSERT INTO usage_event (user_id, metric, quantity, occurred_at, recorded_at, "
            f"idempotency_key) VALUES (1, 'tokens', 5, '{now}', '{now}', 'k_{stripe_id}')"
        )


def test_0009_adds_subscription_cancel_at_and_back(empty_database_url):
    """Upgrade keeps the subscriptions (cancel_at NULL until their next event) and a stored
    date reads back as aware UTC; a database at 0008 is told to upgrade to the head;
    downgrade drops the column and keeps the rows."""
    from billing_app.models import Subscription

    url = empty_database_url
    alembic(url, "upgrade", "0008")
    eng = db.create_db_engine(url)

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(eng).get_columns("subscription")}

    try:
        _a_subscription(eng, "sub_m")
        assert "cancel_at" not in columns()
        assert f"this code needs {db.schema_head()}" in (db.schema_problem(eng) or "")
        eng.dispose()
        alembic(url, "upgrade", "head")
        assert db.schema_problem(eng) is None
        at = datetime(2026, 12, 10, 8, tzinfo=UTC)
        with Session(eng) as s:
            sub = s.exec(select(Subscription)).one()
            assert (sub.stripe_subscription_id, sub.cancel_at) == ("sub_m", None)
            sub.cancel_at = at
            s.add(sub)
            s.commit()
            s.expire_all()
            assert s.exec(select(Subscription.cancel_at)).one() == at
        eng.dispose()
        alembic(url, "downgrade", "0008")
        assert "cancel_at" not in columns()
        with eng.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT stripe_subscription_id FROM subscription"
            ).all() == [("sub_m",)]
    finally:
        eng.dispose()


def test_json_columns_round_trip_through_the_engines_encoder(session):
    """JSON columns are encoded by pydantic-core (db.json_text), not json.dumps: what
    goes in comes back equal, non-ASCII, nesting and large integers included."""
    from billing_app.models import StripeEvent

    assert session.get_bind().dialect._json_serializer is db.json_text
    payload = {
        "id": "evt_json",
        "note": 'é ü 中 \u2028 "quoted" \\ /',
        "nested": {"items": [1, 2.5, None, True, {"deep": ["x"]}], "empty": {}},
        "big": 2**62,
    }
    session.add(StripeEvent(stripe_event_id="evt_json", type="test.json", payload=payload))
    session.commit()
    session.expunge_all()
    stored = session.exec(select(StripeEvent).where(StripeEvent.stripe_event_id == "evt_json"))
    assert stored.one().payload == payload


def test_the_write_pool_keeps_the_connections_a_burst_opened(_migrated):
    """Up to 2 x DB_POOL_SIZE connections, kept after a burst: with DB_POOL_SIZE kept
    plus as many overflow, every connection past the tenth was closed on its return and
    a new one opened for the next request (~20 PostgreSQL sessions a second under 16
    webhook deliveries at once)."""
    engine = db.create_db_engine(_migrated, pool_size=2)
    try:
        burst = [engine.connect() for _ in range(4)]  # 2 x pool_size at once
        backends = {id(c.connection.dbapi_connection) for c in burst}
        for conn in burst:
            conn.close()
        assert engine.pool.checkedin() == 4  # none closed on its way back
        again = [engine.connect() for _ in range(4)]
        assert {id(c.connection.dbapi_connection) for c in again} == backends
        for conn in again:
            conn.close()
    finally:
        engine.dispose()


def test_sqlite_gets_wal_and_immediate_transactions(tmp_path):
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        checkpoint_at = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert checkpoint_at == db.SQLITE_WAL_AUTOCHECKPOINT == 10_000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STRIPE_SECRET_KEY": "pk_live_oops"}, "STRIPE_SECRET_KEY must start with sk_ or rk_"),
        (
            {"STRIPE_SECRET_KEY": "sk_test_x"},
            "STRIPE_WEBHOOK_SECRET is required when STRIPE_SECRET_KEY is set",
        ),
        (
            {"STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "whsec_1",
             "STRIPE_PRICE_BASIC": "price_b", "STRIPE_PRICE_PRO": "price_p"},
            "STRIPE_PRICE_ENTERPRISE is required when STRIPE_SECRET_KEY is set",
        ),
        ({"STRIPE_PRICE_PRO": "prod_123"}, "STRIPE_PRICE_PRO must be a Stripe price id"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL must start with sqlite:// or postgresql://"),
        ({"PAST_DUE_GRACE_DAYS": "soon"}, "PAST_DUE_GRACE_DAYS"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_variable(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    text = str(exc.value)
    assert message in text
    assert "\n" not in text


def test_no_keys_means_the_sandbox(monkeypatch):
    s = load_settings()
    assert s.uses_stripe_sandbox
    assert s.stripe_price_pro == "price_sandbox_pro"
    assert s.stripe_api_base == "http://127.0.0.1:12111"


def test_real_keys_are_accepted(monkeypatch):
    env = {
        "STRIPE_SECRET_KEY": "sk_live_abc",
        "STRIPE_WEBHOOK_SECRET": "whsec_abc",
        "STRIPE_PRICE_BASIC": "price_1",
        "STRIPE_PRICE_PRO": "price_2",
        "STRIPE_PRICE_ENTERPRISE": "price_3",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert not s.uses_stripe_sandbox and s.stripe_api_base is None


def test_cli_prints_one_line_for_a_bad_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("STRIPE_SECRET_KEY", "oops")
    proc = subprocess.run(
        [sys.executable, "-m", "billing_app.cli", "usage", "summary", "--user", "1"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: configuration error: STRIPE_SECRET_KEY must start with sk_ or rk_ "
        "(a Stripe secret or restricted key)"
    )


def test_cli_end_to_end(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env_run = {"DATABASE_URL": url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        import os

        return subprocess.run(
            [sys.executable, "-m", "billing_app.cli", *args],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, **env_run},
            timeout=120,
        )

    assert cli("db", "upgrade").returncode == 0
    created = cli("user", "create", "--email", "ops@example.com", "--admin")
    assert created.returncode == 0 and '"role": "admin"' in created.stdout
    assert cli("usage", "record", "--user", "ops@example.com", "--metric", "tokens",
               "--quantity", "250", "--key", "k1").returncode == 0  # fmt: skip
    again = cli("usage", "record", "--user", "1", "--metric", "tokens", "--quantity", "250",
                "--key", "k1")  # fmt: skip
    assert '"duplicate": true' in again.stdout
    summary = cli("usage", "summary", "--user", "ops@example.com")
    assert '"used": 250' in summary.stdout
    dup = cli("user", "create", "--email", "OPS@example.com")
    assert dup.returncode == 2 and "already exists" in dup.stderr


def test_rows_written_on_the_sqlite_drivers_cursor_match_sqlalchemys(tmp_path):
    """db.driver_rows converts parameters itself on SQLite (db.sqlite_params): the stored
    text must be what SQLAlchemy stores, or range comparisons and equality on timestamps
    go wrong. One row each way, compared as raw text (any database leg)."""
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from billing_app.models import StripeEvent

    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    table = StripeEvent.__table__
    table.create(engine)
    at = datetime(2026, 3, 1, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    payload = {"é": [1, {"x": None}], "big": 2**62}
    row = {"type": "t", "created": at, "received_at": at.replace(microsecond=0),
           "processed_at": None, "payload": payload, "attempts": 0, "error": None}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(table), {**row, "stripe_event_id": "evt_orm"})
        db.driver_rows(conn, sa.insert(table), {**row, "stripe_event_id": "evt_driver"})
        raw = conn.exec_driver_sql(
            "SELECT created, received_at, payload FROM stripe_event ORDER BY stripe_event_id"
        ).all()
    engine.dispose()
    assert raw[0] == raw[1]
    # naive UTC with microseconds, as UTCDateTime stores it
    assert raw[0][:2] == ("2026-03-01 00:30:00.000005", "2026-03-01 00:30:00.000000")


def test_many_rows_on_the_sqlite_drivers_cursor_match_sqlalchemys(tmp_path):
    """An executemany's rows are converted column by column, a shared timestamp once
    (db.sqlite_rows, and db.sqlite_columns as tuples): the same text as SQLAlchemy
    stores, row for row, with None, objects and lists, and timestamps of other zones
    mixed in a column."""
    from datetime import UTC, datetime, timedelta, timezone

    import sqlalchemy as sa

    from billing_app.models import StripeEvent

    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    table = StripeEvent.__table__
    table.create(engine)
    at = datetime(2026, 3, 1, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    rows = [
        {
            "type": "t",
            "created": None if i % 4 == 0 else at + timedelta(seconds=i % 2),
            "received_at": (at + timedelta(hours=i)).astimezone(UTC),
            "processed_at": None,
            "payload": {"i": [i, {"x": None}]} if i % 3 else [i],
            "attempts": i,
            "error": None,
        }  # fmt: skip
        for i in range(12)
    ]
    assert db.sqlite_rows(rows) == [db.sqlite_params(r) for r in rows]
    # and as positional rows from their columns (db.sqlite_columns, the batch's writes)
    columns = [[r[k] for r in rows] for k in rows[0]]
    assert db.sqlite_columns(columns) == [tuple(db.sqlite_params(r).values()) for r in rows]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(table), [{**r, "stripe_event_id": f"a{i:02}"} for i, r in enumerate(rows)]
        )
        db.driver_rows(
            conn,
            sa.insert(table),
            [{**r, "stripe_event_id": f"b{i:02}"} for i, r in enumerate(rows)],
        )
        raw = conn.exec_driver_sql(
            "SELECT created, received_at, processed_at, payload, attempts FROM stripe_event "
            "ORDER BY substr(stripe_event_id, 2), stripe_event_id"
        ).all()
    engine.dispose()
    assert raw[0::2] == raw[1::2]
    assert raw[0][0] is None and raw[2][:2] == (
        "2026-03-01 00:30:01.000005",
        "2026-03-01 01:30:00.000005",
    )


@pytest.mark.parametrize(
    ("before", "revision", "table", "column", "value"),
    [
        ("0009", "0010", "subscription", "period_reset", None),
        ("0010", "0011", "subscription", "billing_cycle_anchor", None),
        ("0011", "0012", "invoice", "attempt_count", 0),
        ("0012", "0013", "invoice", "total", None),
        ("0012", "0013", "invoice", "ending_balance", None),
        ("0013", "0014", "usage_event", "canceled_at", None),
        ("0014", "0015", "user", "stripe_balance", None),
        ("0014", "0015", "user", "stripe_balance_at", None),
        ("0016", "0017", "invoice", "description", None),
    ],
)
def test_a_new_column_keeps_the_rows_both_ways(
    empty_database_url, before, revision, table, column, value
):
    """Existing rows stay, the new column `value` until their next event (0010: the plan's
    rule; 0011: the stepping guess; 0012: no failed attempts known; 0013: amounts read as
    before, paid else due; 0014: events stay counted; 0015: the invoices' credit shows until
    the customer's next event); downgrade drops the column and keeps the rows."""
    key = {"usage_event": "idempotency_key", "user": "email"}.get(table, f"stripe_{table}_id")
    url = empty_database_url
    alembic(url, "upgrade", before)
    eng = db.create_db_engine(url)

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(eng).get_columns(table)}

    try:
        _a_subscription(eng, "sub_r")
        stored = {"subscription": "sub_r", "usage_event": "k_sub_r", "user": "u@example.com"}
        stored = stored.get(table, "in_sub_r")
        eng.dispose()
        alembic(url, "upgrade", revision)
        assert column in columns()
        with eng.connect() as conn:
            assert conn.exec_driver_sql(f'SELECT {key}, {column} FROM "{table}"').all() == [
                (stored, value)
            ]
        eng.dispose()
        alembic(url, "downgrade", before)
        assert column not in columns()
        with eng.connect() as conn:
            assert conn.exec_driver_sql(f'SELECT {key} FROM "{table}"').all() == [(stored,)]
    finally:
        eng.dispose()


def test_0016_adds_and_drops_the_partial_index_on_admin_quota_rows(empty_database_url):
    """The users list's "Quota override" filter reads only the admin rows' index."""
    url = empty_database_url

    def indexes() -> dict[str, list[str]]:
        eng = db.create_db_engine(url)
        try:
            return {ix["name"]: ix["column_names"] for ix in sa.inspect(eng).get_indexes("quota")}
        finally:
            eng.dispose()

    alembic(url, "upgrade", "0016")
    assert indexes()["ix_quota_admin_user_id"] == ["user_id"]
    alembic(url, "downgrade", "0015")
    assert "ix_quota_admin_user_id" not in indexes()


def test_0018_adds_and_drops_the_signup_attempts(empty_database_url):
    url = empty_database_url

    def tables() -> set[str]:
        eng = db.create_db_engine(url)
        try:
            return set(sa.inspect(eng).get_table_names())
        finally:
            eng.dispose()

    alembic(url, "upgrade", "0018")
    assert "signup_attempt" in tables()
    alembic(url, "downgrade", "0017")
    assert "signup_attempt" not in tables() and "login_attempt" in tables()


def test_the_head_is_this_codes_schema(empty_database_url):
    alembic(empty_database_url, "upgrade", "head")
    eng = db.create_db_engine(empty_database_url)
    try:
        assert db.schema_head() == "0018" and db.schema_problem(eng) is None
    finally:
        eng.dispose()
