"""The app as production runs it, as far as a test can: `reflex run --env prod` with two
granian workers (`GRANIAN_WORKERS=2`) and the page State in Redis (`REFLEX_REDIS_URL`, a
db of its own, emptied before and after). Only this setup keeps a tab's State in Redis,
moves one tab between workers and wipes a State that a worker loads from Redis.

It keeps the other browser tests' temp SQLite database, Stripe sandbox and
`ENVIRONMENT=test` (with the sandbox, `prod` refuses to start). Without Redis the module
is skipped; in CI (`CI` set) it fails. Another Redis: `PROD_TEST_REDIS_URL`."""

from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveApp, signup
from tests.browser.test_event_security import (
    ADMIN,
    BILLING,
    ROOT,
    SESSION,
    _admin_makes_key,
    _capture,
    raw_events,
    sign_in_over,
)

REDIS_URL = os.environ.get("PROD_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
PROD = {"GRANIAN_WORKERS": "2", "REFLEX_REDIS_URL": REDIS_URL}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("live_app", [PROD], indirect=True, ids=["2-workers-redis"]),
]

AUTH_FORM = f"{SESSION}.billing_app___states___auth_pages____auth_form_state"
HYDRATE = f"{ROOT}.hydrate"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=5)


def _token(page: Page) -> str:
    token = page.evaluate("sessionStorage.getItem('token')")
    assert token, "the tab has no Reflex client token"
    return token


def _worker_of(token: str, timeout: float = 10.0) -> str:
    """Which worker holds the tab's socket: the Reflex instance id (a new one in each
    worker process) that Reflex's Redis token manager records for the client token."""
    r = _redis()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            raw = r.get(f"token_manager_socket_record_{token}")
            if raw is not None:
                return pickle.loads(raw).instance_id
            time.sleep(0.1)
    finally:
        r.close()
    raise AssertionError(f"Redis has no socket record for the tab's token {token}")


def _stored_state(token: str, full_name: str) -> object | None:
    """One state of the tab's tree as Redis holds it (Reflex's own deserializer)."""
    from reflex.state import BaseState

    r = _redis()
    try:
        raw = r.get(f"{token}_{full_name}")
    finally:
        r.close()
    return None if raw is None else BaseState._deserialize(data=raw)


def _listening_workers(url: str) -> set[int]:
    """Pids of the processes holding a listening socket on the app's port (each granian
    worker has its own), read from /proc."""
    port = int(url.rsplit(":", 1)[1])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                pids.add(int(fd_dir.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def test_checkout_and_live_usage_with_the_tab_on_both_workers(
    page: Page, live_app: LiveApp
) -> None:
    """Sign up, pay for Pro on the sandbox's checkout, back on /billing: Pro's limits, and
    usage posted through the API moves the bars. Then the same tab reloads until its socket
    is on the other worker: the State (the chart's metric, set only there) comes back from
    Redis, and usage moves the bars again, through that worker's poller."""
    workers = _listening_workers(live_app.url)
    assert len(workers) == 2, f"expected 2 granian workers on the port, found {workers}"
    email = signup(page, live_app, "prod")
    user_id = live_app.user_id(email)
    token = _token(page)

    page.locator("#choose-pro").click()
    page.wait_for_url(re.compile(r".*/checkout/.*"))
    page.locator("#card-number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    expect(page.locator("#checkout-success")).to_be_visible()
    expect(page.locator("#current-plan")).to_have_text("Pro")  # the webhook, on either worker
    expect(page.locator("#meter-tokens")).to_contain_text("0 / 1,000,000")
    assert _token(page) == token  # the same tab's State, back from Stripe

    live_app.post_usage(user_id, "tokens", 250_000)
    expect(page.locator("#meter-tokens")).to_contain_text("250,000 / 1,000,000")
    expect(page.get_by_role("progressbar", name="Tokens")).to_have_attribute("aria-valuenow", "25")
    api_calls = page.get_by_role("radio", name="API calls")
    api_calls.click()
    expect(api_calls).to_have_attribute("aria-checked", "true")

    first = _worker_of(token)  # where the chart's event and the bars' poller ran

    # Reload the tab until its socket lands on the other worker (which one takes a new
    # connection is the kernel's choice).
    reloads, second = 0, first
    while second == first:
        assert reloads < 30, f"30 reloads of the tab all landed on worker {first}"
        page.reload()
        reloads += 1
        expect(page.locator("#current-plan")).to_have_text("Pro")
        assert _token(page) == token, "the reload got a new client token: a fresh State"
        second = _worker_of(token)
    print(f"\nworkers: {first[:8]}, then {second[:8]} after {reloads} reload(s)")
    # Only the State knows the chart's metric: the other worker read it from Redis.
    expect(api_calls).to_have_attribute("aria-checked", "true")
    live_app.post_usage(user_id, "api_calls", 1_234)  # this worker's poller moves the bar
    expect(page.locator("#meter-api_calls")).to_contain_text("1,234 / 10,000")
    expect(page.get_by_role("progressbar", name="API calls")).to_have_attribute(
        "aria-valuenow", "12"
    )
    assert _listening_workers(live_app.url) == workers, "a worker was restarted meanwhile"


def test_the_tabs_state_is_in_redis(page: Page, live_app: LiveApp) -> None:
    """After the tab's events, Redis holds its State tree under the client token, with
    what those events set, and Reflex's record of the socket that holds it."""
    email = signup(page, live_app, "redis")
    page.get_by_role("radio", name="Scraping").click()
    expect(page.get_by_role("radio", name="Scraping")).to_have_attribute("aria-checked", "true")
    token = _token(page)
    r = _redis()
    try:
        keys = {k.decode() for k in r.keys(f"{token}_*")}
        ttl = r.ttl(f"{token}_{BILLING}")
    finally:
        r.close()
    assert {f"{token}_{ROOT}", f"{token}_{SESSION}", f"{token}_{BILLING}"} <= keys, keys
    assert ttl > 0, "the tab's State never expires"
    billing = _stored_state(token, BILLING)
    session = _stored_state(token, SESSION)
    assert billing is not None and session is not None
    assert billing.chart_metric == "scraping_tasks"
    assert session.user_email == email
    assert session._state_owner  # filled under this tab's session cookie (states/owner.py)
    assert _worker_of(token)  # and Reflex's record of the worker holding the tab's socket


def _no_socket_for(token: str, timeout: float = 10.0) -> None:
    """Wait until no worker holds a socket for `token` (the closed tab's disconnect has
    landed): else Reflex gives the next client of that token a fresh one."""
    r = _redis()
    deadline = time.monotonic() + timeout
    try:
        while r.exists(f"token_manager_socket_record_{token}"):
            assert time.monotonic() < deadline, "the closed tab's socket is still recorded"
            time.sleep(0.1)
    finally:
        r.close()


@pytest.mark.parametrize("first", ["page", "lone-event"])
def test_signed_out_admins_token_gives_anonymous_nothing(
    browser: Browser, live_app: LiveApp, first: str
) -> None:
    """test_event_security's case with the State in Redis: an admin makes a key and signs
    out; a client presenting the tab's old token without a cookie gets nothing of theirs,
    and the State in Redis is wiped. Its first event is the page's hydrate (the whole
    tree), or ("lone-event") one setter of the sign-in form, for which Reflex loads only
    that state's branch from Redis, then a hydrate on the same socket."""
    admin_ctx = browser.new_context()
    admin = admin_ctx.new_page()
    secret = _admin_makes_key(admin, live_app, f"prod-token-reuse-{first}")
    token = _token(admin)
    admin_worker = _worker_of(token)
    stored = _stored_state(token, ADMIN)
    assert stored is not None and stored.new_secret == secret  # what a leak would send
    admin.get_by_role("button", name="Sign out").click()
    admin.wait_for_url(re.compile(r".*/login"))
    expect(admin.locator("#email")).to_be_visible()
    admin_ctx.close()
    _no_socket_for(token)

    anon_ctx = browser.new_context()
    anon = anon_ctx.new_page()
    if first == "page":
        anon_ctx.add_init_script(f"sessionStorage.setItem('token', {token!r})")
        frames = _capture(anon)
        anon.goto(f"{live_app.url}/login")
        expect(anon.locator("#email")).to_be_visible()
        anon.wait_for_timeout(1000)
        # Else Reflex gave the anonymous client a token of its own and nothing was tested.
        assert _token(anon) == token, "the anonymous client did not keep the admin's token"
        anon_worker = _worker_of(token)
    else:
        anon.goto(f"{live_app.url}/login")
        expect(anon.locator("#email")).to_be_visible()
        events = [(f"{AUTH_FORM}.set_form_email", {"value": "x@example.com"}), (HYDRATE, {})]
        frames = raw_events(anon, events, "/login", wait_ms=2000, token=token)
        assert any("42/_event" in f for f in frames), frames[:5]
        anon_worker = "-"
    anon_ctx.close()
    leaked = [f for f in frames if secret in f or live_app.user_email in f]
    assert frames and not leaked, f"anonymous client got the admin's state: {leaked[0][:300]}"
    session, stored = _stored_state(token, SESSION), _stored_state(token, ADMIN)
    assert session is not None and session._state_owner == "", "no event ran on the token"
    assert stored is None or (stored.new_secret == "" and not stored.users), (
        "the admin's state is still in Redis under the old token"
    )
    print(f"\nadmin's worker {admin_worker[:8]}, anonymous client's {anon_worker[:8]}")


def test_signing_in_over_a_session_leaves_the_next_user_nothing(
    page: Page, live_app: LiveApp
) -> None:
    """test_event_security's case with the State in Redis: the sign-in form over a
    signed-in admin's tab; the next user to sign in there gets nothing of the admin's."""
    secret = _admin_makes_key(page, live_app, "prod-sign-in-over")
    token = _token(page)
    admin_worker = _worker_of(token)
    form_workers: list[str] = []
    frames = sign_in_over(page, live_app, lambda: form_workers.append(_worker_of(token)))
    login_form_worker = form_workers[0]
    assert _token(page) == token, "the sign-in got a new client token: nothing was tested"
    user_worker = _worker_of(token)
    leaked = [f for f in frames if secret in f]
    assert frames and not leaked, f"the next user got the admin's key secret: {leaked[0][:300]}"
    stored = _stored_state(token, ADMIN)
    assert stored is None or stored.new_secret == "", "the admin's key secret is in Redis"
    print(
        f"\nworkers: admin {admin_worker[:8]}, sign-in form {login_form_worker[:8]}, "
        f"user {user_worker[:8]}"
    )
