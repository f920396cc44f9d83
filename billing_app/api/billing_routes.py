"""End-user billing endpoints (session cookie or the user's own API key), and the usage
and quota reads that services share with them.

The read-only ones need `usage:read` from a scoped key; checkout and portal take
`current_user`, which refuses any scoped key.

The reads (GET /usage, /quota, /subscription, /invoices) answer for one user: a
service key names the user in `?user_id=`, a session or user key reads its own
(`user_id` omitted or its own id; another user's is 403): `deps.usage_subject`, which
the fast lane shares.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from billing_app.api import schemas as s
from billing_app.api.deps import (
    current_user,
    db_session,
    usage_caller,
    usage_subject,
)
from billing_app.db import read_session
from billing_app.errors import ValidationFailed
from billing_app.plans import PAID_PLAN_KEYS, get_catalog
from billing_app.services import billing, metering, quotas, subscriptions, users
from billing_app.services.dto import DTO, Page, Principal, UserDTO
from billing_app.services.invoices import list_invoices
from billing_app.services.subscriptions import current_subscription, plan_key_for

router = APIRouter(prefix="/api/billing", tags=["billing"], responses=s.errors(*s.COMMON))

_USER_ID_DOC = (
    "Whose: required with a service key, which reads any user's (404 "
    "`user_not_found` for an unknown one). A session or a user's key reads its own "
    "user's: omit it or give its own id; another user's id is 403."
)
UserIdQuery = Annotated[int | None, Query(gt=0, le=s.MAX_ID, description=_USER_ID_DOC)]
_UNKNOWN_USER = {
    404: {"model": s.ErrorResponse, "description": "No user has this `user_id` (service keys)"}
}


def as_dict(obj: DTO | None) -> dict[str, Any] | None:
    return None if obj is None else obj.to_dict()


def page_out(page: Page) -> dict[str, Any]:
    return {
        "items": [as_dict(i) for i in page.items],
        "total": page.total,
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
    }


def invoices_page(
    session: Session,
    *,
    user_id: int | None,
    status: str | None,
    page: int,
    per_page: int,
    customer_view: bool = False,
) -> Page:
    return list_invoices(
        session,
        user_id=user_id,
        status=status,
        page=page,
        per_page=per_page,
        customer_view=customer_view,
    )


@router.post("/checkout", response_model=s.UrlOut, responses=s.errors(409, 502))
def checkout(
    body: s.CheckoutIn,
    user: UserDTO = Depends(current_user),
    session: Session = Depends(db_session),
) -> dict[str, str]:
    """Start Stripe Checkout for a paid plan; redirect the browser to `url`."""
    if body.plan not in PAID_PLAN_KEYS:
        raise ValidationFailed(
            f"plan must be one of: {', '.join(PAID_PLAN_KEYS)}.", field="plan", plan=body.plan
        )
    return {"url": billing.create_checkout_session(session, user.id, body.plan)}


@router.post("/portal", response_model=s.UrlOut, responses=s.errors(409, 502))
def portal(
    user: UserDTO = Depends(current_user), session: Session = Depends(db_session)
) -> dict[str, str]:
    """Open the Stripe customer portal for the signed-in user."""
    return {"url": billing.create_portal_session(session, user.id)}


@router.get("/subscription", response_model=s.SubscriptionOut, responses=_UNKNOWN_USER)
def subscription(
    user_id: UserIdQuery = None,
    p: Principal = Depends(usage_caller),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """The plan and current subscription of the caller's own user or, with a service
    key, of the user `user_id` names."""
    uid = usage_subject(p, user_id)
    users.get_user(session, uid)  # 404 for an unknown user
    plan = get_catalog()[plan_key_for(current_subscription(session, uid))]
    sub = as_dict(subscriptions.get_subscription_dto(session, uid))
    session.rollback()
    return {"plan": plan.key, "plan_name": plan.name, "subscription": sub}


@router.get("/quota", response_model=s.QuotasOut, responses=_UNKNOWN_USER)
def quota(
    user_id: UserIdQuery = None,
    p: Principal = Depends(usage_caller),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Limits per metric (plan or admin override) with this period's usage, for the
    caller's own user or, with a service key, the user `user_id` names."""
    uid = usage_subject(p, user_id)
    plan_key = plan_key_for(current_subscription(session, uid))
    meters = {m.metric: m for m in metering.summary(session, uid)}  # 404 for an unknown user
    out = []
    for q in quotas.get_quotas(session, uid):
        m = meters[q.metric]
        out.append(
            {**q.to_dict(), "used": m.used, "remaining": m.remaining, "resets_at": m.resets_at}
        )
    return {"plan": plan_key, "quotas": out}


@router.get("/usage", response_model=s.UsageSummaryOut, responses=_UNKNOWN_USER)
def usage(
    history: Literal["daily"] | None = Query(default=None, description="daily: per-day series"),
    user_id: UserIdQuery = None,
    p: Principal = Depends(usage_caller),
) -> dict[str, Any]:
    """This period per metric: used, limit, remaining, percent, resets_at; for the
    caller's own user or, with a service key, the user `user_id` names."""
    return usage_summary(usage_subject(p, user_id), history == "daily")


def usage_summary(user_id: int, history: bool) -> dict[str, Any]:
    """Blocking; shared with the fast lane (api/fast_lane.py). UserNotFound (404) for
    an unknown user, from metering.summary: no lookup of its own."""
    with read_session() as session:
        out: dict[str, Any] = {
            "plan": plan_key_for(current_subscription(session, user_id)),
            "metrics": [m.to_dict() for m in metering.summary(session, user_id)],
        }
        if history:
            out["history"] = [d.to_dict() for d in metering.daily_history(session, user_id)]
    return out


@router.get("/invoices", response_model=s.InvoicePage, responses=_UNKNOWN_USER)
def invoices(
    status: str | None = Query(default=None, max_length=32),
    page: int = Query(default=1, ge=1, le=100_000),
    per_page: int = Query(default=20, ge=1, le=100),
    user_id: UserIdQuery = None,
    p: Principal = Depends(usage_caller),
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """The invoices of the caller's own user or, with a service key, of the user
    `user_id` names; newest first, drafts left out."""
    uid = usage_subject(p, user_id)
    users.get_user(session, uid)  # 404 for an unknown user
    return page_out(
        invoices_page(
            session,
            user_id=uid,
            status=status,
            page=page,
            per_page=per_page,
            customer_view=True,
        )
    )
