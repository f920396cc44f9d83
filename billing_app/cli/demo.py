"""`billing-app demo run`: the whole product on one URL with nothing configured.

Migrates the database, seeds a demo admin and a demo user, mints a demo service
API key, starts the local Stripe sandbox (unless a real STRIPE_SECRET_KEY is
set) and runs Reflex in production mode. Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from billing_app.cli import ErrorGroup
from billing_app.settings import PROJECT_ROOT, ConfigError, get_settings, get_settings_or_exit

DEMO_ADMIN = ("admin@example.com", "Demo Admin", "demo-admin-pass")
DEMO_USER = ("user@example.com", "Demo User", "demo-user-pass")
DEMO_KEY_NAME = "demo-service"


@dataclass(frozen=True)
class DemoSeed:
    admin_id: int
    user_id: int
    api_key: str


def _ensure_user(session: object, email: str, name: str, password: str, admin: bool) -> int:
    """Create the account, or reset an existing one to the printed demo password."""
    from billing_app.services import passwords, users

    found = users.get_user_by_email(session, email)  # type: ignore[arg-type]
    if found is None:
        dto = users.create_user(
            session,  # type: ignore[arg-type]
            email,
            name,
            admin=admin,
            password_hash=passwords.hash_password(password),
        )
        return dto.id
    found.password_hash = passwords.hash_password(password)
    if admin:
        found.role = "admin"
    session.add(found)  # type: ignore[attr-defined]
    session.commit()  # type: ignore[attr-defined]
    assert found.id is not None
    return found.id


def seed(database_url: str | None = None) -> DemoSeed:
    """Demo accounts plus a fresh service key (older demo keys are revoked)."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import api_keys

    engine = create_db_engine(database_url) if database_url else None
    with session_scope(engine) as session:
        admin_id = _ensure_user(session, *DEMO_ADMIN, admin=True)
        user_id = _ensure_user(session, *DEMO_USER, admin=False)
        for key in api_keys.list_keys(session):
            if key.name == DEMO_KEY_NAME and key.revoked_at is None:
                api_keys.revoke_key(session, key.id)
        _dto, secret = api_keys.create_key(
            session,
            name=DEMO_KEY_NAME,
            service_name="demo",
            scopes=["usage:write", "usage:read"],
        )
    if engine is not None:
        engine.dispose()
    return DemoSeed(admin_id=admin_id, user_id=user_id, api_key=secret)


def migrate(database_url: str) -> None:
    from alembic.config import Config

    from alembic import command

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["url"] = database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def curl_example(base_url: str, secret: str, user_id: int) -> str:
    return (
        f"curl -X POST {base_url}/api/billing/usage \\\n"
        f'  -H "Authorization: Bearer {secret}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f'  -d \'{{"user_id": {user_id}, "metric": "tokens", "quantity": 5000}}\''
    )


def wait_for_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def app_env(port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment Reflex needs: one port, the public URL, the project's bun."""
    env = dict(os.environ)
    url = f"http://localhost:{port}"
    bun_bin = PROJECT_ROOT / "tools" / "bun" / "node_modules" / ".bin"
    env.update(
        PORT=str(port),
        APP_URL=env.get("APP_URL") or url,
        API_URL=env.get("API_URL") or url,
        REFLEX_USE_SYSTEM_BUN="1",
        REFLEX_TELEMETRY_ENABLED="false",
        PATH=f"{bun_bin}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra or {})
    return env


def reflex_command() -> list[str]:
    exe = Path(sys.executable).with_name("reflex")
    return [str(exe) if exe.exists() else (shutil.which("reflex") or "reflex"), "run", "--env",
            "prod"]  # fmt: skip


def start_sandbox(port: int, webhook_url: str, env: dict[str, str]) -> subprocess.Popen:
    from billing_app.brand import BRAND
    from billing_app.cli.sandbox import catalog_prices

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_sandbox",
            "--port",
            str(port),
            "--webhook-url",
            webhook_url,
            "--plans",
            json.dumps(catalog_prices()),
            "--business-name",
            BRAND,
            "--app-name",
            BRAND,
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@click.group(name="demo", cls=ErrorGroup)
def group() -> None:
    """Run the product locally with demo accounts."""


@group.command("run")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port for the app (UI and API); default PORT, 8000.")  # fmt: skip
def run(port: int | None) -> None:
    """Migrate, seed demo accounts, start the Stripe sandbox and the app."""
    settings = get_settings_or_exit()
    if settings.environment == "prod":
        # Its accounts' passwords are printed here and in the README: in a production
        # database they are an admin anyone can sign in as.
        raise ConfigError(
            "demo run is refused when ENVIRONMENT=prod: it creates admin@example.com with "
            "a public password (start production with `reflex run --env prod`, see README)"
        )
    port = port or settings.port  # PORT from the environment or `.env`
    base_url = f"http://localhost:{port}"
    os.environ.setdefault("APP_URL", base_url)
    os.environ.setdefault("API_URL", base_url)
    get_settings.cache_clear()
    settings = get_settings_or_exit()

    if settings.uses_stripe_sandbox and not port_free(settings.stripe_sandbox_port):
        # Another process there would answer the app's Stripe calls in its place.
        raise ConfigError(
            f"port {settings.stripe_sandbox_port} (STRIPE_SANDBOX_PORT) is in use; "
            "stop what holds it or choose another port"
        )
    migrate(settings.database_url)
    demo = seed()
    env = app_env(port)

    sandbox = None
    if settings.uses_stripe_sandbox:
        webhook = f"http://127.0.0.1:{port}/api/billing/webhook"
        sandbox = start_sandbox(settings.stripe_sandbox_port, webhook, env)
        if not wait_for_port(settings.stripe_sandbox_port):
            _stop(sandbox)
            raise click.ClickException(
                f"the Stripe sandbox did not start on port {settings.stripe_sandbox_port}"
            )

    bar = "─" * 72
    click.echo(
        f"\n{bar}\n"
        f"  Billing demo: {base_url}   (the first start builds the UI: about a minute)\n\n"
        f"  Admin  {DEMO_ADMIN[0]:<22} password {DEMO_ADMIN[2]}\n"
        f"  User   {DEMO_USER[0]:<22} password {DEMO_USER[2]}\n\n"
        + (
            f"  Stripe sandbox on http://127.0.0.1:{settings.stripe_sandbox_port}"
            " - pay with card 4242 4242 4242 4242\n\n"
            if sandbox
            else "  Using real Stripe (STRIPE_SECRET_KEY is set)\n\n"
        )
        + "  Demo service API key (shown once):\n"
        f"    {demo.api_key}\n\n"
        "  Post usage for the demo user and watch the bars move on /billing:\n\n"
        + "\n".join(
            "    " + line for line in curl_example(base_url, demo.api_key, demo.user_id).split("\n")
        )
        + f"\n{bar}\n",
    )
    app = subprocess.Popen(reflex_command(), cwd=PROJECT_ROOT, env=env)
    # SIGTERM (systemd, docker stop) stops the app and the sandbox as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = app.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        _stop(app)
        _stop(sandbox)
    sys.exit(code)
