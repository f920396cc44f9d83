"""The real app for browser tests: `reflex run --env prod` on a free port, a temp SQLite
database, and the Stripe sandbox (in-process) delivering webhooks to it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, WebSocketRoute, expect

from billing_app.cli import demo
from billing_app.settings import PROJECT_ROOT
from tests.api.conftest import LiveServer
from tests.api.oidc_provider import CLIENT_ID as OIDC_CLIENT_ID
from tests.api.oidc_provider import CLIENT_SECRET as OIDC_CLIENT_SECRET
from tests.api.oidc_provider import OIDCProvider
from tests.conftest import reachable_redis

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
BUILD_TIMEOUT = 300.0
# Test-only: hold each state delta (server -> page message on Reflex's `/_event` socket)
# this long, to surface tests and pages that race the state's answer. Off by default.
WS_DELAY_MS = int(os.environ.get("BROWSER_WS_DELAY_MS") or 0)

pytestmark = pytest.mark.browser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that give `live_app` other environment (an indirect parameter) run after all
    the others, so a whole run starts each app once."""
    items.sort(
        key=lambda item: "live_app" in getattr(getattr(item, "callspec", None), "params", {})
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveApp:
    url: str
    database_url: str
    api_key: str
    admin_email: str
    admin_password: str
    user_email: str
    user_password: str
    log: Path
    # The local Stripe sandbox the app talks to (its state: what the app asked Stripe for).
    sandbox: Any = None

    def post_usage(self, user_id: int, metric: str, quantity: int, key: str | None = None) -> dict:
        r = httpx.post(
            f"{self.url}/api/billing/usage",
            headers={"Authorization": f"Bearer {key or self.api_key}"},
            json={"user_id": user_id, "metric": metric, "quantity": quantity},
            timeout=10,
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def user_id(self, email: str) -> int:
        from billing_app.db import create_db_engine, session_scope
        from billing_app.services import users

        engine = create_db_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                user = users.get_user_by_email(session, email)
                assert user is not None and user.id is not None
                return user.id
        finally:
            engine.dispose()


def ensure_user(app: LiveApp, email: str, name: str = "", password: str | None = None) -> int:
    """The id of the user `email` in the app's database, created once (with `password`,
    to sign in as them): the tests share one app."""
    from billing_app.db import create_db_engine, session_scope
    from billing_app.services import users
    from billing_app.services.passwords import hash_password

    engine = create_db_engine(app.database_url)
    try:
        with session_scope(engine) as session:
            user = users.get_user_by_email(session, email)
            if user is None:
                secret = hash_password(password) if password else None
                user = users.create_user(session, email, name, password_hash=secret)
            return user.id
    finally:
        engine.dispose()


def ensure_invoices(app: LiveApp, *invoices: dict[str, Any]) -> None:
    """Invoice rows (each a dict of Invoice's fields) in the app's database, each added
    once: the tests share one app."""
    from sqlmodel import select

    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import Invoice

    engine = create_db_engine(app.database_url)
    try:
        with session_scope(engine) as session:
            for fields in invoices:
                sid = fields["stripe_invoice_id"]
                if not session.exec(
                    select(Invoice).where(Invoice.stripe_invoice_id == sid)
                ).first():
                    session.add(Invoice(**fields))
            session.commit()
    finally:
        engine.dispose()


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + BUILD_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"reflex exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if (
                httpx.get(f"{url}/api/health", timeout=2).status_code == 200
                and httpx.get(f"{url}/login", timeout=5, follow_redirects=True).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the app did not start in {BUILD_TIMEOUT:.0f}s:\n{log.read_text()[-4000:]}")


def flush_redis(url: str) -> None:
    """Empty the app's own Redis db (skipped without Redis, failed in CI)."""
    client = reachable_redis(url, "REFLEX_REDIS_URL")
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="session")
def live_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApp]:
    """One worker, no Redis. A module adds environment by indirect parametrization
    (test_production_workers.py: `GRANIAN_WORKERS`, `REFLEX_REDIS_URL`, whose db is
    emptied before and after); pytest stops one app before it starts the next, so only
    one at a time builds into .web (its env.json names the app's port) and serves it."""
    from stripe_sandbox import SandboxConfig, SandboxServer

    extra_env: dict[str, str] = getattr(request, "param", None) or {}
    redis_url = extra_env.get("REFLEX_REDIS_URL")
    if redis_url:
        flush_redis(redis_url)
    tmp = tmp_path_factory.mktemp("live")
    database_url = f"sqlite:///{tmp / 'app.db'}"
    port = free_port()
    url = f"http://localhost:{port}"
    demo.migrate(database_url)
    seeded = demo.seed(database_url)

    sandbox = SandboxServer(
        SandboxConfig(webhook_url=f"http://127.0.0.1:{port}/api/billing/webhook")
    )
    sandbox.start()
    # Single sign-on against the tests' loopback provider, so the SSO button is there
    # and can be followed in a real browser.
    idp = OIDCProvider()
    idp_server = LiveServer(idp.app)
    idp.url = idp_server.url
    env = demo.app_env(
        port,
        {
            "DATABASE_URL": database_url,
            "APP_URL": url,
            "API_URL": url,
            "STRIPE_SANDBOX_PORT": str(sandbox.port),
            "ENVIRONMENT": "test",
            "OIDC_ISSUER": idp.url,
            "OIDC_CLIENT_ID": OIDC_CLIENT_ID,
            "OIDC_CLIENT_SECRET": OIDC_CLIENT_SECRET,
            **extra_env,
        },
    )
    for var in ("STRIPE_SECRET_KEY", "BILLING_PLANS_JSON", "ADMIN_EMAILS", "STRIPE_API_BASE"):
        env.pop(var, None)
    for var in ("GRANIAN_WORKERS", "REFLEX_REDIS_URL"):  # unless the module asks for them
        if var not in extra_env:
            env.pop(var, None)
    log = tmp / "reflex.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            demo.reflex_command(),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown stops every child
        )
    try:
        _wait_ready(url, proc, log)
        yield LiveApp(
            url=url,
            database_url=database_url,
            api_key=seeded.api_key,
            admin_email=demo.DEMO_ADMIN[0],
            admin_password=demo.DEMO_ADMIN[2],
            user_email=demo.DEMO_USER[0],
            user_password=demo.DEMO_USER[2],
            log=log,
            sandbox=sandbox,
        )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sandbox.stop()
        idp_server.stop()
        if redis_url:
            flush_redis(redis_url)


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture(autouse=True)
def _expect_timeout() -> None:
    expect.set_options(timeout=15_000)


@pytest.fixture(autouse=True)
def _new_visitor(request: pytest.FixtureRequest) -> None:
    """Each test signs up as a new visitor: the tests share one app and all come from
    loopback, so together they would pass its per-address sign-up limit."""
    if "live_app" not in request.fixturenames:
        return
    from sqlalchemy import delete

    from billing_app.db import create_db_engine, session_scope
    from billing_app.models import SignupAttempt

    engine = create_db_engine(request.getfixturevalue("live_app").database_url)
    try:
        with session_scope(engine) as session:
            session.exec(delete(SignupAttempt))  # type: ignore[call-overload]
            session.commit()
    finally:
        engine.dispose()


class _DelayedDeltas:
    """Forwards the server's messages to the page `delay` seconds late, in order. It runs
    on Playwright's event loop (so it never blocks the dispatcher): one timer at a time,
    for the oldest message held."""

    def __init__(self, route: WebSocketRoute, delay: float) -> None:
        self.route, self.delay = route, delay
        self.held: deque[tuple[float, str | bytes]] = deque()

    def __call__(self, message: str | bytes) -> None:
        loop = asyncio.get_running_loop()
        self.held.append((loop.time() + self.delay, message))
        if len(self.held) == 1:
            loop.call_at(self.held[0][0], self._release)

    def _release(self) -> None:
        loop = asyncio.get_running_loop()
        while self.held and self.held[0][0] <= loop.time():
            self.route.send(self.held.popleft()[1])
        if self.held:
            loop.call_at(self.held[0][0], self._release)


def _slow_event_socket(target: BrowserContext | Page, delay_ms: int = WS_DELAY_MS) -> None:
    def handler(route: WebSocketRoute) -> None:
        server = route.connect_to_server()  # the page's messages go up unchanged
        server.on_message(_DelayedDeltas(route, delay_ms / 1000))

    target.route_web_socket(re.compile(r"/_event"), handler)


def ws_delay(page: Page, ms: int) -> None:
    """Hold each state delta `ms` late on the sockets `page` opens from now on (from its
    next navigation), as a slow server would: BROWSER_WS_DELAY_MS for one test's page.
    The page's own route wins over one BROWSER_WS_DELAY_MS put on its context."""
    _slow_event_socket(page, ms)


@pytest.fixture(autouse=True)
def _slow_state_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    """With BROWSER_WS_DELAY_MS, every context and page a test opens gets late deltas."""
    if not WS_DELAY_MS:
        return
    new_context, new_page = Browser.new_context, Browser.new_page

    def slow_context(self: Browser, *args: Any, **kwargs: Any) -> BrowserContext:
        context = new_context(self, *args, **kwargs)
        _slow_event_socket(context)
        return context

    def slow_page(self: Browser, *args: Any, **kwargs: Any) -> Page:
        page = new_page(self, *args, **kwargs)
        _slow_event_socket(page)
        return page

    monkeypatch.setattr(Browser, "new_context", slow_context)
    monkeypatch.setattr(Browser, "new_page", slow_page)


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def login(page: Page, app: LiveApp, email: str, password: str, next_path: str = "/billing") -> None:
    page.goto(f"{app.url}/login?next={next_path}")
    page.locator("#email").fill(email)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(re.escape(app.url + next_path)))


def choose(page: Page, select: str | Locator, option: str, exact: bool = False) -> None:
    """Open a select (a combobox named `select`, or its locator) with a click and pick
    `option`. The open list is portalled to the page's end, so the option is looked up on
    the page, not inside the select's container."""
    trigger = page.get_by_role("combobox", name=select) if isinstance(select, str) else select
    trigger.click()
    page.get_by_role("option", name=option, exact=exact).click()


def open_user_drawer(page: Page, app: LiveApp, search: str, email: str) -> Locator:
    """As the admin: the console searched for `search` (one match), and the drawer of the
    user `email` open."""
    login(page, app, app.admin_email, app.admin_password, "/admin/billing")
    page.locator("#user-search").fill(search)
    expect(page.get_by_text("1–1 of 1")).to_be_visible()
    page.get_by_role("button", name=f"Details for {email}").click()
    drawer = page.locator("#user-drawer")
    expect(drawer).to_be_visible()
    # The drawer slides in: a layout measured before the slide ends sees it off-screen.
    # (Endless animations, a loading pulse, never end: not waited for.)
    page.wait_for_function(
        """() => document.getAnimations().every(
            a => a.playState !== 'running' || a.effect.getComputedTiming().endTime === Infinity
        )"""
    )
    return drawer


_counter = iter(range(1, 10_000))


def signup(page: Page, app: LiveApp, prefix: str = "buyer") -> str:
    """A fresh account per test, so tests do not share plans or usage."""
    email = f"{prefix}{next(_counter)}-{int(time.time() * 1000) % 10**8}@example.com"
    page.goto(f"{app.url}/signup")
    page.locator("#display_name").fill(prefix.title())
    page.locator("#email").fill(email)
    page.locator("#password").fill("correct-horse-battery")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(re.escape(app.url) + "/billing"))
    expect(page.get_by_text("Usage this period")).to_be_visible()
    return email


# The focused element, described for a test's message ("BODY" when focus is lost).
_DESCRIBE_FOCUS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return 'BODY';
  const name = el.getAttribute('aria-label') || el.innerText || el.value || el.id || '';
  return el.tagName + ' ' + name.trim().slice(0, 60);
}"""
# A ring the eye can see around the focused element: Radix draws it as an outline on the
# element or its ::before, on a text field's root, or on a tab's inner label.
_RING_SHOWN = """() => {
  const el = document.activeElement;
  if (!el || el === document.body || !el.matches(':focus-visible')) return false;
  const ring = (e, pseudo) => {
    const s = getComputedStyle(e, pseudo);
    return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;
  };
  const root = el.closest('.rt-TextFieldRoot, .rt-TextAreaRoot');
  const inner = el.querySelector('.rt-BaseTabListTriggerInner');
  return ring(el) || ring(el, '::before') || (!!root && ring(root)) || (!!inner && ring(inner));
}"""


_TWO_FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def focused(page: Page) -> str:
    return page.evaluate(_DESCRIBE_FOCUS)


def tab_to(page: Page, selector: str, limit: int = 60, back: bool = False) -> list[str]:
    """Press Tab (Shift+Tab with `back`) until an element matching `selector` has the
    focus; every stop on the way must show a focus ring. Returns the stops."""
    stops: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        here = focused(page)
        stops.append(here)
        assert here != "BODY", f"focus fell to <body> after {stops}"
        assert page.evaluate(_RING_SHOWN), f"no visible focus ring on {here}"
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return stops
    raise AssertionError(f"{selector} not reached by Tab: {stops}")


def assert_focus_kept(page: Page, what: str) -> None:
    """After a keyboard action whose answer the caller has seen on the page: focus is on
    an element (not <body>) and shows its ring."""
    # The frame after the one that drew the answer: its re-render, and the effects React
    # runs after it (where a focus would be moved or dropped), are done.
    page.evaluate(_TWO_FRAMES)
    here = focused(page)
    assert here != "BODY", f"focus fell to <body> after {what}"
    assert page.evaluate(_RING_SHOWN), f"no visible focus ring on {here} after {what}"


__all__ = [
    "LiveApp",
    "assert_focus_kept",
    "choose",
    "focused",
    "login",
    "open_user_drawer",
    "ensure_invoices",
    "screenshot",
    "signup",
    "tab_to",
    "ws_delay",
]
