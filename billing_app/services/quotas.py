"""Quota limits: from the user's plan, unless an admin override wins."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from billing_app.clock import utcnow
from billing_app.errors import NotFound, QuotaBusy, UnknownMetric, ValidationFailed
from billing_app.metrics import MAX_LIMIT, METRICS
from billing_app.models import Quota, QuotaAudit, User
from billing_app.models.types import UTCDateTime
from billing_app.plans import get_catalog
from billing_app.services import subscriptions
from billing_app.services.dto import QuotaDTO

# The audit reason of a reset to the plan's limit when the admin gave none.
RESET_REASON = "Reset to plan"


def _to_dto(q: Quota) -> QuotaDTO:
    return QuotaDTO(
        metric=q.metric,
        limit=q.limit,
        unlimited=q.limit == 0,
        source=q.source,
        plan_limit=q.plan_limit,
        reason=q.reason,
    )


def apply_plan(session: Session, user_id: int, plan_key: str) -> None:
    """Set the plan's limits on every metric; admin overrides stay. Caller commits."""
    plan = get_catalog()[plan_key]
    existing = {
        q.metric: q for q in session.exec(select(Quota).where(Quota.user_id == user_id)).all()
    }
    now = utcnow()
    for metric in METRICS:
        limit = plan.limit_for(metric)
        q = existing.get(metric)
        if q is None:
            session.add(
                Quota(user_id=user_id, metric=metric, limit=limit, plan_limit=limit, updated_at=now)
            )
            continue
        if q.plan_limit == limit and (q.source == "admin" or q.limit == limit):
            continue
        # The limit follows the plan by the row's source when written, not as read
        # (unlocked): an admin's override or reset committed in between stays.
        session.execute(
            sa.update(Quota)
            .where(col(Quota.id) == q.id)
            .values(
                plan_limit=limit,
                limit=sa.case((col(Quota.source) == "plan", limit), else_=col(Quota.limit)),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        session.expire(q)
    session.flush()


def apply_catalog(session: Session) -> int:
    """Every user's plan limits as the plan catalog (BILLING_PLANS_JSON) says now, so a
    changed limit reaches the users already on a plan, not only those who change plan
    later; admin overrides stay (their `plan_limit` follows). A few set-based UPDATEs per
    plan and metric, whatever the number of users. Returns the rows changed; caller
    commits. Rows a user lacks are left to `apply_missing`."""
    cur = subscriptions.current_table()
    on_plan = (
        select(User.id.label("user_id"), subscriptions.granted_plan(cur).label("plan"))
        .select_from(User)
        .outerjoin(cur, sa.and_(cur.c.user_id == User.id, cur.c.rn == 1))
        .subquery("on_plan")
    )
    now, changed = utcnow(), 0
    for key, plan in get_catalog().items():
        users = select(on_plan.c.user_id).where(on_plan.c.plan == key)
        for metric in METRICS:
            limit = plan.limit_for(metric)
            result = session.execute(
                sa.update(Quota)
                .where(
                    col(Quota.metric) == metric,
                    col(Quota.user_id).in_(users),
                    sa.or_(
                        col(Quota.plan_limit) != limit,
                        sa.and_(col(Quota.source) == "plan", col(Quota.limit) != limit),
                    ),
                )
                .values(
                    plan_limit=limit,
                    limit=sa.case((col(Quota.source) == "plan", limit), else_=col(Quota.limit)),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            changed += result.rowcount or 0
            # A user lacking the metric's row (created before the metric existed) would be
            # metered at Free's limit: give it the plan's.
            missing = (
                select(
                    on_plan.c.user_id,
                    sa.literal(metric),
                    sa.literal(limit),
                    sa.literal(limit),
                    sa.literal("plan"),
                    sa.literal(now, UTCDateTime()),
                )
                .where(on_plan.c.plan == key)
                .where(
                    ~sa.exists().where(
                        col(Quota.user_id) == on_plan.c.user_id, col(Quota.metric) == metric
                    )
                )
            )
            result = session.execute(
                sa.insert(Quota).from_select(
                    ["user_id", "metric", "limit", "plan_limit", "source", "updated_at"], missing
                )
            )
            changed += max(result.rowcount or 0, 0)  # -1: the driver does not count
    return changed


# Serialization failure, deadlock, and a row another worker's start inserted meanwhile.
RETRIED = ("40001", "40P01", "23505")


def apply_catalog_now() -> int:
    """One `apply_catalog` in its own transaction (the app's start), retried when another
    transaction changed the same rows meanwhile (on PostgreSQL)."""
    from billing_app.db import session_scope

    for attempt in range(5):
        with session_scope() as session:
            if session.get_bind().dialect.name == "postgresql":
                # One snapshot for the plans read and the rows written: a plan change
                # committed meanwhile (a webhook, another worker's start) is then a
                # serialization failure, retried, rather than overwritten with the plan the
                # user had (READ COMMITTED re-checks only the quota row, not the plan).
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            try:
                changed = apply_catalog(session)
                session.commit()
            except DBAPIError as err:
                if getattr(err.orig, "sqlstate", None) not in RETRIED or attempt == 4:
                    raise
                session.rollback()
                continue
        return changed
    raise AssertionError("unreachable")


def limit_for(session: Session, user_id: int, metric: str) -> int | None:
    """The effective limit (0 = unlimited), or None when the user has no quota row."""
    return session.exec(
        select(Quota.limit).where(Quota.user_id == user_id, Quota.metric == metric)
    ).first()


def get_quotas(session: Session, user_id: int) -> list[QuotaDTO]:
    rows = {q.metric: q for q in session.exec(select(Quota).where(Quota.user_id == user_id)).all()}
    free = get_catalog()["free"]
    out = []
    for metric in METRICS:
        q = rows.get(metric)
        if q is None:  # a user created before this metric existed: the free plan applies
            lim = free.limit_for(metric)
            out.append(QuotaDTO(metric, lim, lim == 0, "plan", lim, None))
        else:
            out.append(_to_dto(q))
    return out


# How long set_override waits for a quota row another transaction holds (PostgreSQL),
# under Reflex's state lock expiry (10 s by default) and a person's patience.
OVERRIDE_LOCK_TIMEOUT = "5s"
LOCK_NOT_AVAILABLE = "55P03"


def set_override(
    session: Session,
    user_id: int,
    metric: str,
    limit: int | None,
    reason: str | None = None,
    actor_user_id: int | None = None,
) -> QuotaDTO:
    """Override one limit (0 = unlimited); `limit=None` removes the override.

    An override needs a reason; a reset does not (it is logged as RESET_REASON).
    """
    if metric not in METRICS:
        raise UnknownMetric(
            f"Unknown metric {metric!r}; expected one of: {', '.join(METRICS)}.", metric=metric
        )
    # The path names the user: an unknown one is a 404 whatever the body lacks.
    if session.get(User, user_id) is None:
        raise NotFound(f"No user with id {user_id}.", user_id=user_id)
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT
    ):
        raise ValidationFailed(
            f"Limit must be a whole number from 0 (unlimited) to {MAX_LIMIT:,}.", field="limit"
        )
    if limit is None and (reason is None or (isinstance(reason, str) and not reason.strip())):
        reason = RESET_REASON
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationFailed("A reason is required for a quota override.", field="reason")
    if len(reason) > 500:
        raise ValidationFailed("Reason is longer than 500 characters.", field="reason")
    apply_missing(session, user_id)
    # Locked (PostgreSQL; SQLite's write lock is taken at BEGIN): two admins at once each
    # log the limit the other left as `old_limit`, and the last write wins. Waiting at most
    # OVERRIDE_LOCK_TIMEOUT: a row held longer (a stuck transaction) would hold the page's
    # thread and its tab, past Reflex's state lock expiry with Redis, for as long as it is.
    if session.get_bind().dialect.name == "postgresql":
        session.exec(sa.text(f"SET LOCAL lock_timeout = '{OVERRIDE_LOCK_TIMEOUT}'"))
    try:
        q = session.exec(
            select(Quota).where(Quota.user_id == user_id, Quota.metric == metric).with_for_update()
        ).one()
    except DBAPIError as err:
        if getattr(err.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        session.rollback()
        raise QuotaBusy(
            "Another change to this quota is still being saved. Try again in a moment.",
            user_id=user_id,
            metric=metric,
        ) from None
    old = q.limit
    if limit is None and q.source != "admin":
        # Nothing to reset: no audit row saying "10 → 10 · Reset to plan".
        unchanged = _to_dto(q)
        session.rollback()  # the row lock's transaction
        return unchanged
    if limit is None:
        q.limit, q.source = q.plan_limit, "plan"
    else:
        q.limit, q.source = limit, "admin"
    q.reason = reason.strip()
    q.updated_at = utcnow()
    session.add(q)
    session.add(
        QuotaAudit(
            user_id=user_id,
            metric=metric,
            old_limit=old,
            new_limit=q.limit,
            reason=reason.strip(),
            actor_user_id=actor_user_id,
        )
    )
    session.commit()
    return _to_dto(q)


def apply_missing(session: Session, user_id: int) -> None:
    """Give a user quota rows for metrics they lack (new metric added), from the free plan."""
    have = set(session.exec(select(Quota.metric).where(Quota.user_id == user_id)).all())
    if set(METRICS) - have:
        from billing_app.services.subscriptions import effective_plan_key

        apply_plan(session, user_id, effective_plan_key(session, user_id))


def audit_log(session: Session, user_id: int, limit: int = 50) -> list[dict]:
    rows = session.exec(
        select(QuotaAudit)
        .where(QuotaAudit.user_id == user_id)
        .order_by(col(QuotaAudit.created_at).desc(), col(QuotaAudit.id).desc())
        .limit(limit)
    ).all()
    return [
        {
            "metric": r.metric,
            "old_limit": r.old_limit,
            "new_limit": r.new_limit,
            "reason": r.reason,
            "actor_user_id": r.actor_user_id,
            "created_at": r.created_at,
        }
        for r in rows
    ]
