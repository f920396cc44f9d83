"""CSV exports for the admin console: the users its list's filters match, the invoices
its invoices tab's filter matches; every row, not one page.

Streamed: rows are read a chunk at a time from one statement (admin.iter_users, or the
invoices query with yield_per) and written out a chunk at a time, so memory stays flat
however many rows match. The caller gives the session and owns its transaction: the API
reads in a read session, which holds no write lock (on PostgreSQL in one REPEATABLE
READ transaction, which the server-side cursor needs, so the file is one snapshot).

The cells, for a spreadsheet:
- times are ISO 8601 in UTC to the second (`2026-11-15T12:00:00Z`), empty when unset;
- a limit of 0 (unlimited) is written `unlimited`, never 0 or an empty cell;
- amounts are decimal amounts of the invoice's currency (1900 usd is `19.00`, 1500 jpy
  `1500`, 12345 kwd `12.345`), its code (`USD`) in a column of its own; `total` is
  negative for a credit to the customer's balance (a downgrade's proration), which
  `credited_to_balance` repeats as a positive amount;
- text a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a tab
  or a carriage return: an email like `=HYPERLINK(...)@evil.test` can sign up) is
  written with a leading single quote, which spreadsheets show as text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from billing_app.clock import as_utc, utcnow
from billing_app.errors import ValidationFailed
from billing_app.metrics import METRICS
from billing_app.models import Invoice, User
from billing_app.services import admin
from billing_app.services.invoices import INVOICE_STATUSES, settlement
from billing_app.services.money import to_decimal
from billing_app.services.subscriptions import LIVE_STATUSES

# Rows read, and written out, at a time.
CHUNK = 1000
UNLIMITED = "unlimited"
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
)
# What spreadsheets read as the start of a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def filename(kind: str) -> str:
    """`users-2026-11-15.csv`: the kind and today's UTC date."""
    return f"{kind}-{utcnow().date().isoformat()}.csv"


def iso_utc(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def cell(value: Any) -> Any:
    """A value as the CSV writes it: None empty, times ISO 8601 UTC, text that could
    start a formula quoted. Numbers stay numbers (a negative amount is not text)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    return value


def write_csv(
    header: Iterable[str], rows: Iterable[Iterable[Any]], chunk: int = CHUNK
) -> Iterator[str]:
    """The CSV text of the header and rows (csv module, RFC 4180's CRLF), `chunk` rows
    per piece; the first piece comes with the first chunk of rows (or the end)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    n = 0
    for row in rows:
        writer.writerow([cell(v) for v in row])
        n += 1
        if n % chunk == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue()


def user_rows(
    session: Session, filters: admin.UserFilters, *, chunk: int = CHUNK
) -> Iterator[list[Any]]:
    """USER_COLUMNS for every user the users list's `filters` match, in its order.

    `period_end` (when it renews) and `cancels_at` (when, set to cancel, it ends: the
    list's "Cancels on") are the live subscription's (active, trialing, past_due);
    usage is this period's, limits are the user's own (plan or admin override)."""
    for row, sub in admin.iter_users(session, filters, chunk=chunk):
        live = sub is not None and sub.status in LIVE_STATUSES
        usage: list[Any] = []
        for m in row.usage:
            usage += [m["used"], UNLIMITED if m["unlimited"] else m["limit"]]
        yield [
            row.id,
            row.email,
            row.display_name,
            row.role,
            row.plan,
            row.status,
            sub.current_period_end if live and sub is not None else None,
            row.ends_at,
            row.created_at,
            *usage,
        ]


def users_csv(session: Session, filters: admin.UserFilters, *, chunk: int = CHUNK) -> Iterator[str]:
    """The users export as CSV text, a chunk of rows at a time."""
    return write_csv(USER_COLUMNS, user_rows(session, filters, chunk=chunk), chunk)


def check_invoice_status(status: str | None) -> None:
    if status is not None and status not in INVOICE_STATUSES:
        raise ValidationFailed(
            f"Unknown invoice status {status!r}; expected one of: {', '.join(INVOICE_STATUSES)}.",
            field="status",
        )


def invoice_rows(
    session: Session, *, status: str | None = None, chunk: int = CHUNK
) -> Iterator[list[Any]]:
    """INVOICE_COLUMNS for every invoice with `status` (None: all), newest first as on
    the invoices tab."""
    check_invoice_status(status)
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
            Invoice.created_at,
            Invoice.period_start,
            Invoice.period_end,
            Invoice.hosted_invoice_url,
            Invoice.invoice_pdf,
        )
        .join(User, col(User.id) == col(Invoice.user_id))
        .where(col(Invoice.status).in_(INVOICE_STATUSES))
        .order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc())
    )
    if status is not None:
        stmt = stmt.where(Invoice.status == status)
    for part in session.exec(stmt.execution_options(yield_per=chunk)).partitions():
        for (number, sid, email, st, cur, due, paid, total, remaining, balance,
             created, start, end, url, pdf) in part:  # fmt: skip
            money = settlement(
                status=st,
                amount_due=due,
                amount_paid=paid,
                total=total,
                amount_remaining=remaining,
                starting_balance=balance,
            )
            yield [
                number,
                sid,
                email,
                st,
                cur.upper(),
                to_decimal(money.total, cur),
                to_decimal(due, cur),
                to_decimal(paid, cur),
                to_decimal(money.amount_remaining, cur),
                to_decimal(money.paid_from_balance, cur),
                to_decimal(money.credited_to_balance, cur),
                created,
                start,
                end,
                url,
                pdf,
            ]


def invoices_csv(
    session: Session, *, status: str | None = None, chunk: int = CHUNK
) -> Iterator[str]:
    """The invoices export as CSV text, a chunk of rows at a time; ValidationFailed for an
    unknown status, before anything is written."""
    check_invoice_status(status)
    return write_csv(INVOICE_COLUMNS, invoice_rows(session, status=status, chunk=chunk), chunk)
