"""bench/seed.py's stand-in for autovacuum reaches every table the benchmarks seed: the
admin list's benchmark seeds a subscription for half its users, and the list joins them."""

from __future__ import annotations

import sqlalchemy as sa

from bench import seed
from tests.factories import make_subscription, make_user


def _stats(engine: sa.Engine) -> tuple[int, int]:
    """(times vacuumed, times analyzed) of the subscription table; SQLite: (0, its rows in
    the planner statistics)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            row = conn.exec_driver_sql(
                "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables "
                "WHERE relname = 'subscription'"
            ).one()
            return row[0], row[1]
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).scalar()
        if not found:
            return 0, 0
        return 0, conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'subscription'"
        ).scalar_one()


def test_vacuum_analyze_includes_the_subscription_table(session, engine, is_postgres):
    for i in range(3):
        uid = make_user(session, email=f"h94-vac{i}@example.com").id
        make_subscription(session, uid, status="active")
    session.rollback()
    vacuumed, analyzed = _stats(engine)
    seed.vacuum_analyze(engine)
    after_vacuumed, after_analyzed = _stats(engine)
    if is_postgres:
        assert after_vacuumed > vacuumed and after_analyzed > analyzed
    else:  # a guard: SQLite's ANALYZE, without a table list, covers every table
        assert after_analyzed > 0
