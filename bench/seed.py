"""Fast seeding for the benchmarks: many users, 10 M events, with consistent counters.

Users and quotas go in with executemany; events with executemany on SQLite (one
transaction) and COPY on PostgreSQL. The counter row of the seeded period is written
as the exact sum of the seeded events, and its days' rows as theirs, so
`counter == sum(events) == sum(days)` holds afterwards.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billing_app.metrics import METRICS
from billing_app.plans import get_catalog
from billing_app.services.periods import calendar_month


def engine_for(url: str) -> Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _ts(engine: Engine, dt: datetime) -> Any:
    # SQLAlchemy stores SQLite datetimes as naive ISO text (UTCDateTime strips the zone).
    if engine.dialect.name == "sqlite":
        return dt.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return dt


def seed_users(
    engine: Engine, n: int, plan: str = "pro", prefix: str = "bench", role: str = "user"
) -> list[int]:
    """Insert `n` users with the plan's quota rows; returns their ids."""
    limits = get_catalog()[plan].limits
    now = datetime.now(UTC)
    ts = _ts(engine, now)
    tag = f"{prefix}{int(time.time() * 1000) % 10**9}"
    users = [
        {
            "email": f"{tag}-{i}@example.com",
            "display_name": f"{tag} {i}",
            "role": role,
            "created_at": ts,
        }
        for i in range(n)
    ]
    ids: list[int] = []
    with engine.begin() as conn:
        for chunk in range(0, n, 5000):
            part = users[chunk : chunk + 5000]
            conn.execute(
                sa.text(
                    'INSERT INTO "user" (email, display_name, role, created_at) '
                    "VALUES (:email, :display_name, :role, :created_at)"
                ),
                part,
            )
        rows = conn.execute(
            sa.text('SELECT id FROM "user" WHERE email LIKE :p ORDER BY id'), {"p": f"{tag}-%"}
        ).all()
        ids = [r[0] for r in rows]
        quotas = [
            {
                "user_id": uid,
                "metric": m,
                "limit": limits[m],
                "source": "plan",
                "plan_limit": limits[m],
                "updated_at": ts,
            }
            for uid in ids
            for m in METRICS
        ]
        for chunk in range(0, len(quotas), 15000):
            conn.execute(
                sa.text(
                    'INSERT INTO quota (user_id, metric, "limit", source, plan_limit, updated_at) '
                    "VALUES (:user_id, :metric, :limit, :source, :plan_limit, :updated_at)"
                ),
                quotas[chunk : chunk + 15000],
            )
    return ids


def vacuum_analyze(engine: Engine) -> None:
    """What autovacuum would have done to the seeded tables by now in production (this
    machine's PostgreSQL runs with autovacuum off): fresh planner statistics and a
    visibility map. Without them the planner expects 10 matches for a prefix shared by
    100,000 users and sorts them all."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(
                'VACUUM ANALYZE "user", quota, usage_counter, subscription, invoice'
            )
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def set_limit(engine: Engine, user_id: int, metric: str, limit: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE quota SET \"limit\" = :l, source = 'admin' "
                "WHERE user_id = :u AND metric = :m"
            ),
            {"l": limit, "u": user_id, "m": metric},
        )


def service_key(url: str, name: str = "bench") -> str:
    """A service API key created through the real service; returns the secret."""
    from sqlmodel import Session

    from billing_app.services import api_keys

    eng = engine_for(url)
    try:
        with Session(eng) as s:
            _dto, secret = api_keys.create_key(s, name=name, service_name=name)
    finally:
        eng.dispose()
    return secret


def user_key(
    url: str, user_id: int, name: str = "bench-user", scopes: list[str] | None = None
) -> str:
    from sqlmodel import Session

    from billing_app.services import api_keys

    eng = engine_for(url)
    try:
        with Session(eng) as s:
            _dto, secret = api_keys.create_key(s, name=name, user_id=user_id, scopes=scopes)
    finally:
        eng.dispose()
    return secret


def seed_events(engine: Engine, user_id: int, n: int, metric: str = "tokens") -> float:
    """`n` events of quantity 1 spread over the current month, plus their exact counter
    and days' rows."""
    period = calendar_month(datetime.now(UTC))
    now = datetime.now(UTC)
    span = max((now - period.start).total_seconds() - 60, 1.0)
    per_day: Counter[date] = Counter(
        (period.start + timedelta(seconds=span * i / n)).date() for i in range(n)
    )
    t0 = time.perf_counter()
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(
                "COPY usage_event (user_id, metric, quantity, occurred_at, recorded_at, "
                "idempotency_key) FROM STDIN"
            ) as copy:
                start = period.start
                rec = now.isoformat()
                for i in range(n):
                    occ = (start + timedelta(seconds=span * i / n)).isoformat()
                    copy.write(f"{user_id}\t{metric}\t1\t{occ}\t{rec}\tseed-{i}\n")
            raw.commit()
        finally:
            raw.close()
    else:
        raw = engine.raw_connection()
        try:
            c = raw.driver_connection
            c.isolation_level = None
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("BEGIN")
            rec = _ts(engine, now)
            start = period.start
            step = 100_000
            for base in range(0, n, step):
                c.executemany(
                    "INSERT INTO usage_event (user_id, metric, quantity, occurred_at, "
                    "recorded_at, idempotency_key) VALUES (?, ?, 1, ?, ?, ?)",
                    (
                        (
                            user_id,
                            metric,
                            _ts(engine, start + timedelta(seconds=span * i / n)),
                            rec,
                            f"seed-{i}",
                        )
                        for i in range(base, min(n, base + step))
                    ),
                )
            c.execute("COMMIT")
        finally:
            raw.close()
    add_counter(engine, user_id, metric, n)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO usage_daily (user_id, metric, period_start, day, quantity) "
                "VALUES (:u, :m, :s, :d, :q)"
            ),
            [
                {
                    "u": user_id,
                    "m": metric,
                    "s": _ts(engine, period.start),
                    "d": d.isoformat(),
                    "q": q,
                }
                for d, q in sorted(per_day.items())
            ],
        )
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE usage_event")
        else:
            conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - t0


def add_counter(engine: Engine, user_id: int, metric: str, amount: int) -> None:
    period = calendar_month(datetime.now(UTC))
    with engine.begin() as conn:
        updated = conn.execute(
            sa.text(
                "UPDATE usage_counter SET used = used + :a "
                "WHERE user_id = :u AND metric = :m AND period_start = :s"
            ),
            {"a": amount, "u": user_id, "m": metric, "s": _ts(engine, period.start)},
        ).rowcount
        if not updated:
            conn.execute(
                sa.text(
                    "INSERT INTO usage_counter (user_id, metric, period_start, period_end, used) "
                    "VALUES (:u, :m, :s, :e, :a)"
                ),
                {
                    "u": user_id,
                    "m": metric,
                    "s": _ts(engine, period.start),
                    "e": _ts(engine, period.end),
                    "a": amount,
                },
            )


def totals(engine: Engine, user_ids: list[int] | None = None) -> dict[str, int]:
    """Count and sum of the events not cancelled, counter sum and daily rows' sum
    (optionally for some users only)."""
    where = ""
    params: dict[str, Any] = {}
    if user_ids is not None:
        where = " WHERE user_id IN (" + ",".join(str(int(u)) for u in user_ids) + ")"
    with engine.connect() as conn:
        count, total = conn.execute(
            sa.text(
                "SELECT count(*), coalesce(sum(quantity), 0) FROM usage_event"
                + (f"{where} AND" if where else " WHERE")
                + " canceled_at IS NULL"
            ),
            params,
        ).one()
        counter = conn.execute(
            sa.text(f"SELECT coalesce(sum(used), 0) FROM usage_counter{where}"), params
        ).scalar_one()
        daily = conn.execute(  # the chart's sources: closed days and the counters' latest
            sa.text(
                f"SELECT (SELECT coalesce(sum(quantity), 0) FROM usage_daily{where})"
                f" + (SELECT coalesce(sum(day_used), 0) FROM usage_counter{where})"
            ),
            params,
        ).scalar_one()
    return {
        "events": int(count),
        "event_sum": int(total),
        "counter_sum": int(counter),
        "daily_sum": int(daily),
    }
