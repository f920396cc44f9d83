"""`make bench`: every benchmark against a bare baseline measured in the same run.

For each database (SQLite, then PostgreSQL when it answers) in a fresh scratch database:
1. the baseline server (bench/baseline.py) under the same loads;
2. the app as production runs it (bench/servers.py) under each scenario;
3. the database is checked after the loads: events == acknowledged,
   counter == sum(events) == sum(days), no overshoot, webhooks exactly once.
Prints a table and writes bench/results.md (figures, ratios to the baseline, targets).

Sizes scale with environment variables (defaults are the issue's):
BENCH_DURATION (s per load, 6), BENCH_EVENTS (10_000_000), BENCH_USERS (100_000),
BENCH_DBS ("sqlite,postgresql"), BENCH_WORKERS (granian workers; default what the README's
commands start),
BENCH_SKIP_BIG=1 (only the ingestion rows: no 10 M events, admin page or webhooks),
BENCH_ALT_PG_WORKERS (default: the number of cores; empty to skip): a second PostgreSQL
pass, ingestion rows only, with that many workers for baseline and app alike (one per
core, as with PostgreSQL on a host of its own; bench/README.md, finding 33),
BENCH_OUT (where the table goes; default bench/results.md).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen, seed, servers
from bench.loadgen import Spec

DURATION = float(os.environ.get("BENCH_DURATION", "6"))
N_EVENTS = int(os.environ.get("BENCH_EVENTS", "10000000"))
N_USERS = int(os.environ.get("BENCH_USERS", "100000"))
DBS = os.environ.get("BENCH_DBS", "sqlite,postgresql").split(",")
ALT_PG_WORKERS = os.environ.get("BENCH_ALT_PG_WORKERS", str(os.cpu_count() or 1))
OUT = Path(os.environ.get("BENCH_OUT") or Path(__file__).parent / "results.md")
MINIMAL = {"Prefer": "return=minimal"}  # RFC 7240: the batch answers its counts only


@dataclass
class Row:
    db: str
    name: str
    figure: str  # e.g. "3,120 events/s"
    value: float
    baseline: float | None
    target: str
    met: bool | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> str:
        if not self.baseline:
            return "-"
        return f"{self.value / self.baseline:.2f}"


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _load(srv: servers.Server, **kw: Any) -> dict[str, Any]:
    kw.setdefault("duration", DURATION)
    kw.setdefault("warmup", 1.0)
    kw.setdefault("tag", uuid.uuid4().hex[:8])
    cpu = srv.cpu_seconds()
    db_cpu = servers.database_cpu_seconds(srv.database_url)
    res = loadgen.run(Spec(port=srv.port, **kw))
    # Server CPU per 2xx answer, warm-up included on both sides of the division; the
    # database's too when it runs here (PostgreSQL; SQLite's is the server's own).
    answers = max(res["ok_total"], 1)
    res["cpu_ms"] = round((srv.cpu_seconds() - cpu) * 1000 / answers, 3)
    if db_cpu is not None:
        db_now = servers.database_cpu_seconds(srv.database_url) or 0.0
        res["db_cpu_ms"] = round((db_now - db_cpu) * 1000 / answers, 3)
    log(f"  {kw.get('method', 'POST')} {kw['path']}: {json.dumps(res)}")
    return res


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def workers_for(kind: str) -> int:
    """What the README's commands start: `make run` (SQLite, no Redis) runs 1 worker; the
    production command (PostgreSQL + Redis) one per core, leaving PostgreSQL a core when
    it runs on the same host, as it does here."""
    if os.environ.get("BENCH_WORKERS"):
        return int(os.environ["BENCH_WORKERS"])
    if kind == "sqlite":
        return 1
    return int(os.environ.get("GRANIAN_WORKERS") or max(1, (os.cpu_count() or 1) - 1))


def bench_db(kind: str) -> list[Row]:
    rows: list[Row] = []
    os.environ["BENCH_WORKERS_EFFECTIVE"] = str(workers_for(kind))
    with servers.scratch_database(kind) as url:
        eng = seed.engine_for(url)
        log(f"{kind}: seeding users")
        ingest_users = seed.seed_users(eng, 1000, plan="pro", prefix="ingest")
        hot = seed.seed_users(eng, 1, plan="pro", prefix="hot")[0]
        seed.set_limit(eng, hot, "api_calls", 10**12)  # throughput phase: never reached
        checkers = seed.seed_users(eng, 100, plan="pro", prefix="check")
        admin = seed.seed_users(eng, 1, plan="free", prefix="admin", role="admin")[0]
        skey = seed.service_key(url)
        auth = {"Authorization": f"Bearer {skey}"}
        acked = 0  # events the app acknowledged (2xx)

        # ---------------------------------------------------------- baseline
        log(f"{kind}: baseline server")
        with servers.baseline_server(url, workers=workers_for(kind)) as srv:
            b_single = _load(
                srv, path="/usage", body="usage", params={"users": ingest_users}, connections=32
            )
            b_batch = _load(
                srv,
                path="/usage/batch",
                body="batch",
                params={"users": ingest_users, "batch_size": 1000},
                connections=4,
            )
            b_hot = _load(srv, path="/usage", body="usage", params={"users": [hot]}, connections=64)
            b_check = _load(
                srv,
                path="/check",
                body="check",
                params={"users": checkers},
                connections=32,
                rate=1000,
            )
        with eng.begin() as conn:  # the baseline's rows would confuse the checks below
            conn.exec_driver_sql("DELETE FROM usage_event")

        # ---------------------------------------------------------- the app
        log(f"{kind}: app server")
        with servers.app_server(url, workers=workers_for(kind)) as srv:
            r = _load(
                srv,
                path="/api/billing/usage",
                body="usage",
                headers=auth,
                params={"users": ingest_users},
                connections=32,
            )
            acked += r["ok_total"]
            ok = r["ok_rps"] >= 0.4 * b_single["ok_rps"] and (r["p99_ms"] or 1e9) < 20
            if kind == "postgresql":
                ok = ok and r["ok_rps"] >= 3000
            rows.append(
                Row(
                    kind,
                    "POST /usage (32 conns)",
                    f"{_fmt(r['ok_rps'])} ev/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms",
                    r["ok_rps"],
                    b_single["ok_rps"],
                    ">=3,000/s (PG), >=40% of baseline, p99<20 ms",
                    ok,
                    f"baseline {_fmt(b_single['ok_rps'])}/s p99 {b_single['p99_ms']} ms; "
                    f"non-2xx {_non2xx(r)}; {_cpu(r, b_single)}",
                )
            )

            # The default answer (a result per event), then the counts only.
            for label, prefer in (("", {}), (", Prefer: return=minimal", MINIMAL)):
                r = _load(
                    srv,
                    path="/api/billing/usage/batch",
                    body="batch",
                    headers={**auth, **prefer},
                    params={"users": ingest_users, "batch_size": 1000},
                    connections=4,
                )
                acked += r["ok_total"] * 1000
                evs = r["ok_rps"] * 1000
                rows.append(
                    Row(
                        kind,
                        f"POST /usage/batch{label} (1,000/req, 4 conns)",
                        f"{_fmt(evs)} ev/s, p99 {r['p99_ms']} ms/req",
                        evs,
                        b_batch["ok_rps"] * 1000,
                        ">=50,000 ev/s",
                        evs >= 50_000,
                        f"baseline {_fmt(b_batch['ok_rps'] * 1000)} ev/s; non-2xx "
                        f"{_non2xx(r)}; {_cpu(r, b_batch, 'batch')}",
                    )
                )

            r = _load(
                srv,
                path="/api/billing/usage/consume",
                body="usage",
                headers=auth,
                params={"users": [hot], "metric": "api_calls"},
                connections=64,
            )
            acked += r["ok_total"]
            thr = r["ok_rps"]
            p99 = r["p99_ms"] or 1e9
            # Overshoot phase: exactly LIMIT_ROOM more may pass, from 64 clients at once.
            room = 2000
            used_now = _counter(eng, hot, "api_calls")
            seed.set_limit(eng, hot, "api_calls", used_now + room)
            o = _load(
                srv,
                path="/api/billing/usage/consume",
                body="usage",
                headers=auth,
                params={"users": [hot], "metric": "api_calls"},
                connections=64,
                requests=room * 3,
                duration=120,
                warmup=0,
            )
            acked += o["ok_total"]
            used_after = _counter(eng, hot, "api_calls")
            overshoot = used_after - (used_now + room)
            granted_extra = o["ok"] - room
            met = thr >= (2000 if kind == "postgresql" else 0) and p99 < 25 and overshoot == 0
            met = met and granted_extra == 0
            rows.append(
                Row(
                    kind,
                    "POST /usage/consume, 1 hot row (64 conns)",
                    f"{_fmt(thr)} deductions/s, p99 {r['p99_ms']} ms; overshoot {overshoot}",
                    thr,
                    b_hot["ok_rps"],
                    ">=2,000/s (PG), p99<25 ms, overshoot 0",
                    met,
                    f"baseline (hot-user insert) {_fmt(b_hot['ok_rps'])}/s; {_cpu(r, b_hot)}; "
                    "limit phase: "
                    f"{o['ok']} of {o['sent']} granted for room {room}, "
                    f"{o['statuses'].get('403', 0)} x 403, non-2xx/403 "
                    f"{_non2xx(o, ('403',))}",
                )
            )

            # Autovacuum's part (off on this machine): without it, the server's
            # connections keep the check's generic plan made while usage_counter was
            # empty, a seq scan that the write phases above grew to ~1,000 pages
            # (finding 24).
            seed.vacuum_analyze(eng)
            r = _load(
                srv,
                path="/api/billing/quota/check",
                body="check",
                headers=auth,
                params={"users": checkers},
                connections=32,
                rate=1000,
            )
            rows.append(
                Row(
                    kind,
                    "POST /quota/check at 1,000 req/s",
                    f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({_fmt(r['ok_rps'])}/s)",
                    r["p99_ms"] or 0,
                    b_check["p99_ms"],
                    "p99 < 5 ms",
                    (r["p99_ms"] or 1e9) < 5 and r["ok"] == r["sent"],
                    f"baseline (one SELECT) p50 {b_check['p50_ms']} p99 "
                    f"{b_check['p99_ms']} ms; ratio is p99/baseline p99; {_cpu(r, b_check)}",
                )
            )

            # Consistency after the writes, before the big seeds.
            t = seed.totals(eng)
            rows.append(
                Row(
                    kind,
                    "ingestion consistency",
                    f"events {t['events']:,}, acked "
                    f"{acked:,}, counter {t['counter_sum']:,}, sum {t['event_sum']:,}, "
                    f"days {t['daily_sum']:,}",
                    0,
                    None,
                    "events == acked, counter == sum == days",
                    t["events"] == acked and t["counter_sum"] == t["event_sum"] == t["daily_sum"],
                )
            )

        if os.environ.get("BENCH_SKIP_BIG") == "1":  # quick runs: ingestion rows only
            eng.dispose()
            return rows
        log(f"{kind}: seeding {N_EVENTS:,} events and {N_USERS:,} users")
        big = seed.seed_users(eng, 1, plan="enterprise", prefix="big")[0]
        secs = seed.seed_events(eng, big, N_EVENTS)
        log(f"  events seeded in {secs:.1f}s ({N_EVENTS / secs:,.0f}/s)")
        t0 = time.perf_counter()
        seed.seed_users(eng, N_USERS, plan="basic", prefix="many")
        seed.vacuum_analyze(eng)
        log(f"  users seeded and vacuumed in {time.perf_counter() - t0:.1f}s")
        big_key = seed.user_key(url, big)
        admin_key = seed.user_key(url, admin, name="bench-admin")
        t = seed.totals(eng, [big])
        log(f"  big user: {t}")

        with servers.app_server(url, workers=workers_for(kind)) as srv:
            ok = t["counter_sum"] == t["event_sum"] == t["daily_sum"]
            rows.append(
                _get_row(
                    kind, srv, "/api/billing/usage", big_key, 10,
                    f"GET /usage, user with {N_EVENTS:,} events (1 conn)",
                    f"seeded counter {t['counter_sum']:,} == sum {t['event_sum']:,} "
                    f"== days {t['daily_sum']:,}: {ok}",
                )
            )  # fmt: skip
            # The dashboard's read: the meters and the period's daily chart (finding 48).
            rows.append(
                _get_row(
                    kind, srv, "/api/billing/usage?history=daily", big_key, 10,
                    f"GET /usage?history=daily, user with {N_EVENTS:,} events (1 conn)",
                )
            )  # fmt: skip
            for label, query in (
                ("page 1", ""),
                ("page 1000", "&page=1000"),
                ("q=many", "&q=many"),
                ("sort=-usage_tokens", "&sort=-usage_tokens"),
            ):
                path = f"/api/billing/admin/users?per_page=50{query}"
                name = f"GET /admin/users {label}, {N_USERS:,} users (1 conn)"
                rows.append(_get_row(kind, srv, path, admin_key, 100, name))
            rows.extend(bench_webhooks(kind, srv, eng, b_single["ok_rps"]))
        eng.dispose()
    return rows


def bench_webhooks(kind: str, srv: servers.Server, eng: Any, baseline: float) -> list[Row]:
    """Signed subscription events for real customers, 1 in 5 delivered twice."""
    from bench.webhooks import build_deliveries, webhook_state

    payloads, distinct = build_deliveries(
        eng, n_events=int(os.environ.get("BENCH_WEBHOOKS", "3000"))
    )
    r = _load(
        srv,
        path="/api/billing/webhook",
        body="webhook",
        params={"payloads": payloads},
        connections=16,
        requests=len(payloads),
        duration=600,
        warmup=0,
    )
    st = webhook_state(eng)
    evs = r["ok_rps"]
    exactly_once = st["stored"] == distinct and st["processed"] == distinct and st["errors"] == 0
    return [
        Row(
            kind,
            "POST /webhook (16 conns, 20% duplicates)",
            f"{_fmt(evs)} deliveries/s; stored {st['stored']:,} of {distinct:,} distinct, "
            f"processed {st['processed']:,}",
            evs,
            baseline,
            ">=500 ev/s, exactly once",
            evs >= 500 and exactly_once and r["ok"] == r["sent"],
            f"statuses {r['statuses']} errors {r['errors']}; server CPU {r['cpu_ms']} ms/delivery"
            + (f"; database CPU {r['db_cpu_ms']} ms/delivery" if "db_cpu_ms" in r else ""),
        )
    ]


def _get_row(
    kind: str,
    srv: servers.Server,
    path: str,
    key: str,
    p50_target_ms: float,
    name: str,
    detail: str | None = None,
) -> Row:
    """One connection's GET latency against a p50 target."""
    r = _load(srv, path=path, method="GET", headers={"Authorization": f"Bearer {key}"},
              connections=1)  # fmt: skip
    return Row(
        kind,
        name,
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({_fmt(r['ok_rps'])}/s)",
        r["p50_ms"] or 0,
        None,
        f"p50 < {p50_target_ms:g} ms",
        (r["p50_ms"] or 1e9) < p50_target_ms and r["ok"] == r["sent"],
        detail if detail is not None else f"statuses {r['statuses']}",
    )


def _cpu(r: dict[str, Any], base: dict[str, Any], per: str = "req") -> str:
    """Server CPU per answer against the baseline's (steadier than throughput here), and
    the database's when measured: where a row's time goes, app against baseline."""
    text = f"server CPU {r['cpu_ms']} ms/{per} (baseline {base['cpu_ms']})"
    if "db_cpu_ms" in r and "db_cpu_ms" in base:
        text += f"; database CPU {r['db_cpu_ms']} ms/{per} (baseline {base['db_cpu_ms']})"
    return text


def _non2xx(r: dict[str, Any], allowed: tuple[str, ...] = ()) -> int:
    bad = sum(v for k, v in r["statuses"].items() if not k.startswith("2") and k not in allowed)
    return bad + sum(r["errors"].values())


def _counter(eng: Any, user_id: int, metric: str) -> int:
    import sqlalchemy as sa

    with eng.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(used), 0) FROM usage_counter "
                    "WHERE user_id = :u AND metric = :m"
                ),
                {"u": user_id, "m": metric},
            ).scalar_one()
        )


def render(rows: list[Row], started: datetime, secs: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {secs:.0f} s, on {os.cpu_count()} cores "
        f"({platform.machine()}), {DURATION:g} s per load, granian workers: "
        f"sqlite {workers_for('sqlite')}, postgresql {workers_for('postgresql')} (baseline "
        "and app alike; rows marked with a worker count: the PostgreSQL ingestion rows "
        "again with that many). Ratio = figure / bare baseline in the same "
        "run (for latency rows: p99 / baseline p99).",
        "",
        "| db | benchmark | figure | ratio | target | met | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        lines.append(
            f"| {r.db} | {r.name} | {r.figure} | {r.ratio} | {r.target} | {met} | {r.detail} |"
        )
    return "\n".join(lines) + "\n"


def _alt_pass(workers: int) -> list[Row]:
    """The PostgreSQL ingestion rows again with another worker count (baseline too)."""
    saved = {k: os.environ.get(k) for k in ("BENCH_WORKERS", "BENCH_SKIP_BIG")}
    os.environ.update(BENCH_WORKERS=str(workers), BENCH_SKIP_BIG="1")
    try:
        alt = bench_db("postgresql")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for r in alt:
        r.db = f"postgresql, {workers} worker{'s' if workers > 1 else ''}"
    return alt


def main() -> int:
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    rows: list[Row] = []
    for kind in DBS:
        if kind == "postgresql" and not servers.pg_available():
            log("PostgreSQL not reachable: skipping its leg")
            continue
        rows.extend(bench_db(kind))
        OUT.write_text(render(rows, started, time.perf_counter() - t0))
        if kind == "postgresql" and ALT_PG_WORKERS:
            rows.extend(_alt_pass(int(ALT_PG_WORKERS)))
            OUT.write_text(render(rows, started, time.perf_counter() - t0))
    text = render(rows, started, time.perf_counter() - t0)
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
