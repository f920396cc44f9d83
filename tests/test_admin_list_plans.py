"""The admin users list's and export's plans at scale (bench/README.md finding 50): the
"Quota override" filter reads the partial index on admin quota rows, also in a prepared
statement's generic plan, and a filtered export is planned for all its rows, never a
rescan of the current subscriptions per user; the filtered file is the unfiltered one's
rows, byte for byte. Run on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg
from sqlmodel import Session

from billing_app.services import admin, exports, quotas
from tests.factories import make_subscription, make_user

OVERRIDE = admin.UserFilters(usage="override")


def _plan(session: Session, stmt: sa.Select) -> str:
    """The plan of `stmt` as the app sends it. PostgreSQL: prepared with its bound
    parameters and planned generically (what psycopg's prepared statements get after a
    few runs), sequential scans priced out so a usable index is taken whatever the
    table's size. SQLite: its query plan with the parameters unknown at prepare time."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        compiled = stmt.compile(dialect=conn.dialect)
        raw = conn.connection.driver_connection
        params = compiled.construct_params()
        args = [params[k] for k in compiled.positiontup or ()]
        rows = raw.execute(f"EXPLAIN QUERY PLAN {compiled}", args).fetchall()
        return "\n".join(r[-1] for r in rows)
    compiled = stmt.compile(dialect=psycopg.dialect(paramstyle="numeric_dollar"))
    params = compiled.construct_params()
    args = [params[k] for k in compiled.positiontup or ()]
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql(f"PREPARE override_q AS {compiled}")
    try:  # EXECUTE takes its arguments as SQL literals, not protocol parameters
        literals = ", ".join(
            sa.literal(a).compile(conn, compile_kwargs={"literal_binds": True}).string for a in args
        )
        call = f"EXECUTE override_q({literals})" if args else "EXECUTE override_q"
        rows = conn.exec_driver_sql("EXPLAIN " + call).all()
    finally:
        conn.exec_driver_sql("DEALLOCATE override_q")
    return "\n".join(r[0] for r in rows)


@pytest.fixture
def overridden(session: Session, frozen_clock) -> list[int]:
    ids = [make_user(session, email=f"o{i}@h87.test").id for i in range(6)]
    for uid in ids[::2]:
        quotas.set_override(session, uid, "tokens", 0, "pilot")
    return ids[::2]


def test_the_override_filter_reads_the_partial_index(session, overridden):
    now = datetime.now(UTC)
    total, rows = admin._users_query(OVERRIDE, now)
    for stmt in (total, rows.limit(50)):
        assert "ix_quota_admin_user_id" in _plan(session, stmt)
    session.rollback()
    page = admin.list_users(session, OVERRIDE)
    assert sorted(u.id for u in page.items) == overridden and page.total == 3


def _export(session: Session, filters: admin.UserFilters) -> str:
    text = "".join(exports.users_csv(session, filters, chunk=4))
    session.rollback()
    return text


@pytest.mark.parametrize(
    "filters",
    [
        {"plan": "pro"},
        {"plan": "free", "sort": "-created"},
        {"status": "active", "sort": "quota"},
        {"status": "none", "sort": "-usage_tokens"},
        {"status": "past_due", "plan": "pro"},
        {"usage": "override", "status": "trialing"},
    ],
    ids=repr,
)
def test_a_filtered_export_is_the_unfiltered_exports_rows(session, frozen_clock, filters):
    """Byte for byte: the header, then the lines of the unfiltered export (same sort) of
    the users the list's filter selects, in its order."""
    statuses = ("active", "canceled", "past_due", "trialing", "incomplete")
    for i in range(14):
        u = make_user(session, email=f"e{i:02d}@h87.test")
        if i % 3:
            status = statuses[i % 5]
            fields = {"past_due_since": frozen_clock.now} if status == "past_due" else {}
            make_subscription(session, u.id, plan=("pro", "basic")[i % 2], status=status, **fields)
        if i % 4 == 0:
            quotas.set_override(session, u.id, "api_calls", 7, "test")
    f = admin.UserFilters(**filters)
    everyone = _export(session, admin.UserFilters(sort=f.sort))
    header, *lines = everyone.split("\r\n")[:-1]
    by_id = {line.split(",", 1)[0]: line for line in lines}
    picked = [str(u.id) for u in admin.list_users(session, f, per_page=200).items]
    session.rollback()
    assert picked, "the filter selects someone"
    assert _export(session, f) == "\r\n".join([header, *(by_id[i] for i in picked)]) + "\r\n"


def test_a_filtered_export_on_postgresql_is_planned_for_every_row(
    session, engine, is_postgres, frozen_clock
):
    """A cursor is planned for its first 10 % of rows; joined to the current
    subscriptions as freshly loaded (no statistics yet, as after a bulk import with
    autovacuum behind), that plan rescanned them for every user (minutes at 100,000)."""
    if not is_postgres:
        pytest.skip("cursor planning is PostgreSQL's (PostgreSQL leg)")
    for i in range(200):
        u = make_user(session, email=f"c{i:03d}@h87.test")
        make_subscription(session, u.id, plan="pro", status="active")
    seen: list[str] = []

    def explain_the_cursor(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT") and "coalesce(" in statement and not seen:
            cur = conn.connection.driver_connection.cursor()
            plan = cur.execute("EXPLAIN DECLARE x NO SCROLL CURSOR FOR " + statement, parameters)
            seen.append("\n".join(r[0] for r in plan.fetchall()))

    sa.event.listen(engine, "before_cursor_execute", explain_the_cursor)
    try:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        rows = list(exports.user_rows(session, admin.UserFilters(plan="pro")))
    finally:
        sa.event.remove(engine, "before_cursor_execute", explain_the_cursor)
        session.rollback()
    assert len(rows) == 200
    assert seen and "Join Filter: (cur.user_id" not in seen[0], seen
