"""A small HTTP/1.1 load generator: keep-alive connections on raw asyncio sockets.

Runs in its own process(es), apart from the server under test. Two modes:
- closed loop: `connections` clients each send the next request as soon as the last
  answered, for `duration` seconds or until `requests` were sent;
- open loop: `rate` requests per second on a schedule; latency counts from the
  scheduled time, so a stalled server shows up in the tail (no coordinated omission).

Bodies come from named generators (`BODIES`) so every request can carry its own
idempotency key. Used by bench/run.py and by the fault tests (tests/reliability/).

It shares the 2 cores with the server and the database, so its own CPU is kept low: on
uvloop, with no task per request (measured against the app at ~3,000 req/s: 0.068 ->
0.040 ms of CPU per request; the baseline's and the app's figures both rise with it).

    python -m bench.loadgen spec.json  # prints one JSON result line
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import uvloop

# ---------------------------------------------------------------- request bodies


def _usage(params: dict[str, Any], tag: str, n: int) -> bytes:
    return json.dumps({**_check_body(params, n), "idempotency_key": f"{tag}-{n}"}).encode()


def _check_body(params: dict[str, Any], n: int) -> dict[str, Any]:
    users = params["users"]
    return {
        "user_id": users[n % len(users)],
        "metric": params.get("metric", "tokens"),
        "quantity": params.get("quantity", 1),
    }


def _batch(params: dict[str, Any], tag: str, n: int) -> bytes:
    users = params["users"]
    size = params.get("batch_size", 1000)
    events = [
        {
            "user_id": users[(n * size + i) % len(users)],
            "metric": params.get("metric", "tokens"),
            "quantity": params.get("quantity", 1),
            "idempotency_key": f"{tag}-{n}-{i}",
        }
        for i in range(size)
    ]
    return json.dumps({"events": events}).encode()


def _check(params: dict[str, Any], tag: str, n: int) -> bytes:
    return json.dumps(_check_body(params, n)).encode()


def _empty(params: dict[str, Any], tag: str, n: int) -> bytes:
    return b""


def _webhook(params: dict[str, Any], tag: str, n: int) -> bytes:
    # Pre-signed payloads: the spec carries them (see bench/scenarios.py).
    payloads = params["payloads"]
    return payloads[n % len(payloads)]["body"].encode()


BODIES: dict[str, Callable[[dict[str, Any], str, int], bytes]] = {
    "usage": _usage,
    "batch": _batch,
    "check": _check,
    "empty": _empty,
    "webhook": _webhook,
}


def _extra_headers(params: dict[str, Any], n: int) -> dict[str, str]:
    if "payloads" in params:
        return params["payloads"][n % len(params["payloads"])]["headers"]
    return {}


# ---------------------------------------------------------------- spec and result


@dataclass
class Spec:
    port: int
    path: str
    method: str = "POST"
    host: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "empty"
    params: dict[str, Any] = field(default_factory=dict)
    connections: int = 32
    duration: float = 5.0
    requests: int | None = None  # stop after this many (closed loop), overrides duration
    rate: float | None = None  # open loop, requests/s over all processes
    procs: int = 1
    tag: str = "r"  # prefix of idempotency keys, unique per run
    timeout: float = 30.0
    warmup: float = 0.0  # seconds of load not counted in the figures


@dataclass
class Result:
    sent: int = 0
    ok: int = 0  # 2xx
    ok_total: int = 0  # 2xx including the warm-up (what the server acknowledged)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # connection errors, timeouts
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def merge(self, other: Result) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.ok_total += other.ok_total
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.elapsed = max(self.elapsed, other.elapsed)
        self.latencies_ms.extend(other.latencies_ms)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2)

        return {
            "sent": self.sent,
            "ok": self.ok,
            "ok_total": self.ok_total,
            "statuses": self.statuses,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 3),
            "rps": round(self.sent / self.elapsed, 1) if self.elapsed else 0.0,
            "ok_rps": round(self.ok / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(lat[-1], 2) if lat else None,
        }


# ---------------------------------------------------------------- the client


class _Conn:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.spec.host, self.spec.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        chunked = False
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                body += await self.reader.readexactly(size + 2)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(spec: Spec, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"{spec.method} {spec.path} HTTP/1.1", f"Host: {spec.host}:{spec.port}"]
    headers = {**spec.headers, **(extra or {})}
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    if body or spec.method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _run_proc(spec: Spec, proc: int, start_at: float) -> Result:
    make_body = BODIES[spec.body]
    result = Result()
    tag = f"{spec.tag}-p{proc}"
    counter = iter(range(10**12))
    procs = max(spec.procs, 1)
    quota = (
        None
        if spec.requests is None
        else spec.requests // procs + (1 if proc < spec.requests % procs else 0)
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    measure_from = t0 + spec.warmup
    deadline = measure_from + spec.duration

    def record(status: int | None, err: str | None, lat: float, t_start: float) -> None:
        if status is not None and 200 <= status < 300:
            result.ok_total += 1
        if t_start < measure_from:
            return
        result.sent += 1
        if err is not None:
            result.errors[err] = result.errors.get(err, 0) + 1
            return
        result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
        if status is not None and 200 <= status < 300:
            result.ok += 1
        result.latencies_ms.append(lat * 1000)

    async def one(conn: _Conn, n: int, t_start: float) -> None:
        raw = build_request(spec, make_body(spec.params, tag, n), _extra_headers(spec.params, n))
        try:
            async with asyncio.timeout(spec.timeout):  # no task per request, as wait_for makes
                status, _ = await conn.request(raw)
            record(status, None, time.perf_counter() - t_start, t_start)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            conn.close()
            record(None, type(e).__name__, 0.0, t_start)
        except TimeoutError:
            conn.close()
            record(None, "timeout", 0.0, t_start)

    conns = max(1, spec.connections // procs + (1 if proc < spec.connections % procs else 0))
    if spec.rate is None:
        sent = 0

        async def client() -> None:
            nonlocal sent
            conn = _Conn(spec)
            while time.perf_counter() < deadline and (quota is None or sent < quota):
                sent += 1
                n = next(counter)
                await one(conn, n, time.perf_counter())
            conn.close()

        await asyncio.gather(*(client() for _ in range(conns)))
    else:
        rate = spec.rate / procs
        idle: asyncio.Queue[_Conn] = asyncio.Queue()
        for _ in range(conns):
            idle.put_nowait(_Conn(spec))
        tasks = []

        async def scheduled(n: int, t_sched: float) -> None:
            conn = await idle.get()
            try:
                await one(conn, n, t_sched)
            finally:
                idle.put_nowait(conn)

        i = 0
        while True:
            t_sched = t0 + i / rate
            if t_sched >= deadline or (quota is not None and i >= quota):
                break
            delay = t_sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(scheduled(next(counter), t_sched)))
            i += 1
        await asyncio.gather(*tasks)
        while not idle.empty():
            idle.get_nowait().close()
    result.elapsed = time.perf_counter() - measure_from
    return result


def _proc_main(spec_d: dict[str, Any], proc: int, start_at: float, q: Any) -> None:
    spec = Spec(**spec_d)
    res = uvloop.run(_run_proc(spec, proc, start_at))
    q.put(asdict(res))


def run(spec: Spec) -> dict[str, Any]:
    """Run the load from a separate process (`python -m bench.loadgen`); return its summary."""
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(asdict(spec), f)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", f.name],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        Path(f.name).unlink(missing_ok=True)
    return json.loads(out.strip().splitlines()[-1])


def run_here(spec: Spec) -> dict[str, Any]:
    """Run the load in `spec.procs` fresh processes and return the merged summary."""
    ctx = mp.get_context("spawn")  # no inherited server state or threads
    q = ctx.Queue()
    start_at = time.time() + 0.5 + 0.3 * spec.procs
    ps = [
        ctx.Process(target=_proc_main, args=(asdict(spec), i, start_at, q))
        for i in range(spec.procs)
    ]
    for p in ps:
        p.start()
    total = Result()
    for _ in ps:
        total.merge(Result(**q.get()))
    for p in ps:
        p.join()
    return total.summary()


def main() -> None:
    spec = Spec(**json.loads(open(sys.argv[1]).read()))
    print(json.dumps(run_here(spec)))


if __name__ == "__main__":
    main()
