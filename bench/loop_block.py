"""Do the admin console's page events hold up the JSON API of the same worker?

The app as production runs it (bench/servers.py: granian, one worker, here with its
websockets on), a scratch database with `--users` users (bench/seed.py), and
`POST /api/billing/quota/check` at a fixed rate from the load generator (open loop:
latency from the scheduled time, so a stalled event loop shows in the tail). Three
phases of the same load:

1. quiet: no page open;
2. admin pages: `--tabs` admin tabs, each a real event socket (Reflex's own protocol,
   as tests/browser/test_event_security.py's raw events speak it) sending the
   console's events in a loop: page load (users list, stats, invoices, keys), a search,
   a user's drawer, and a saved quota override, then the next round when the save's
   answer has come;
3. admin pages + row lock: the same, all tabs on one user whose quota row another
   transaction (another admin's save, a slow client) holds for `--hold` seconds of each
   second: a save waits for it.

Prints the check's p50/p90/p99/max in each phase and their ratio to the quiet phase of
the same round (`--rounds` of the three, interleaved), and the admin rounds done and their
median time. About 2.5 minutes with the defaults.

    .venv/bin/python -m bench.loop_block                # PostgreSQL when it answers, else SQLite
    .venv/bin/python -m bench.loop_block --db sqlite --users 20000
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import simple_websocket
from sqlmodel import Session

from bench import loadgen, seed, servers
from bench.loadgen import Spec
from billing_app.services import auth

SESSION = "reflex___state____state.billing_app___states___session____session_state"
ADMIN = f"{SESSION}.billing_app___states___admin____admin_state"
PATH = "/admin/billing"
SAVED = '"override_saved_rx_state_":"Tokens limit saved."'
FAILED = '"override_error_rx_state_":"'  # followed by a message (not "")


class EventSocket:
    """A page's event socket as the browser opens it (socket.io over a websocket, on a
    client token of its own, with the session cookie), sending the admin console's
    events and reading the server's frames (deltas)."""

    def __init__(self, port: int, cookie: str, path: str = PATH) -> None:
        url = f"ws://127.0.0.1:{port}/_event/?EIO=4&transport=websocket&token={uuid.uuid4()}"
        self.path = path
        self.ws = simple_websocket.Client.connect(url, headers={"Cookie": cookie})
        self.ws.send("40/_event,")  # join the namespace, after engine.io's open packet
        if not self.wait_for(lambda m: m.startswith("40/_event"), timeout=30):
            raise RuntimeError("the event socket did not open")

    def send(self, handler: str, payload: dict[str, Any] | None = None) -> None:
        router = {"pathname": self.path, "query": {}, "asPath": self.path}
        event = {"name": f"{ADMIN}.{handler}", "payload": payload or {}, "router_data": router}
        self.ws.send("42/_event," + json.dumps(["event", event]))

    def wait_for(self, done: Callable[[str], bool], timeout: float = 60.0) -> bool:
        """Read frames until one satisfies `done` (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.ws.receive(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
            if msg is None:
                continue
            if msg == "2":  # engine.io ping
                self.ws.send("3")
            elif done(msg):
                return True
        return False

    def close(self) -> None:
        self.ws.close()


class AdminTab(threading.Thread):
    """One admin's browser tab sending rounds of console events until stopped."""

    def __init__(self, port: int, cookie: str, users: list[int], seed_: int, think: float) -> None:
        super().__init__(daemon=True)
        self.port, self.cookie, self.users, self.think = port, cookie, users, think
        self.rng = random.Random(seed_)
        self.stop = threading.Event()
        self.rounds: list[float] = []
        self.errors = 0

    def run(self) -> None:
        sock = EventSocket(self.port, self.cookie)
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                t0 = time.perf_counter()
                sock.send("on_load")
                sock.send("set_search", {"value": self.rng.choice(["", "bench", "1", "99"])})
                sock.send("open_user", {"user_id": self.rng.choice(self.users)})
                sock.send("set_override_limit", {"value": str(1000 + n)})
                sock.send("set_override_reason", {"value": "loop bench"})
                sock.send("save_override")
                if sock.wait_for(lambda m: SAVED in m or (FAILED in m and FAILED + '"' not in m)):
                    self.rounds.append(time.perf_counter() - t0)
                else:
                    self.errors += 1
                self.stop.wait(self.think)  # the admin reads the page
        finally:
            sock.close()


class RowLock(threading.Thread):
    """Another transaction holding user `user_id`'s tokens quota row (PostgreSQL: FOR
    UPDATE; SQLite: the database's write lock) for `hold` seconds of each second."""

    def __init__(self, url: str, user_id: int, hold: float) -> None:
        super().__init__(daemon=True)
        self.url, self.user_id, self.hold = url, user_id, hold
        self.stop = threading.Event()

    def run(self) -> None:
        if self.url.startswith("sqlite"):
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            lock = "BEGIN IMMEDIATE"
        else:
            import psycopg

            conn = psycopg.connect(self.url.replace("+psycopg", ""), autocommit=True)
            lock = ""
        try:
            while not self.stop.is_set():
                if lock:
                    conn.execute(lock)
                else:
                    conn.execute("BEGIN")
                    conn.execute(
                        "SELECT 1 FROM quota WHERE user_id = %s AND metric = 'tokens' FOR UPDATE",
                        (self.user_id,),
                    )
                time.sleep(self.hold)
                conn.execute("COMMIT")
                self.stop.wait(1.0 - self.hold)
        finally:
            conn.close()


def check_load(srv: servers.Server, key: str, users: list[int], a: argparse.Namespace) -> dict:
    return loadgen.run(
        Spec(
            port=srv.port,
            path="/api/billing/quota/check",
            body="check",
            headers={"Authorization": f"Bearer {key}"},
            params={"users": users[:1000]},
            connections=16,
            rate=a.rate,
            duration=a.duration,
            warmup=1.0,
            tag=uuid.uuid4().hex[:8],
        )
    )


def phase(
    srv: servers.Server,
    key: str,
    users: list[int],
    cookies: list[str],
    a: argparse.Namespace,
    contested: int | None = None,
) -> dict[str, Any]:
    tabs = [
        AdminTab(srv.port, c, [contested] if contested else users, seed_=i, think=a.think)
        for i, c in enumerate(cookies)
    ]
    lock = RowLock(srv.database_url, contested, a.hold) if contested else None
    for t in [*tabs, *([lock] if lock else [])]:
        t.start()
    if tabs:
        time.sleep(1.0)  # the tabs connected and busy before the load starts
    try:
        res = check_load(srv, key, users, a)
    finally:
        for t in [*tabs, *([lock] if lock else [])]:
            t.stop.set()
        for t in [*tabs, *([lock] if lock else [])]:
            t.join(timeout=70)
    rounds = [r for t in tabs for r in t.rounds]
    res["admin_rounds"] = len(rounds)
    res["admin_round_ms"] = round(statistics.median(rounds) * 1000) if rounds else None
    res["admin_errors"] = sum(t.errors for t in tabs)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["postgresql", "sqlite"], default=None)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--tabs", type=int, default=3)
    p.add_argument("--rate", type=float, default=200.0, help="quota checks per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three phases")
    p.add_argument("--think", type=float, default=0.5, help="s between a tab's rounds")
    p.add_argument("--hold", type=float, default=0.3, help="row lock held, s of each second")
    a = p.parse_args()
    kind = a.db or ("postgresql" if servers.pg_available() else "sqlite")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with servers.scratch_database(kind) as url:
        eng = seed.engine_for(url)
        log(f"{kind}: seeding {a.users:,} users")
        users = seed.seed_users(eng, a.users, plan="pro")
        admins = seed.seed_users(eng, a.tabs, plan="free", prefix="admin", role="admin")
        seed.vacuum_analyze(eng)
        with Session(eng) as s:
            cookies = [f"{auth.SESSION_COOKIE}={auth.new_session(s, u)}" for u in admins]
        eng.dispose()
        key = seed.service_key(url)
        with servers.app_server(url, websockets=True) as srv:
            log(f"app on :{srv.port}; warming up")
            check_load(srv, key, users, argparse.Namespace(**{**vars(a), "duration": 2.0}))
            phases = {
                "quiet": {"cookies": []},
                f"{a.tabs} admin tabs": {"cookies": cookies},
                f"{a.tabs} admin tabs + row lock {a.hold:g}s/s": {
                    "cookies": cookies,
                    "contested": users[0],
                },
            }
            results: list[tuple[int, str, dict[str, Any]]] = []
            for n in range(1, a.rounds + 1):  # interleaved: the machine's drift hits all
                for name, kw in phases.items():
                    log(f"round {n}, phase: {name}")
                    results.append((n, name, phase(srv, key, users, a=a, **kw)))
    print(
        f"\nPOST /api/billing/quota/check at {a.rate:g}/s, {kind}, {a.users:,} users, "
        f"1 worker, {a.duration:g} s per phase; x: against the same round's quiet phase\n"
    )
    print(
        "| round | phase | p50 ms | p90 ms | p99 ms | max ms | p50 x | p90 x | p99 x "
        "| non-2xx | admin rounds (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    quiet: dict[str, Any] = {}
    for n, name, r in results:
        quiet = r if name == "quiet" else quiet
        bad = r["sent"] - r["ok"]
        rounds = f"{r['admin_rounds']} ({r['admin_round_ms']} ms)" if r["admin_rounds"] else "-"
        if r["admin_errors"]:
            rounds += f", {r['admin_errors']} timed out"
        ratios = " | ".join(f"{r[k] / quiet[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms"))
        print(
            f"| {n} | {name} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} "
            f"| {ratios} | {bad} | {rounds} |"
        )


if __name__ == "__main__":
    main()
