"""CSV exports for the admin console: the users its list's filters match, the invoices
its invoices tab's filter matches; every row, not one page.

Streamed: rows are read a chunk at a time from one statement (admin.iter_users, or the
invoices query with yield_per) and written out a chunk at a time, so memory stays flat
however many rows match. The caller gives the session and owns its transaction: the API
reads in a read session, which holds no write lock (on PostgreSQL in one REPEATABLE
READ transaction, which the server-side cursor needs, so the file is one snapshot).

The file starts with a UTF-8 byte order mark: without one, Excel reads a CSV in the
machine's ANSI code page (Windows-1252), and "Zoë" shows as "ZoÃ«". Spreadsheets,
pandas and `utf-8-sig` drop it; a plain `utf-8` reader sees it before the first header.

The cells, for a spreadsheet:
- times are ISO 8601 in UTC to the second (`2026-11-15T12:00:00Z`), empty when unset;
- a limit of 0 (unlimited) is written `unlimited`, never 0 or an empty cell;
- amounts are decimal amounts of their currency, an invoice's or (a user's
  `amount_owed`) the plans' (1900 usd is `19.00`, 1500 jpy `1500`, 12345 kwd
  `12.345`), its code (`USD`) in a column of its own; an invoice's `total` is
  negative for a credit to the customer's balance (a downgrade's proration), which
  `credited_to_balance` repeats as a positive amount;
- text a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a tab
  or a carriage return: an email like `=HYPERLINK(...)@evil.test` can sign up) is
  written with a leading single quote, which spreadsheets show as text.

Each row is built as cells by code that knows its columns' types (no per-cell type
dispatch), and times stored in a table are formatted by the database, not parsed into
datetimes to be formatted back: at 100,000 rows those were most of an export's time.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from billing_app.clock import as_utc, utcnow
from billing_app.metrics import METRICS
from billing_app.models import Invoice, User
from billing_app.plans import catalog_currency
from billing_app.services import admin
from billing_app.services.invoices import (
    INVOICE_STATUSES,
    admin_filter,
    check_admin_filter,
    settlement,
)
from billing_app.services.money import minor_digits

# Rows read, and written out, at a time.
CHUNK = 1000
UNLIMITED = "unlimited"
BOM = "\ufeff"
USER_COLUMNS = (
    "id",
    "email",
    "name",
    "role",
    "plan",
    "status",
    "period_end",
    "cancels_at",
    "joined",
    *(f"{m}_{part}" for m in METRICS for part in ("used", "limit")),
    # Last, so the columns before keep their places for files read by position.
    "amount_owed",
    "currency",
)
INVOICE_COLUMNS = (
    "number",
    "stripe_invoice_id",
    "customer_email",
    "status",
    "currency",
    "total",
    "amount_due",
    "amount_paid",
    "amount_remaining",
    "paid_from_balance",
    "credited_to_balance",
    "created",
    "period_start",
    "period_end",
    "hosted_invoice_url",
    "invoice_pdf",
    # What it bills for, as the invoices tab says it (migration 0017); last, so a reader
    # by position keeps its columns.
    "description",
)
# What spreadsheets read as the start of a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def filename(kind: str) -> str:
    """`users-2026-11-15.csv`: the kind and today's UTC date."""
    return f"{kind}-{utcnow().date().isoformat()}.csv"


def iso_utc(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_utc_sql(column: Any, dialect: str) -> Any:
    """A UTCDateTime column as iso_utc writes it, ISO 8601 UTC text to the second,
    `2026-11-15T12:00:00Z`, NULL staying NULL, formatted by the database. SQLite holds
    the naive UTC text SQLAlchemy wrote; PostgreSQL's timestamptz is shifted to UTC."""
    if dialect == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        return sa.func.to_char(utc, sa.literal_column('\'YYYY-MM-DD"T"HH24:MI:SS"Z"\''))
    return sa.func.strftime(sa.literal_column("'%Y-%m-%dT%H:%M:%SZ'"), column)


def text(value: str | None) -> str | None:
    """Text as a spreadsheet should show it: a leading quote on what could start a
    formula. None stays None, which csv writes as an empty cell."""
    if value and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(
    header: Iterable[str], rows: Iterable[Iterable[Any]], chunk: int = CHUNK
) -> Iterator[str]:
    """The CSV text (csv module, RFC 4180's CRLF) of a byte order mark, the header and
    rows already made cells, `chunk` rows per piece; the first piece comes with the first
    chunk of rows (or the end)."""
    buf = io.StringIO()
    buf.write(BOM)
    writer = csv.writer(buf)
    writer.writerow(header)
    rows = iter(rows)
    while batch := list(islice(rows, chunk)):
        writer.writerows(batch)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue()


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def user_rows(
    session: Session, filters: admin.UserFilters, *, chunk: int = CHUNK
) -> Iterator[list[Any]]:
    """USER_COLUMNS for every user the users list's `filters` match, in its order.

    `period_end` (when it renews) and `cancels_at` (when, set to cancel, it ends: the
    list's "Cancels on") are the live subscription's (active, trialing, past_due);
    usage is this period's, limits are the user's own (plan or admin override);
    `amount_owed` is what the list's row says is owed on failed payments (0.00 when
    nothing), in the catalog's `currency`."""
    dialect = _dialect(session)
    n = len(METRICS) * 2
    currency = catalog_currency()
    places = minor_digits(currency)
    rows = admin.iter_users(
        session, filters, chunk=chunk, joined=lambda created: iso_utc_sql(created, dialect)
    )
    for uid, email, name, role, plan, status, period_end, ends_at, joined, *usage, owed in rows:
        for i in range(1, n, 2):  # the limits: 0 is no limit
            if usage[i] == 0:
                usage[i] = UNLIMITED
        yield [
            uid,
            text(email),
            text(name),
            text(role),
            text(plan),
            text(status),
            iso_utc(period_end),
            iso_utc(ends_at),
            joined,
            *usage,
            Decimal(owed).scaleb(-places),
            currency.upper(),
        ]


def users_csv(session: Session, filters: admin.UserFilters, *, chunk: int = CHUNK) -> Iterator[str]:
    """The users export as CSV text, a chunk of rows at a time."""
    return write_csv(USER_COLUMNS, user_rows(session, filters, chunk=chunk), chunk)


def invoice_rows(
    session: Session,
    *,
    status: str | None = None,
    user_id: int | None = None,
    chunk: int = CHUNK,
) -> Iterator[list[Any]]:
    """INVOICE_COLUMNS for every invoice the invoices tab's filter `status` (None: all;
    invoices.ADMIN_FILTERS, by badge: "paid" without credits, "credit") lists, of one
    customer's (`user_id`) or everyone's, newest first as on the tab. The `status` column
    is Stripe's: a credit's is paid (or open)."""
    check_admin_filter(status)
    dialect = _dialect(session)
    stmt = (
        select(
            Invoice.number,
            Invoice.stripe_invoice_id,
            User.email,
            Invoice.status,
            Invoice.currency,
            Invoice.amount_due,
            Invoice.amount_paid,
            Invoice.total,
            Invoice.amount_remaining,
            Invoice.starting_balance,
            iso_utc_sql(Invoice.created_at, dialect),
            iso_utc_sql(Invoice.period_start, dialect),
            iso_utc_sql(Invoice.period_end, dialect),
            Invoice.hosted_invoice_url,
            Invoice.invoice_pdf,
            Invoice.description,
        )
        .join(User, col(User.id) == col(Invoice.user_id))
        .where(col(Invoice.status).in_(INVOICE_STATUSES))
        .order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc())
    )
    if status is not None:
        stmt = stmt.where(admin_filter(status))
    if user_id is not None:
        stmt = stmt.where(col(Invoice.user_id) == user_id)
    digits: dict[str, int] = {}
    for part in session.exec(stmt.execution_options(yield_per=chunk)).partitions():
        for (number, sid, email, st, cur, due, paid, total, remaining, balance,
             created, start, end, url, pdf, description) in part:  # fmt: skip
            places = digits.get(cur)
            if places is None:
                places = digits[cur] = minor_digits(cur)
            money = settlement(
                status=st,
                amount_due=due,
                amount_paid=paid,
                total=total,
                amount_remaining=remaining,
                starting_balance=balance,
            )
            yield [
                text(number),
                text(sid),
                text(email),
                text(st),
                text(cur.upper()),
                # money.to_decimal, its digits looked up once per currency
                Decimal(money.total).scaleb(-places),
                Decimal(due).scaleb(-places),
                Decimal(paid).scaleb(-places),
                Decimal(money.amount_remaining).scaleb(-places),
                Decimal(money.paid_from_balance).scaleb(-places),
                Decimal(money.credited_to_balance).scaleb(-places),
                created,
                start,
                end,
                text(url),
                text(pdf),
                text(description),
            ]


def invoices_csv(
    session: Session, *, status: str | None = None, user_id: int | None = None, chunk: int = CHUNK
) -> Iterator[str]:
    """The invoices export as CSV text, a chunk of rows at a time; ValidationFailed for an
    unknown status, before anything is written."""
    check_admin_filter(status)
    rows = invoice_rows(session, status=status, user_id=user_id, chunk=chunk)
    return write_csv(INVOICE_COLUMNS, rows, chunk)
