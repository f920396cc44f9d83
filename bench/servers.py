"""Scratch databases and server processes for the benchmarks and the fault tests.

The app runs as `reflex run --env prod` runs its backend: granian, ASGI interface,
factory target `billing_app.billing_app:app` (the object Reflex builds, with the
FastAPI app from `api_transformer` in front), one worker (what Reflex starts without
Redis; GRANIAN_WORKERS / BENCH_WORKERS overrides it). We start granian directly rather
than through `reflex run` so the harness owns the process group and can `kill -9` it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa
from reflex_base.environment import environment
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PG_ADMIN_URL = os.environ.get("PG_TEST_URL", "postgresql://root@127.0.0.1:5432/test")
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


def pg_available(url: str = PG_ADMIN_URL) -> bool:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
        return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(url: str) -> None:
    from alembic.config import Config

    from alembic import command

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


@contextmanager
def scratch_database(kind: str, template: str | None = None) -> Iterator[str]:
    """A migrated, empty database (SQLite file, or PostgreSQL `bench_<random>`), dropped after.
    With `template` (a migrated database of that kind, on PG_ADMIN_URL's server, that nothing
    is connected to) it is a copy of it: well under a second, where migrating takes a few."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-") as d:
            url = f"sqlite:///{d}/bench.db"
            if template:
                shutil.copyfile(make_url(template).database, f"{d}/bench.db")
            else:
                migrate(url)
            yield url
        return
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{make_url(template).database}"' if template else ""
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        if not template:
            migrate(url)
        yield url
    finally:
        for _ in range(30):  # the server may still be letting go of its connections
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except sa.exc.OperationalError:
                time.sleep(1)
        admin.dispose()


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        BENCH_DATABASE_URL=database_url,
        REFLEX_ENV_MODE="prod",
        REFLEX_TELEMETRY_ENABLED="false",
        REFLEX_USE_SYSTEM_BUN="1",
        PATH=f"{ROOT / 'tools/bun/node_modules/.bin'}:{env.get('PATH', '')}",
        GRANIAN_LOG_LEVEL="warning",
    )
    # As `reflex run --env prod` starts its backend workers: no compile in them (the
    # variable's real name is `__REFLEX_SKIP_COMPILE`; Reflex ignores the plain one).
    # Compiling in every worker rewrote .web and reflex.lock/ from each at once, which
    # once left reflex.lock/package.json empty and the next start crashed.
    env[environment.REFLEX_SKIP_COMPILE.name] = "true"
    env.pop("STRIPE_SECRET_KEY", None)
    env.update(extra)
    return env


class Server:
    """A granian process group we can wait on, kill -9 and restart."""

    def __init__(
        self,
        target: str,
        database_url: str,
        port: int | None = None,
        factory: bool = False,
        workers: int | None = None,
        log: Path | None = None,
        websockets: bool = False,
        **env: str,
    ) -> None:
        self.target = target
        # The benchmarks speak HTTP only; a page's event socket needs granian's websockets.
        self.websockets = websockets
        self.database_url = database_url
        self.factory = factory
        self.port = port or free_port()
        self.workers = workers or int(os.environ.get("BENCH_WORKERS", "1"))
        self.env = server_env(database_url, **env)
        self.log = log or Path(tempfile.gettempdir()) / f"bench-server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str = "/api/health", timeout: float = 90.0) -> Server:
        cmd = [
            str(VENV_BIN / "granian"),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        if not self.websockets:
            cmd.append("--no-ws")
        if self.factory:
            cmd.append("--factory")
        cmd.append(self.target)
        with open(self.log, "ab") as log:
            # Own session: kill -9 reaches the supervisor and its workers together.
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log}\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base_url + ready_path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout}s: see {self.log}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) its live processes have used so far (Linux /proc):
        less noisy than throughput on a shared machine."""
        if self.proc is None:
            return 0.0
        pgid = self.proc.pid  # process group: the server's session
        return _cpu_seconds(lambda _name, group: group == pgid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def __enter__(self) -> Server:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cpu_seconds(match: Callable[[str, int], bool]) -> float:
    """CPU time (user + system) so far of the live processes `match(name, group)` picks."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, rest = stat.read_text().rsplit(")", 1)
        except OSError:  # the process ended meanwhile
            continue
        fields = rest.split()
        if match(head.split("(", 1)[1], int(fields[2])):
            total += int(fields[11]) + int(fields[12])  # utime + stime, in ticks
    return total / os.sysconf("SC_CLK_TCK")


def database_cpu_seconds(database_url: str) -> float | None:
    """CPU time so far of PostgreSQL's processes when it runs on this host (its backends,
    WAL writer, checkpointer, ...); None for SQLite (its work is in the server's own
    CPU) or a database elsewhere."""
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql") or url.host not in LOCAL_HOSTS:
        return None
    return _cpu_seconds(lambda name, _group: name == "postgres")


def app_server(database_url: str, **kw: object) -> Server:
    return Server("billing_app.billing_app:app", database_url, factory=True, **kw)  # type: ignore[arg-type]


def baseline_server(database_url: str, **kw: object) -> Server:
    return Server("bench.baseline:app", database_url, **kw)  # type: ignore[arg-type]
