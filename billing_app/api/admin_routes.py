"""Admin endpoints: the role is checked on the server for every request."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlmodel import Session
from starlette.responses import StreamingResponse

from billing_app.api import schemas as s
from billing_app.api.billing_routes import page_out
from billing_app.api.deps import admin_user, db_session
from billing_app.db import read_session
from billing_app.services import admin, api_keys, exports, quotas
from billing_app.services import invoices as invoice_service
from billing_app.services.dto import ApiKeyDTO, UserDTO

log = logging.getLogger("billing_app.api")
router = APIRouter(prefix="/api/billing/admin", tags=["admin"], responses=s.errors(*s.COMMON, 404))


def _id() -> object:
    """A fresh Path() per parameter (FastAPI binds a FieldInfo to the first name using it)."""
    return Path(ge=1, le=s.MAX_ID)


def key_out(k: ApiKeyDTO) -> dict[str, Any]:
    return {**k.to_dict(), "kind": k.kind}


def user_filters(
    q: str | None = Query(default=None, max_length=320, description="email prefix, or @domain"),
    plan: str | None = Query(default=None, max_length=32),
    status: str | None = Query(default=None, max_length=32, description="subscription status"),
    usage: str | None = Query(
        default=None,
        max_length=32,
        description="over (a metered limit reached), near (80%+ of one, over included), "
        "override (an admin's quota override)",
    ),
    sort: str = Query(default="email", max_length=32, description=", ".join(admin.SORT_KEYS)),
) -> admin.UserFilters:
    """The users list's query parameters, shared by the list and its export."""
    return admin.UserFilters(q=q, plan=plan, status=status, usage=usage, sort=sort)


@router.get("/users", response_model=s.AdminUserPage)
def users(
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=50, ge=1, le=admin.MAX_PER_PAGE),
    filters: admin.UserFilters = Depends(user_filters),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    return page_out(admin.list_users(session, filters, page=page, per_page=per_page))


class CSVResponse(StreamingResponse):
    media_type = "text/csv"  # what OpenAPI names; the header says charset=utf-8


# The file, and the errors in their JSON shape: FastAPI would document a `model` under
# the route's own media type (text/csv).
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV (RFC 4180), a header row and every matching row, as an attachment",
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "headers": {
            "Content-Disposition": {
                "description": 'attachment; filename="<users|invoices>-<UTC date>.csv"',
                "schema": {"type": "string"},
            }
        },
    },
    **{
        status: {
            "description": doc["description"],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
            **({"headers": doc["headers"]} if "headers" in doc else {}),
        }
        for status, doc in s.errors(*s.COMMON, 404).items()
    },
}


@contextmanager
def export_session() -> Iterator[Session]:
    """A read session for an export: on SQLite it holds no write lock (BEGIN DEFERRED);
    on PostgreSQL one read-only REPEATABLE READ transaction, which the server-side cursor
    needs (the read pool is in autocommit) and which makes the file one snapshot."""
    with read_session() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(
                execution_options={
                    "isolation_level": "REPEATABLE READ",
                    "postgresql_readonly": True,
                }
            )
        yield session


def _csv_rows(write: Callable[[Session], Iterator[str]]) -> Iterator[str]:
    with export_session() as session:
        yield from write(session)


# An HTTP/1.0 download is written here first: up to this much in memory, the rest in a
# temporary file.
SPOOL_IN_MEMORY = 1 << 20


def _streamed(kind: str, first: str, rest: Iterator[str]) -> Iterator[str]:
    """The pieces, with a failure after the first (the status is sent by then) logged and
    raised on: the server then drops the connection before the chunked body's last chunk,
    so the client sees a failed download, never a file that merely ends early."""
    sent = len(first)
    yield first
    try:
        for piece in rest:
            yield piece
            sent += len(piece)
    except Exception:
        log.exception("%s.csv export failed after %d characters; download aborted", kind, sent)
        raise


def _spooled(first: str, rest: Iterator[str]) -> tuple[Iterator[bytes], int]:
    """The whole file written before anything is sent, and its length. For HTTP/1.0,
    where there is no chunked encoding: the body ends when the connection closes, so a
    file cut short would look whole. A failure here is still a 503 (or 500)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    try:
        spool.write(first.encode())
        for piece in rest:
            spool.write(piece.encode())
    except BaseException:
        spool.close()
        raise
    size = spool.tell()
    spool.seek(0)

    def body() -> Iterator[bytes]:
        with spool:
            while data := spool.read(1 << 16):
                yield data

    return body(), size


def csv_response(
    kind: str,
    write: Callable[[Session], Iterator[str]],
    request_session: Session,
    request: Request,
) -> CSVResponse:
    """The CSV that `write` streams from a session of its own, as the attachment
    `<kind>-<UTC date>.csv`.

    The request's session (authentication's) is closed first: whatever transaction it
    left open would otherwise last as long as the download, since FastAPI closes it only
    after the response; on SQLite a write transaction holds the write lock. (Reading the
    signed-in user back after auth's rollback begins one.) The first chunk is read here,
    before the status is sent: a refused filter is a 422 and a database down a 503, not
    a 200 cut short. A failure after it aborts the download (_streamed)."""
    request_session.close()
    rows = _csv_rows(write)
    first = next(rows)
    headers = {
        "Content-Disposition": f'attachment; filename="{exports.filename(kind)}"',
        "Cache-Control": "no-store",
    }
    if request.scope.get("http_version") == "1.0":
        body, size = _spooled(first, rows)
        headers["Content-Length"] = str(size)
        return CSVResponse(body, media_type="text/csv; charset=utf-8", headers=headers)
    return CSVResponse(
        _streamed(kind, first, rows), media_type="text/csv; charset=utf-8", headers=headers
    )


@router.get("/users.csv", response_class=CSVResponse, responses=CSV_RESPONSES)
def users_csv(
    request: Request,
    filters: admin.UserFilters = Depends(user_filters),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> CSVResponse:
    """Every user the users list's filters match, in its order, as CSV (streamed): id,
    email, name, role, plan, status, period_end, cancels_at, joined, then `<metric>_used`
    and `<metric>_limit` per metric (`unlimited` for no limit). Times ISO 8601 UTC; text
    that could start a spreadsheet formula is prefixed with a single quote."""
    return csv_response(
        "users", lambda export: exports.users_csv(export, filters), session, request
    )


@router.get("/stats", response_model=s.StatsOut)
def stats(
    _admin: UserDTO = Depends(admin_user), session: Session = Depends(db_session)
) -> dict[str, Any]:
    """Subscribers per plan, MRR (minor units), failed payments, total users."""
    return admin.headline_stats(session)


@router.get("/users/{user_id}", response_model=s.AdminUserDetailOut)
def user_detail(
    user_id: int = _id(),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    return admin.user_detail(session, user_id).to_dict()


@router.put(
    "/users/{user_id}/quota",
    response_model=s.QuotaOut,
    responses={
        409: {
            "model": s.ErrorResponse,
            "description": "`quota_busy`: another change holds this quota for more than "
            "5 s; nothing written, try again",
        }
    },
)
def override_quota(
    body: s.QuotaOverrideIn,
    user_id: int = _id(),
    actor: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Override one limit (0 = unlimited; null clears the override); kept in the audit log."""
    return quotas.set_override(
        session, user_id, body.metric, body.limit, body.reason, actor_user_id=actor.id
    ).to_dict()


INVOICE_FILTER_DOC = (
    "the console's filter, by badge: "
    + ", ".join(invoice_service.ADMIN_FILTERS)
    + " (paid and open leave out credits: a negative total)"
)


@router.get("/invoices", response_model=s.InvoicePage)
def invoices(
    status: str | None = Query(default=None, max_length=32, description=INVOICE_FILTER_DOC),
    user_id: int | None = Query(default=None, ge=1, le=s.MAX_ID),
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=50, ge=1, le=100),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Every user's invoices (or `user_id`'s), newest first. `status` filters as the
    console does: `credit` lists credits to the balance (negative total; their `status`
    is Stripe's, paid or open), `paid` and `open` the others."""
    return page_out(
        invoice_service.list_invoices(
            session, user_id=user_id, shown=status, page=page, per_page=per_page
        )
    )


@router.get("/invoices.csv", response_class=CSVResponse, responses=CSV_RESPONSES)
def invoices_csv(
    request: Request,
    status: str | None = Query(default=None, max_length=32, description=INVOICE_FILTER_DOC),
    user_id: int | None = Query(default=None, ge=1, le=s.MAX_ID),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> CSVResponse:
    """Every invoice the `status` filter lists (all without; as GET /invoices), of
    `user_id`'s or everyone's, newest first, as CSV (streamed): number,
    stripe_invoice_id, customer_email, status, currency (its code), total (negative: a
    credit to the balance), amount_due, amount_paid, amount_remaining, paid_from_balance
    and credited_to_balance (decimal amounts of that currency), created, period_start, period_end,
    hosted_invoice_url, invoice_pdf."""
    return csv_response(
        "invoices",
        lambda export: exports.invoices_csv(export, status=status, user_id=user_id),
        session,
        request,
    )


@router.post("/api-keys", status_code=201, response_model=s.ApiKeyCreatedOut)
def create_api_key(
    body: s.ApiKeyIn,
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Create a service key (`service_name`) or a user key (`user_id`); the secret is shown
    once."""
    key, secret = api_keys.create_key(
        session,
        name=body.name,
        user_id=body.user_id,
        service_name=body.service_name,
        scopes=body.scopes,
    )
    return {**key_out(key), "secret": secret}


@router.get("/api-keys", response_model=s.ApiKeyListOut)
def list_api_keys(
    user_id: int | None = Query(default=None, ge=1, le=s.MAX_ID),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    return {"items": [key_out(k) for k in api_keys.list_keys(session, user_id)]}


@router.delete("/api-keys/{key_id}", response_model=s.ApiKeyOut)
def revoke_api_key(
    key_id: int = _id(),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    return key_out(api_keys.revoke_key(session, key_id))
