"""Admin endpoints: the role is checked on the server for every request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from sqlmodel import Session

from billing_app.api import schemas as s
from billing_app.api.billing_routes import invoices_page, page_out
from billing_app.api.deps import admin_user, db_session
from billing_app.services import admin, api_keys, quotas
from billing_app.services.dto import ApiKeyDTO, UserDTO

router = APIRouter(prefix="/api/billing/admin", tags=["admin"], responses=s.errors(*s.COMMON, 404))


def _id() -> object:
    """A fresh Path() per parameter (FastAPI binds a FieldInfo to the first name using it)."""
    return Path(ge=1, le=s.MAX_ID)


def key_out(k: ApiKeyDTO) -> dict[str, Any]:
    return {**k.to_dict(), "kind": k.kind}


@router.get("/users", response_model=s.AdminUserPage)
def users(
    q: str | None = Query(default=None, max_length=320, description="email prefix, or @domain"),
    plan: str | None = Query(default=None, max_length=32),
    status: str | None = Query(default=None, max_length=32, description="subscription status"),
    sort: str = Query(default="email", max_length=32, description=", ".join(admin.SORT_KEYS)),
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=50, ge=1, le=admin.MAX_PER_PAGE),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    result = admin.list_users(
        session, q=q, plan=plan, status=status, sort=sort, page=page, per_page=per_page
    )
    return page_out(result)


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


@router.put("/users/{user_id}/quota", response_model=s.QuotaOut)
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


@router.get("/invoices", response_model=s.InvoicePage)
def invoices(
    status: str | None = Query(default=None, max_length=32),
    user_id: int | None = Query(default=None, ge=1, le=s.MAX_ID),
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=50, ge=1, le=100),
    _admin: UserDTO = Depends(admin_user),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    return page_out(
        invoices_page(session, user_id=user_id, status=status, page=page, per_page=per_page)
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
