"""Admin views: the user list (fast at 100k users), one user's detail, headline stats.

The list is one page query (LIMIT/OFFSET, index-backed email prefix search), plus one
query each for the page's usage counters, quotas, subscriptions and failed payments still
owed: no N+1. The CSV export (services/exports.py) reads every matching user through the
same query, with the counters and quotas joined in, in chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from billing_app.clock import utcnow
from billing_app.errors import ValidationFailed
from billing_app.metrics import METRICS
from billing_app.models import Invoice, Quota, Subscription, UsageCounter, User
from billing_app.plans import PLAN_KEYS, catalog_currency, get_catalog
from billing_app.services import invoices, metering, quotas, subscriptions, users
from billing_app.services.dto import AdminUserDetail, AdminUserRow, Page
from billing_app.services.periods import calendar_month, per_user_periods
from billing_app.services.subscriptions import (
    LIVE_STATUSES,
    current_rank,
    current_subscription,
    plan_key_for,
)
from billing_app.settings import get_settings

MAX_PER_PAGE = 200
# "quota": the share of its limit the user's fullest metered quantity has used (unlimited
# ones count 0): who is near or over a quota, which the raw usage sorts bury under
# unlimited plans.
SORTS = ("email", "created", "quota", *(f"usage_{m}" for m in METRICS))
SORT_KEYS = tuple(s for base in SORTS for s in (base, f"-{base}"))
# Audit entries in a user's detail (the JSON API's); the drawer asks for the 10 it shows.
DETAIL_AUDIT_LIMIT = 50
STATUS_FILTERS = ("none", "incomplete", "incomplete_expired", "trialing", "active", "past_due",
                  "canceled", "unpaid", "paused")  # fmt: skip
# Who needs attention: some metered quantity at or over its limit ("over"), at 80 % of it
# or more ("near", over included), or a quota an admin overrode ("override").
USAGE_FILTERS = ("over", "near", "override")


def _page_subscriptions(session: Session, ids: list[int]) -> dict[int, Any]:
    """The current subscription of each listed user, in one query: plain rows with the
    columns plan_key_for and ends_at read (ORM objects cost the export a quarter of its
    time at 100,000 users)."""
    subs = session.exec(
        select(
            Subscription.user_id,
            Subscription.status,
            Subscription.plan,
            Subscription.past_due_since,
            Subscription.updated_at,
            Subscription.current_period_end,
            Subscription.cancel_at,
            Subscription.cancel_at_period_end,
        )
        .where(col(Subscription.user_id).in_(ids))
        .order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    ).all()
    out: dict[int, Any] = {}
    for sub in subs:  # newest first: the first of the lowest rank (current_subscription's rule)
        have = out.get(sub.user_id)
        if have is None or current_rank(sub.status) < current_rank(have.status):
            out[sub.user_id] = sub
    return out


def _owed() -> Any:
    """What an invoice still owes: Stripe's amount_remaining; rows without it, due less paid."""
    return sa.func.coalesce(
        Invoice.amount_remaining,
        sa.case(
            (Invoice.amount_due > Invoice.amount_paid, Invoice.amount_due - Invoice.amount_paid),
            else_=0,
        ),
    )


def _page_owed(session: Session, ids: list[int]) -> dict[int, int]:
    """What each listed user still owes on their failed payments (the Failed payments
    card's invoices, in its currency), in one query: absent when nothing."""
    currency = catalog_currency()
    rows = session.exec(
        select(Invoice.user_id, sa.func.sum(_owed()))
        .where(
            col(Invoice.user_id).in_(ids),
            Invoice.currency == currency,
            invoices.failed_payment_filter(),
        )
        .group_by(Invoice.user_id)
    ).all()
    return {uid: int(n) for uid, n in rows if n}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class UserFilters:
    """The users list's search, filters and sort, checked when built (ValidationFailed,
    a 422, for a plan, status or sort the list does not know): the list's pages and its
    CSV export take them as one value.

    `q` matches the start of the email (index-backed); `q` starting with "@" matches the
    domain anywhere (a scan, for "everyone at acme.com"). Blank is no search."""

    q: str | None = None
    plan: str | None = None
    status: str | None = None
    usage: str | None = None
    sort: str = "email"

    def __post_init__(self) -> None:
        q = (self.q or "").strip().lower()[:320]
        object.__setattr__(self, "q", q or None)
        if self.sort not in SORT_KEYS:
            raise ValidationFailed(f"sort must be one of: {', '.join(SORT_KEYS)}.", field="sort")
        if self.plan is not None and self.plan not in PLAN_KEYS:
            raise ValidationFailed(f"plan must be one of: {', '.join(PLAN_KEYS)}.", field="plan")
        if self.status is not None and self.status not in STATUS_FILTERS:
            raise ValidationFailed(
                f"status must be one of: {', '.join(STATUS_FILTERS)}.", field="status"
            )
        if self.usage is not None and self.usage not in USAGE_FILTERS:
            raise ValidationFailed(
                f"usage must be one of: {', '.join(USAGE_FILTERS)}.", field="usage"
            )


def _current(counter: Any, now: Any) -> list[Any]:
    """Conditions for the counter a user's usage goes to `now`, at most one per user and
    metric. With calendar months (the default), this month's: an index lookup. With plans
    that reset on their billing period, the newest one covering now: a user who
    subscribed mid-month has this month's and the period's, and writes go to the
    period's (periods.period_of), also after a cancel or a plan change, to its end."""
    if not per_user_periods():
        return [counter.period_start == calendar_month(now).start]
    newer = aliased(UsageCounter)
    return [
        counter.period_start <= now,
        counter.period_end > now,
        ~sa.exists().where(
            newer.user_id == counter.user_id,
            newer.metric == counter.metric,
            newer.period_start > counter.period_start,
            newer.period_start <= now,
            newer.period_end > now,
        ),
    ]


def _metered(now: Any) -> tuple[Any, Any, Any]:
    """(counter, limit, rows): the current counters of the metrics with a limit, each
    with the limit the list's meters read (a quota row, else the free plan's), as a
    statement of their user ids."""
    counter = aliased(UsageCounter)
    free = get_catalog()["free"]
    free_limit = sa.case(*((counter.metric == m, free.limit_for(m)) for m in METRICS), else_=0)
    limit = sa.func.coalesce(Quota.limit, free_limit)
    rows = (
        select(counter.user_id)
        .select_from(counter)
        .outerjoin(Quota, sa.and_(Quota.user_id == counter.user_id, Quota.metric == counter.metric))
        .where(limit > 0, *_current(counter, now))
    )
    return counter, limit, rows


def _quota_share(now: Any) -> Any:
    """The user's highest used / limit this period over the metrics with a limit (0 when
    none is used or every one is unlimited). One correlated lookup per user, on the
    counters' index."""
    counter, limit, rows = _metered(now)
    share = (
        rows.with_only_columns(sa.func.max(sa.cast(counter.used, sa.Float) / limit))
        .where(counter.user_id == User.id)
        .correlate(User)
    )
    return sa.func.coalesce(share.scalar_subquery(), 0.0)


def _usage_filter(usage: str, now: Any) -> Any:
    """USAGE_FILTERS on the user: the share _quota_share sorts by at 1 or more ("over")
    or 0.8 or more ("near"), or an admin's quota row ("override"). An IN over this
    period's counters, read once per statement: an EXISTS per user cost SQLite twice
    as much at 100,000 users. "override" reads the partial index on admin rows (migration
    0016) with 'admin' written into the SQL: a generic plan of a prepared statement
    (psycopg prepares repeated ones) cannot use a partial index through a parameter."""
    if usage == "override":
        admin_row = Quota.source == sa.literal_column("'admin'")
        return col(User.id).in_(select(Quota.user_id).where(admin_row))
    counter, limit, rows = _metered(now)
    # 80 %: used >= ceil(limit * 4 / 5) = limit - floor(limit / 5), in integers: exact
    # on both databases, and nothing multiplied that could overflow.
    floor = limit if usage == "over" else limit - limit // 5
    return col(User.id).in_(rows.where(counter.used >= floor))


def _users_query(f: UserFilters, now: Any) -> tuple[Any, Any]:
    """(count, ordered rows) statements for the users the filters match: one definition
    for the list's pages and the CSV export. Rows: id, email, display_name, role,
    created_at."""
    filters: list[Any] = []
    if f.q:
        pattern = f"%{_escape_like(f.q)}%" if f.q.startswith("@") else f"{_escape_like(f.q)}%"
        filters.append(col(User.email).like(pattern, escape="\\"))
    cur = None
    if f.status is not None or f.plan is not None:
        cur = subscriptions.current_table()
        if f.status is not None:
            filters.append(sa.func.coalesce(cur.c.status, "none") == f.status)
        if f.plan is not None:
            filters.append(subscriptions.granted_plan(cur) == f.plan)
    if f.usage is not None:
        filters.append(_usage_filter(f.usage, now))

    def base_query(*columns: Any) -> Any:
        stmt = select(*columns).select_from(User)
        if cur is not None:
            stmt = stmt.join(cur, sa.and_(cur.c.user_id == User.id, cur.c.rn == 1), isouter=True)
        return stmt.where(*filters)

    total = base_query(sa.func.count())
    stmt = base_query(User.id, User.email, User.display_name, User.role, User.created_at)
    desc = f.sort.startswith("-")
    base = f.sort.lstrip("-")
    if base.startswith("usage_"):
        metric = base.removeprefix("usage_")
        counter = aliased(UsageCounter)
        stmt = stmt.join(
            counter,
            sa.and_(counter.user_id == User.id, counter.metric == metric, *_current(counter, now)),
            isouter=True,
        )
        used = sa.func.coalesce(counter.used, 0)
        stmt = stmt.order_by(used.desc() if desc else used.asc(), col(User.id).asc())
    elif base == "quota":
        share = _quota_share(now)
        stmt = stmt.order_by(share.desc() if desc else share.asc(), col(User.id).asc())
    elif base == "created":
        order = col(User.created_at).desc() if desc else col(User.created_at).asc()
        stmt = stmt.order_by(order, col(User.id).desc() if desc else col(User.id).asc())
    else:
        stmt = stmt.order_by(col(User.email).desc() if desc else col(User.email).asc())
    return total, stmt


def _user_rows(session: Session, rows: list[Any], now: Any) -> list[tuple[AdminUserRow, Any]]:
    """The list's row for each (id, email, display_name, role, created_at), with the
    user's current subscription: four queries whatever the number of rows."""
    ids = [r[0] for r in rows]
    used_by: dict[tuple[int, str], int] = {}
    limits: dict[tuple[int, str], int] = {}
    if ids:
        counter = aliased(UsageCounter)
        for uid, metric, n in session.exec(
            select(counter.user_id, counter.metric, counter.used).where(
                counter.user_id.in_(ids), *_current(counter, now)
            )
        ).all():
            used_by[(uid, metric)] = n
        for uid, metric, lim in session.exec(
            select(Quota.user_id, Quota.metric, Quota.limit).where(col(Quota.user_id).in_(ids))
        ).all():
            limits[(uid, metric)] = lim
    current = _page_subscriptions(session, ids) if ids else {}
    owed = _page_owed(session, ids) if ids else {}

    catalog = get_catalog()
    out = []
    for uid, email, display_name, role, created_at in rows:
        sub = current.get(uid)
        plan_key = plan_key_for(sub)
        sub_status = sub.status if sub is not None else "none"
        usage = []
        for m in METRICS.values():
            lim = limits.get((uid, m.key), catalog["free"].limit_for(m.key))
            n = used_by.get((uid, m.key), 0)
            usage.append(
                {
                    "metric": m.key,
                    "label": m.label,
                    "used": n,
                    "limit": lim,
                    "unlimited": lim == 0,
                    "percent": 0.0 if lim == 0 else metering.percent_of(n, lim),
                }
            )
        p = catalog.get(plan_key) or catalog["free"]
        row = AdminUserRow(
            id=uid,
            email=email,
            display_name=display_name,
            role=role,
            plan=p.key,
            plan_name=p.name,
            status=sub_status,
            usage=usage,
            created_at=created_at,
            ends_at=subscriptions.ends_at(sub)
            if sub is not None and sub.status in LIVE_STATUSES
            else None,
            amount_owed=owed.get(uid, 0),
            currency=catalog_currency(),
        )
        out.append((row, sub))
    return out


def list_users(
    session: Session, filters: UserFilters | None = None, *, page: int = 1, per_page: int = 50
) -> Page:
    """One page of the users `filters` match (all, by email, without), with plan,
    subscription status and usage per metric."""
    page = max(1, int(page))
    per_page = min(max(1, int(per_page)), MAX_PER_PAGE)
    now = utcnow()
    total_stmt, stmt = _users_query(filters or UserFilters(), now)
    total = session.exec(total_stmt).one()
    rows = list(session.exec(stmt.offset((page - 1) * per_page).limit(per_page)).all())
    items = [row for row, _sub in _user_rows(session, rows, now)]
    session.rollback()
    return Page(items=items, total=total, page=page, per_page=per_page)


def user_row(session: Session, user_id: int) -> AdminUserRow | None:
    """The users list's row for one user (None: no such user), as the list reads it now:
    what the console compares its listed row with when the drawer reads the user."""
    now = utcnow()
    rows = list(
        session.exec(
            select(User.id, User.email, User.display_name, User.role, User.created_at).where(
                User.id == user_id
            )
        ).all()
    )
    found = _user_rows(session, rows, now)
    return found[0][0] if found else None


def iter_users(
    session: Session,
    filters: UserFilters,
    *,
    chunk: int = 1000,
    joined: Callable[[Any], Any] = lambda created_at: created_at,
) -> Iterator[tuple[Any, ...]]:
    """Every user `filters` match, in the list's order, as the list's rows have them, one
    plain tuple each: id, email, display_name, role, plan, status, period_end, ends_at,
    created_at (as `joined` makes it: the export has the database format it), then used
    and limit (0: unlimited) per metric. `period_end` and `ends_at` are the live
    subscription's (active, trialing, past_due), else None. Last, `amount_owed`: what
    the user still owes on failed payments (minor units of the catalog's currency), as
    the list's `amount_owed`.

    The list's own query with the usage counters and quotas joined in (index lookups),
    and one query a chunk each for the current subscriptions and what is owed: per-chunk
    lookups of everything and per-user objects were most of an export's time. (Joining
    current_table instead, PostgreSQL misjudged its rn = 1 rows 200-fold and scanned it
    for every user.) Read
    `chunk` rows at a time (a server-side cursor on PostgreSQL, which needs a
    transaction), so memory stays that of one chunk however many users match. Reads on
    in the caller's transaction and leaves it open: the caller ends it."""
    now = utcnow()
    _total, stmt = _users_query(filters, now)
    catalog = get_catalog()
    free = catalog["free"]
    columns = [User.id, User.email, User.display_name, User.role, joined(User.created_at)]
    for m in METRICS:
        counter, quota = aliased(UsageCounter), aliased(Quota)
        stmt = stmt.outerjoin(
            counter,
            sa.and_(counter.user_id == User.id, counter.metric == m, *_current(counter, now)),
        ).outerjoin(quota, sa.and_(quota.user_id == User.id, quota.metric == m))
        columns += [
            sa.func.coalesce(counter.used, 0),
            sa.func.coalesce(quota.limit, free.limit_for(m)),
        ]
    joins_current = filters.status is not None or filters.plan is not None
    if joins_current and session.get_bind().dialect.name == "postgresql":
        # A cursor is planned for its first 10 % of rows: joined to current_table (its
        # rn = 1 rows underestimated), that plan rescanned every current subscription for
        # each user, minutes at 100,000 users. The export reads every row: plan for all.
        session.execute(sa.text("SET LOCAL cursor_tuple_fraction = 1"))
    result = session.execute(stmt.with_only_columns(*columns).execution_options(yield_per=chunk))
    for part in result.partitions():
        ids = [row[0] for row in part]
        current = _page_subscriptions(session, ids)
        owed = _page_owed(session, ids)
        for uid, email, display_name, role, created, *usage in part:
            sub = current.get(uid)
            live = sub is not None and sub.status in LIVE_STATUSES
            yield (
                uid,
                email,
                display_name,
                role,
                (catalog.get(plan_key_for(sub)) or free).key,
                "none" if sub is None else sub.status,
                sub.current_period_end if live else None,
                subscriptions.ends_at(sub) if live else None,
                created,
                *usage,
                owed.get(uid, 0),
            )


def _subscription_dict(session: Session, user_id: int) -> dict[str, Any] | None:
    dto = subscriptions.get_subscription_dto(session, user_id)
    return None if dto is None else dto.to_dict()


def recent_invoices(session: Session, user_id: int | None, limit: int = 10) -> list[dict]:
    """The newest invoices, in the shape of the invoice endpoints."""
    page = invoices.list_invoices(session, user_id=user_id, page=1, per_page=limit)
    return [i.to_dict() for i in page.items]


def stripe_dashboard_base() -> str | None:
    """Where the Stripe dashboard shows this account's objects (test-mode keys' under
    /test); None on the local sandbox, which has no dashboard to link to."""
    settings = get_settings()
    key = settings.stripe_secret_key
    if settings.uses_stripe_sandbox or not key:
        return None
    test = key.startswith(("sk_test_", "rk_test_"))
    return "https://dashboard.stripe.com" + ("/test" if test else "")


def _with_actors(session: Session, entries: list[dict]) -> list[dict]:
    """Each audit entry with its admin's email (`actor_email`; None when that account is
    gone): who changed a quota, in one query."""
    ids = {e["actor_user_id"] for e in entries if e.get("actor_user_id") is not None}
    emails = dict(
        session.exec(select(User.id, User.email).where(col(User.id).in_(ids))).all() if ids else []
    )
    return [{**e, "actor_email": emails.get(e.get("actor_user_id"))} for e in entries]


def user_detail(
    session: Session, user_id: int, *, audit_limit: int = DETAIL_AUDIT_LIMIT
) -> AdminUserDetail:
    user = users.get_user(session, user_id)
    dto = users.to_dto(user)
    plan = get_catalog().get(plan_key_for(current_subscription(session, user_id)))
    plan = plan or get_catalog()["free"]
    return AdminUserDetail(
        user=dto,
        plan=plan.key,
        plan_name=plan.name,
        subscription=_subscription_dict(session, user_id),
        usage=metering.summary(session, user_id),
        quotas=quotas.get_quotas(session, user_id),
        audit_log=_with_actors(session, quotas.audit_log(session, user_id, limit=audit_limit)),
        invoices=recent_invoices(session, user_id),
    )


def headline_stats(session: Session) -> dict[str, Any]:
    """Subscribers per plan, MRR (minor units), failed payments and what they owe, total
    users.

    One definition throughout, the users list's: each user's current subscription
    grants its plan now when active, trialing, or past_due within the grace period
    (subscriptions.plan_key_for). Those are the subscribers; MRR sums the ones being
    billed (all but trials, which are not revenue yet).
    """
    catalog = get_catalog()
    cur = subscriptions.current_table()
    plan_now = subscriptions.granted_plan(cur)
    now = (
        select(
            plan_now.label("plan"),
            sa.case((cur.c.status == "trialing", 0), else_=1).label("billed"),
        )
        .where(cur.c.rn == 1)
        .subquery("now")
    )
    # Grouped over a derived table: PostgreSQL will not match a GROUP BY on an
    # expression whose bound cutoff is a separate parameter from the SELECT's.
    counts = session.exec(
        select(now.c.plan, sa.func.count(), sa.func.sum(now.c.billed)).group_by(now.c.plan)
    ).all()
    paid = {p for p in catalog if p != "free"}
    per_plan = {p: int(n) for p, n, _ in counts if p in paid}
    billed_per_plan = {p: int(b or 0) for p, _, b in counts if p in paid}
    mrr = sum(catalog[p].amount * n for p, n in billed_per_plan.items())
    # What those invoices still owe, in the catalog's currency, which every paid plan
    # bills in.
    owed = _owed()
    currency = catalog_currency()
    failed, failed_due = session.exec(
        select(
            sa.func.count(),
            sa.func.coalesce(
                sa.func.sum(sa.case((Invoice.currency == currency, owed), else_=0)), 0
            ),
        )
        .select_from(Invoice)
        .where(invoices.failed_payment_filter())
    ).one()
    total_users = session.exec(select(sa.func.count()).select_from(User)).one()
    # Users whose current subscription is past due: what the list's "Past due" filter
    # counts (an older subscription left past due is not theirs now, nor one user's two).
    past_due = session.exec(
        select(sa.func.count()).select_from(cur).where(cur.c.rn == 1, cur.c.status == "past_due")
    ).one()
    session.rollback()
    return {
        "total_users": total_users,
        "active_subscribers": sum(per_plan.values()),
        "subscribers_by_plan": {p: per_plan.get(p, 0) for p in catalog if p in paid},
        "mrr": mrr,
        "currency": currency,
        "failed_payments": failed,
        "failed_amount_due": int(failed_due),
        "past_due_subscriptions": past_due,
    }
