"""The event socket as an attacker uses it: what a Reflex client token alone gives, what a
tab keeps when someone else signs in, a page of another origin driving the socket, and
arguments of the wrong type. The page State lives on the server under the tab's token;
the hydrate event sends the whole state tree to whoever presents that token."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import LiveApp, login

pytestmark = pytest.mark.browser


def _capture(page: Page) -> list[str]:
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(str(f))))
    return frames


def _admin_makes_key(page: Page, live_app: LiveApp, name: str) -> str:
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    # Searched, not read off page 1: other files' users may push the demo user past it.
    page.locator("#user-search").fill(live_app.user_email)
    expect(page.locator("#users-table")).to_contain_text(live_app.user_email)
    page.get_by_role("tab", name="API keys").click()
    page.get_by_role("textbox", name="Key name").fill(name)
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("bk_")
    return secret


def test_token_of_signed_out_admin_gives_anonymous_nothing(
    browser: Browser, live_app: LiveApp
) -> None:
    """An admin signs out; whoever later presents the tab's old client token (from
    sessionStorage, a log of websocket URLs, a shared machine) without any session
    cookie must not get the admin's state: the key's secret, the users list."""
    admin_ctx = browser.new_context()
    admin = admin_ctx.new_page()
    secret = _admin_makes_key(admin, live_app, "token-reuse")
    token = admin.evaluate("sessionStorage.getItem('token')")
    admin.get_by_role("button", name="Sign out").click()
    admin.wait_for_url(re.compile(r".*/login"))
    expect(admin.locator("#email")).to_be_visible()
    admin_ctx.close()

    anon_ctx = browser.new_context()
    anon_ctx.add_init_script(f"sessionStorage.setItem('token', {token!r})")
    anon = anon_ctx.new_page()
    frames = _capture(anon)
    anon.goto(f"{live_app.url}/login")
    expect(anon.locator("#email")).to_be_visible()
    anon.wait_for_timeout(1000)
    leaked = [f for f in frames if secret in f or live_app.user_email in f]
    anon_ctx.close()
    assert frames and not leaked, f"anonymous client got the admin's state: {leaked[0][:300]}"


def sign_in_over(
    page: Page, live_app: LiveApp, on_form: Callable[[], None] | None = None
) -> list[str]:
    """The sign-in form over the signed-in tab (`/login?error=...`, as after a session
    expired), then the demo user signs in there: the frames the tab received from the
    form on. `on_form` runs once the form shows."""
    page.goto(f"{live_app.url}/login?error=login_failed&next=/billing")
    expect(page.locator("#email")).to_be_visible()
    frames = _capture(page)
    if on_form is not None:
        on_form()
    page.locator("#email").fill(live_app.user_email)
    page.locator("#password").fill(live_app.user_password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(re.escape(live_app.url + "/billing")))
    expect(page.get_by_text("Usage this period")).to_be_visible()
    page.wait_for_timeout(1000)
    return frames


def test_signing_in_over_a_session_leaves_the_next_user_nothing(
    page: Page, live_app: LiveApp
) -> None:
    """The sign-in form is shown to a signed-in admin (`/login?error=...`, or after the
    session expired): whoever signs in there next in the same tab must not receive the
    admin's state (no sign-out, so no Clear-Site-Data)."""
    secret = _admin_makes_key(page, live_app, "sign-in-over")
    frames = sign_in_over(page, live_app)
    leaked = [f for f in frames if secret in f]
    assert frames and not leaked, f"the next user got the admin's key secret: {leaked[0][:300]}"


# ---------------------------------------------------------------- raw events

ROOT = "reflex___state____state"
SESSION = f"{ROOT}.billing_app___states___session____session_state"
ADMIN = f"{SESSION}.billing_app___states___admin____admin_state"
BILLING = f"{SESSION}.billing_app___states___billing____billing_state"

RAW_EVENTS_JS = """
async ([events, path, waitMs, base, tokenArg]) => {
  const token = tokenArg || crypto.randomUUID();
  const url = (base || location.origin).replace(/^http/, 'ws')
    + '/_event/?EIO=4&transport=websocket&token=' + token;
  const ws = new WebSocket(url);
  const got = [];
  let sent = false;
  // waitMs for the answers from when the events went up: a slow handshake does not eat
  // into it (a socket refused or never open gives up after 15 s).
  let done;
  const finished = new Promise((r) => { done = r; setTimeout(r, 15000); });
  ws.onclose = (e) => { got.push('CLOSE ' + e.code); done(); };
  ws.onerror = (e) => got.push('ERROR');
  ws.onmessage = (m) => {
    const d = String(m.data);
    got.push(d);
    if (d === '2') { ws.send('3'); return; }
    if (d.startsWith('0{')) { ws.send('40/_event,'); return; }
    if (d.startsWith('40/_event') && !sent) {
      sent = true;
      for (const [name, payload] of events) {
        ws.send('42/_event,' + JSON.stringify(['event', {name, payload,
          router_data: {pathname: path, query: {}, asPath: path}}]));
      }
      setTimeout(done, waitMs);
    }
  };
  await finished;
  ws.close();
  return got;
}
"""


def raw_events(
    page: Page,
    events: list[tuple[str, dict]],
    path: str,
    wait_ms: int = 2500,
    base: str = "",
    token: str = "",
) -> list[str]:
    """Send `events` (full name, payload) on client token `token` (default: a fresh one)
    from the page, to the app at `base` (default: the page's own origin); the browser's
    cookies go along as they would. The frames the server sent until `wait_ms` after the
    events went up."""
    return page.evaluate(RAW_EVENTS_JS, [[list(e) for e in events], path, wait_ms, base, token])


def _db(live_app: LiveApp, sql: str) -> list[tuple]:
    import sqlalchemy as sa

    engine = sa.create_engine(live_app.database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


ADMIN_ATTACK = [
    (f"{ADMIN}.refresh_all", {}),
    (f"{ADMIN}.reload_users", {}),
    (f"{ADMIN}.reload_invoices", {}),
    (f"{ADMIN}.open_user", {"user_id": 1}),
    (f"{ADMIN}.load_detail", {}),
    (f"{ADMIN}.set_override_limit", {"value": "7"}),
    (f"{ADMIN}.save_override", {}),
    (f"{ADMIN}.clear_override", {}),
    (f"{ADMIN}.submit_override", {"_form": {}}),
    (f"{ADMIN}.set_key_name", {"value": "evil"}),
    (f"{ADMIN}.create_key", {}),
    (f"{ADMIN}.submit_key", {"_form": {}}),
    (f"{ADMIN}.revoke_key", {"key_id": 1}),
    (f"{ADMIN}.next_page", {}),
    (f"{ADMIN}.next_invoices", {}),
]


@pytest.mark.parametrize("who", ["anonymous", "user"])
def test_admin_events_do_nothing_for_non_admins(page: Page, live_app: LiveApp, who: str) -> None:
    if who == "user":
        login(page, live_app, live_app.user_email, live_app.user_password)
    else:
        page.goto(f"{live_app.url}/login")
        expect(page.locator("#email")).to_be_visible()
    keys_before = _db(live_app, "select * from api_key order by id")
    audit_before = _db(live_app, "select count(*) from quota_audit")
    frames = raw_events(page, ADMIN_ATTACK, "/admin/billing")
    assert any("42/_event" in f for f in frames), frames[:5]
    text = "\n".join(frames)
    assert live_app.admin_email not in text
    assert "bk_live_" not in text
    assert "demo-service" not in text
    assert _db(live_app, "select * from api_key order by id") == keys_before
    assert _db(live_app, "select count(*) from quota_audit") == audit_before


def test_raw_events_reach_handlers_for_an_admin(page: Page, live_app: LiveApp) -> None:
    """Control for the test above: the same raw events do act for an admin."""
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    frames = raw_events(
        page,
        [
            (f"{ADMIN}.set_key_name", {"value": "raw-control"}),
            (f"{ADMIN}.create_key", {}),
            (f"{ADMIN}.open_user", {"user_id": 2}),
        ],
        "/admin/billing",
    )
    text = "\n".join(frames)
    assert "bk_live_" in text and live_app.user_email in text


def test_page_on_another_port_cannot_drive_an_admins_events(page: Page, live_app: LiveApp) -> None:
    """Cross-site websocket hijacking from the same site: a page on another port of the
    host (or a sibling subdomain) gets the admin's SameSite=Lax cookie sent along with a
    websocket it opens to the app. The app's CSRF rule (own Origin only) must hold for
    the event socket too: no key made, no secret read."""
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    server = _serve_page(18555, "<html><body>hi</body></html>")
    evil = "http://localhost:18555"
    try:
        page.goto(f"{evil}/")
        keys_before = _db(live_app, "select count(*) from api_key")
        frames = raw_events(
            page,
            [
                (f"{ADMIN}.set_key_name", {"value": "hijacked"}),
                (f"{ADMIN}.create_key", {}),
                (f"{ADMIN}.open_user", {"user_id": 2}),
            ],
            "/admin/billing",
            base=live_app.url,
        )
    finally:
        server.shutdown()
        server.server_close()
    text = "\n".join(frames)
    assert "bk_live_" not in text, "a page on another origin read a new admin key's secret"
    assert _db(live_app, "select count(*) from api_key") == keys_before


def test_wrong_type_arguments_leave_the_state_usable(page: Page, live_app: LiveApp) -> None:
    """Event arguments are whatever JSON a client sends. A list or object where a text
    field's setter expects a string must not be stored in a `str` var: the page's computed
    vars (users_csv_href: `.strip()`) then fail on every later delta and on hydrate, so
    the tab's State errors on each event and page load from then on."""
    page.goto(f"{live_app.url}/login")
    expect(page.locator("#email")).to_be_visible()
    auth = f"{SESSION}.billing_app___states___auth_pages____auth_form_state"
    frames = raw_events(
        page,
        [
            (f"{ADMIN}.set_search", {"value": ["a", {"b": 1}]}),
            (f"{ADMIN}.set_key_name", {"value": {"x": 1}}),
            (f"{ADMIN}.set_override_limit", {"value": [1, 2]}),
            (f"{ADMIN}.set_drawer_open", {"value": {"deep": [1, 2, 3]}}),
            (f"{auth}.set_form_email", {"value": ["y"] * 5}),
            (f"{auth}.set_form_name", {"value": 12345}),
            (f"{ROOT}.hydrate", {}),
        ],
        "/login",
    )
    assert any("42/_event" in f for f in frames), frames[:3]
    errors = [f for f in frames if "backend_error" in f]
    assert not errors, f"{len(errors)} events failed on the server"
    assert '"search_rx_state_":""' in "\n".join(frames)


def test_a_page_on_another_port_cannot_frame_an_admins_console(
    page: Page, live_app: LiveApp
) -> None:
    """Clickjacking from the same site: a page on another port of the host (or a sibling
    subdomain) frames the console, and the admin's SameSite=Lax cookie goes into the
    frame. Framed, the console would work for the admin under a decoy ("click here" over
    Revoke). The pages refuse every frame; the JSON API has nothing to frame."""
    login(page, live_app, live_app.admin_email, live_app.admin_password, "/admin/billing")
    framed = f"{live_app.url}/admin/billing"
    server = _serve_page(
        18556, f'<html><body><iframe id="f" src="{framed}"></iframe></body></html>'
    )
    try:
        # The document itself (its URL gains a trailing slash by a redirect first).
        with page.expect_response(lambda r: r.url.startswith(framed) and r.status == 200) as answer:
            page.goto("http://localhost:18556/")
        headers = answer.value.headers
        page.wait_for_timeout(3000)  # time for a framed console to load its users
        frame = next(f for f in page.frames if f != page.main_frame)
        shown = frame.locator("#users-table").count()
    finally:
        server.shutdown()
        server.server_close()
    assert shown == 0, "the admin console loaded inside another site's frame"
    assert headers.get("x-frame-options") == "DENY"
    assert headers.get("content-security-policy") == "frame-ancestors 'none'"


def _serve_page(port: int, html: str) -> Any:
    """Another site's page on `port` of this host (the same site as the app): `html` at
    every path, until the caller's `shutdown()` and `server_close()`."""
    import http.server
    import threading

    body = html.encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Evil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
