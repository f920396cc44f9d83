"""Invoices as synced from Stripe: listing for a user or, for admins, everyone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Session, col, select

from billing_app.errors import ValidationFailed
from billing_app.models import Invoice, Subscription, User
from billing_app.plans import get_catalog, plan_for_price
from billing_app.services.dto import InvoiceDTO, Page

if TYPE_CHECKING:
    from billing_app.gateway.parsing import InvoiceLineData

INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
# What a customer's own list shows: what was billed. A draft is not a charge yet (its amount
# may change, it has no number, page or PDF); a deleted draft is nobody's.
CUSTOMER_STATUSES = ("open", "paid", "uncollectible", "void")
MAX_PER_PAGE = 100
SETTLED_STATUSES = ("paid", "void")
# A negative total in one of these is a credit to the customer's balance (a downgrade's
# proration): the pages' badge says "Credit", not "Paid" (states/views.invoice_view).
CREDIT_STATUSES = ("open", "paid")
# The admin's invoice filters: one per badge its tables show. "paid" and "open" leave the
# credits out; what Stripe calls paid is "paid" and "credit" together.
# "failed": the payments that failed and are still owed, as the console's Failed payments
# card counts them ("Payment failed" badge); "open" leaves them out.
ADMIN_FILTERS = ("paid", "credit", "open", "draft", "void", "uncollectible", "failed")


# The longest description stored (invoice.description's column).
DESCRIPTION_MAX = 500


def describe(memo: str | None, lines: Sequence[InvoiceLineData]) -> str | None:
    """What an invoice bills for, in the lists' words: "Pro plan", "Pro plan (prorated)"
    (a plan change's invoice: the plan's remaining time, less the old plan's unused time),
    "Pro plan, with prorated changes" (a renewal carrying them). A subscription invoice's
    own description is empty: its lines name the prices. Lines of no plan: the invoice's
    memo, else its first line's words. None when nothing says."""
    plans = [(plan_for_price(line.price_id), line) for line in lines]
    named = [(plan, line) for plan, line in plans if plan is not None]
    regular = [plan.name for plan, line in named if not line.proration]
    # A switch's invoice: the plan charged for (the new one), else the one credited.
    prorated = [plan.name for plan, line in named if line.proration and line.amount > 0] or [
        plan.name for plan, line in named if line.proration
    ]
    if regular:
        text = f"{' + '.join(dict.fromkeys(regular))} plan"
        text += ", with prorated changes" if prorated else ""
    elif prorated:
        text = f"{prorated[0]} plan (prorated)"
    elif memo:
        text = memo
    else:
        words = [line.description for line in lines if line.description]
        text = words[0] + (f" and {len(words) - 1} more" if len(words) > 1 else "") if words else ""
    return text[:DESCRIPTION_MAX] or None


def is_credit(status: str, total: int | None) -> bool:
    """A credit to the balance: the "Credit" badge. A row without Stripe's total (before
    migration 0013) reads as paid or due, never as a credit."""
    return status in CREDIT_STATUSES and total is not None and total < 0


def check_admin_filter(shown: str | None) -> None:
    if shown is not None and shown not in ADMIN_FILTERS:
        raise ValidationFailed(
            f"Unknown invoice status {shown!r}; expected one of: {', '.join(ADMIN_FILTERS)}.",
            field="status",
        )


def _not_credit() -> sa.ColumnElement[bool]:
    # A row from before migration 0013 (total NULL) reads as paid or due, never a credit.
    return sa.or_(col(Invoice.total).is_(None), col(Invoice.total) >= 0)


def failed_payment_filter() -> sa.ColumnElement[bool]:
    """A failed payment still owed: open (not a credit) with a failed attempt: its
    subscription in trouble, or attempts Stripe counted (also once dunning canceled the
    subscription and left it open). Never NULL, so NOT of it is sound on PostgreSQL.
    The one rule for the admin's Failed payments card, its "failed" filter and the
    "Payment failed" badge (InvoiceDTO.payment_failed). Uncollectible ones were written
    off: they need no action, and their own filter lists them."""
    troubled = sa.exists().where(
        col(Subscription.stripe_subscription_id) == col(Invoice.stripe_subscription_id),
        col(Subscription.status).in_(("past_due", "unpaid")),
    )
    return sa.and_(
        Invoice.status == "open",
        _not_credit(),
        sa.or_(troubled, col(Invoice.attempt_count) > 0),
    )


def admin_filter(shown: str) -> sa.ColumnElement[bool]:
    """The invoices the admin filter `shown` lists: those whose badge it names (is_credit,
    InvoiceDTO.payment_failed): "open" leaves out the failed payments, "failed" lists them."""
    if shown == "failed":
        return failed_payment_filter()
    if shown == "credit":
        return sa.and_(col(Invoice.status).in_(CREDIT_STATUSES), col(Invoice.total) < 0)
    if shown == "open":
        return sa.and_(Invoice.status == shown, _not_credit(), sa.not_(failed_payment_filter()))
    if shown in CREDIT_STATUSES:
        return sa.and_(Invoice.status == shown, _not_credit())
    return Invoice.status == shown


@dataclass(frozen=True)
class Settlement:
    """What an invoice is for and how it was settled, in minor units."""

    total: int  # negative: a credit to the customer's balance
    amount_remaining: int  # still to pay
    credited_to_balance: int  # the invoice's own credit (-total when negative)
    paid_from_balance: int  # the customer's credit balance that paid (part of) it


def settlement(
    *,
    status: str,
    amount_due: int,
    amount_paid: int,
    total: int | None,
    amount_remaining: int | None,
    starting_balance: int | None,
) -> Settlement:
    """From Stripe's fields. amount_due is never negative: a credit invoice is due 0 and
    "paid" 0, and credit applied from the balance lowers amount_due below total. A row
    from before migration 0013 (total NULL) reads as it always did: paid, else due."""
    if total is None:
        total = amount_paid if status == "paid" else amount_due
    if amount_remaining is None:
        amount_remaining = 0 if status in SETTLED_STATUSES else max(amount_due - amount_paid, 0)
    from_balance = max(total - amount_due, 0) if total > 0 else 0
    if starting_balance is not None:  # a total under Stripe's minimum charge is carried, not paid
        from_balance = min(from_balance, max(-starting_balance, 0))
    return Settlement(
        total=total,
        amount_remaining=amount_remaining,
        credited_to_balance=max(-total, 0),
        paid_from_balance=from_balance,
    )


def invoice_settlement(inv: Invoice) -> Settlement:
    return settlement(
        status=inv.status,
        amount_due=inv.amount_due,
        amount_paid=inv.amount_paid,
        total=inv.total,
        amount_remaining=inv.amount_remaining,
        starting_balance=inv.starting_balance,
    )


def to_invoice_dto(inv: Invoice, email: str, payment_failed: bool = False) -> InvoiceDTO:
    """`payment_failed`: failed_payment_filter() of the row, read with it."""
    assert inv.id is not None
    money = invoice_settlement(inv)
    return InvoiceDTO(
        id=inv.id,
        stripe_invoice_id=inv.stripe_invoice_id,
        user_id=inv.user_id,
        user_email=email,
        number=inv.number,
        status=inv.status,
        amount_due=inv.amount_due,
        amount_paid=inv.amount_paid,
        total=money.total,
        amount_remaining=money.amount_remaining,
        credited_to_balance=money.credited_to_balance,
        paid_from_balance=money.paid_from_balance,
        starting_balance=inv.starting_balance,
        ending_balance=inv.ending_balance,
        currency=inv.currency,
        period_start=inv.period_start,
        period_end=inv.period_end,
        hosted_invoice_url=inv.hosted_invoice_url,
        invoice_pdf=inv.invoice_pdf,
        created_at=inv.created_at,
        payment_failed=payment_failed,
        description=inv.description,
    )


def list_invoices(
    session: Session,
    *,
    user_id: int | None = None,
    status: str | None = None,
    page: int = 1,
    per_page: int = 20,
    customer_view: bool = False,
    shown: str | None = None,
) -> Page:
    """Invoices newest first; `user_id=None` lists every user's (admin views).
    `customer_view`: the customer's own list (no drafts). `status` is Stripe's status;
    `shown` is the admin's filter instead (ADMIN_FILTERS: by badge, credits apart)."""
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ValidationFailed("page must be a whole number, 1 or more.", field="page")
    if isinstance(per_page, bool) or not isinstance(per_page, int) or not 1 <= per_page <= 100:
        raise ValidationFailed(f"per_page must be between 1 and {MAX_PER_PAGE}.", field="per_page")
    listed = CUSTOMER_STATUSES if customer_view else INVOICE_STATUSES
    if status is not None and status not in listed:
        # A draft is a known status the customer's list never shows: said, not an
        # empty page that reads as "no such invoices".
        what = (
            "Drafts are not billed yet and are never listed here"
            if status == "draft"
            else f"Unknown invoice status {status!r}"
        )
        raise ValidationFailed(f"{what}; expected one of: {', '.join(listed)}.", field="status")
    check_admin_filter(shown)
    where = [col(Invoice.status).in_(listed)]
    if user_id is not None:
        where.append(Invoice.user_id == user_id)
    if status is not None:
        where.append(Invoice.status == status)
    if shown is not None:
        where.append(admin_filter(shown))
    total = session.exec(select(sa.func.count()).select_from(Invoice).where(*where)).one()
    rows = session.exec(
        select(Invoice, User.email, failed_payment_filter())
        .join(User, col(User.id) == col(Invoice.user_id))
        .where(*where)
        .order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    session.rollback()  # end the read transaction promptly
    return Page(
        items=[to_invoice_dto(inv, email, bool(failed)) for inv, email, failed in rows],
        total=total,
        page=page,
        per_page=per_page,
    )


def payment_due(session: Session, user_id: int) -> InvoiceDTO | None:
    """The customer's newest failed payment still owed (failed_payment_filter), None
    without one: the amount and invoice the past-due banner asks them to pay. Ends the read."""
    row = session.exec(
        select(Invoice, User.email)
        .join(User, col(User.id) == col(Invoice.user_id))
        .where(Invoice.user_id == user_id, failed_payment_filter())
        .order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc())
        .limit(1)
    ).first()
    session.rollback()
    return None if row is None else to_invoice_dto(row[0], row[1], payment_failed=True)


def credit_balance(session: Session, user_id: int) -> tuple[int, str]:
    """The customer's credit with Stripe (minor units, currency), 0 without one: the
    balance its newest customer.created/updated event carried (a credit an admin adds in
    Stripe has no invoice), else the newest finalized invoice's ending balance. A
    downgrade's proration is credited there and pays the next invoices first. Ends the read."""
    held = session.exec(
        select(User.stripe_balance, User.stripe_balance_currency).where(User.id == user_id)
    ).first()
    balance, currency = held if held is not None else (None, None)
    if balance is None:  # no customer event seen yet
        row = session.exec(
            select(Invoice.ending_balance, Invoice.currency)
            .where(
                Invoice.user_id == user_id,
                col(Invoice.status).in_(("open", "paid", "uncollectible")),
                col(Invoice.ending_balance).is_not(None),
            )
            .order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc())
            .limit(1)
        ).first()
        balance, currency = row if row is not None else (None, None)
    session.rollback()
    if balance is None or balance >= 0:
        return 0, "usd"
    # A customer gets a currency with its first invoice or balance change: the plans' one.
    return -balance, currency or get_catalog()["free"].currency
