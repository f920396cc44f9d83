"""The admin users list and its CSV export at 100,000 users, in-process (finding 50).

`python -m bench.admin_list [sqlite|postgresql] [--users N] [--url URL]`: a scratch
database (or `--url`, an empty migrated one), 100,000 users with their quota rows, 1 %
of them with an admin override, a subscription for half of them and this month's
counters for a third; then the "Quota override" filter's plan (EXPLAIN ANALYZE, and on
PostgreSQL a prepared statement's plan after 8 executions: its generic plan) and its
p50 for a page of 50 with its total, and the users export's time to last byte and peak
memory (tracemalloc, a separate run) without a filter and with each kind of filter.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from bench import seed, servers
from billing_app import db
from billing_app.metrics import METRICS
from billing_app.services import admin, exports
from billing_app.services.periods import calendar_month

EXPORTS = {
    "no filter": {},
    "plan=pro": {"plan": "pro"},
    "status=active": {"status": "active"},
    "usage=override": {"usage": "override"},
    "usage=near": {"usage": "near"},
}


def seed_all(eng: sa.Engine, n: int) -> None:
    ids = seed.seed_users(eng, n, plan="basic", prefix="list")
    now = datetime.now(UTC)
    month = calendar_month(now)
    ts = lambda dt: seed._ts(eng, dt)  # noqa: E731
    statuses = ("active", "active", "canceled", "past_due", "trialing")
    with eng.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE quota SET source = 'admin', \"limit\" = 0 "
                "WHERE user_id = :u AND metric = 'tokens'"
            ),
            [{"u": uid} for uid in ids[::100]],
        )
        conn.execute(
            sa.text(
                "INSERT INTO subscription (user_id, stripe_subscription_id, plan, status, "
                "cancel_at_period_end, current_period_end, past_due_since, created_at, "
                "updated_at) VALUES (:u, :sid, :plan, :st, false, :end, :pd, :c, :c)"
            ),
            [
                {
                    "u": uid,
                    "sid": f"sub_list_{uid}",
                    "plan": ("basic", "pro", "enterprise")[i % 3],
                    "st": statuses[i % 5],
                    "end": ts(now + timedelta(days=20)),
                    "pd": ts(now - timedelta(days=1)) if statuses[i % 5] == "past_due" else None,
                    "c": ts(now - timedelta(days=10)),
                }
                for i, uid in enumerate(ids[::2])
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO usage_counter (user_id, metric, period_start, period_end, used) "
                "VALUES (:u, :m, :s, :e, :q)"
            ),
            [
                {
                    "u": uid,
                    "m": m,
                    "s": ts(month.start),
                    "e": ts(month.end),
                    "q": (i * 37) % 120_000,
                }
                for i, uid in enumerate(ids[::3])
                for m in METRICS
            ],
        )
    seed.vacuum_analyze(eng)


def explain(session: Session, stmt: sa.Select) -> str:
    dialect = session.get_bind().dialect
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if dialect.name == "postgresql":
        prefix = "EXPLAIN (ANALYZE, TIMING OFF) "
    else:
        prefix = "EXPLAIN QUERY PLAN "
    rows = session.execute(sa.text(prefix + sql)).all()
    return "\n".join(str(r[-1]) for r in rows)


def generic_plan(session: Session, stmt: sa.Select) -> str:
    """EXPLAIN ANALYZE of the statement as the app sends it (bound parameters), prepared
    and run 8 times first: psycopg prepares a statement on its 6th execution, and the
    server switches to a generic plan from a prepared statement's 6th run when that
    costs no more; a generic plan cannot use a partial index through a parameter."""
    from sqlalchemy.dialects.postgresql import psycopg

    compiled = stmt.compile(dialect=psycopg.dialect(paramstyle="numeric_dollar"))
    params = compiled.construct_params()
    args = ", ".join(
        sa.literal(params[k])
        .compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        .string
        for k in compiled.positiontup or ()
    )
    conn = session.connection()
    conn.exec_driver_sql(f"PREPARE bench_q AS {compiled}")
    call = f"EXECUTE bench_q({args})" if args else "EXECUTE bench_q"
    for _ in range(8):
        conn.exec_driver_sql(call).all()
    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, TIMING OFF) " + call).all()
    kinds = conn.exec_driver_sql(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'bench_q'"
    ).one()
    conn.exec_driver_sql("DEALLOCATE bench_q")
    head = f"generic_plans={kinds[0]}, custom_plans={kinds[1]}"
    return head + "\n" + "\n".join(r[0] for r in plan)


def p50(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def export_once(url: str, filters: admin.UserFilters) -> tuple[float, int]:
    eng = db.create_db_engine(url)
    try:
        with Session(eng) as s:
            if eng.dialect.name == "postgresql":
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            t0 = time.perf_counter()
            size = sum(len(piece) for piece in exports.users_csv(s, filters))
            return (time.perf_counter() - t0) * 1000, size
    finally:
        eng.dispose()


def run(url: str, n: int, seeded: bool = False) -> None:
    eng = seed.engine_for(url)
    if not seeded:
        t0 = time.perf_counter()
        seed_all(eng, n)
        print(f"seeded {n:,} users in {time.perf_counter() - t0:.1f}s")
    app_eng = db.create_db_engine(url)
    f = admin.UserFilters(usage="override")
    with Session(app_eng) as s:
        total, rows = admin._users_query(f, datetime.now(UTC))
        print("-- override filter, count:\n" + explain(s, total))
        print("-- override filter, page of 50:\n" + explain(s, rows.limit(50)))
        if app_eng.dialect.name == "postgresql":
            print("-- " + generic_plan(s, total))
        s.rollback()
    with Session(app_eng) as s:
        ms = p50(lambda: admin.list_users(s, f, per_page=50), 30)
        page = admin.list_users(s, f, per_page=50)
        print(f"list_users(usage=override), page of 50 of {page.total:,}: p50 {ms:.1f} ms")
    app_eng.dispose()
    for label, kw in EXPORTS.items():
        filters = admin.UserFilters(**kw)
        times, size = [], 0
        for _ in range(3):
            ms, size = export_once(url, filters)
            times.append(ms)
        tracemalloc.start()
        export_once(url, filters)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"export {label}: {size:,} chars, last byte {statistics.median(times):,.0f} ms "
            f"(median of 3), peak {peak / 1e6:.1f} MB (tracemalloc)"
        )
    eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("sqlite", "postgresql"), nargs="?", default="postgresql")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--url", help="an empty migrated database to use instead of a scratch one")
    ap.add_argument("--seeded", action="store_true", help="--url is seeded already")
    ap.add_argument("--exports", default=",".join(EXPORTS), help="which exports to time")
    args = ap.parse_args()
    for label in set(EXPORTS) - set(args.exports.split(",")):
        del EXPORTS[label]
    if args.url:
        run(args.url, args.users, args.seeded)
        return
    with servers.scratch_database(args.kind) as url:
        run(url, args.users)


if __name__ == "__main__":
    main()
