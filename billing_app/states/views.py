"""View models: plain dataclasses built from service DTOs, the only shapes State vars hold.

Display strings are formatted here, in Python, so pages stay pure layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from billing_app.clock import as_utc
from billing_app.metrics import METRICS
from billing_app.plans import Plan, get_catalog
from billing_app.services.invoices import is_credit, settlement
from billing_app.services.periods import Period, calendar_month
from billing_app.services.subscriptions import (
    LIVE_STATUSES,
    PAYMENT_FAILED_ACTION,
    PAYMENT_FAILED_TITLE,
    awaits_first_payment,
    held_banner,
)
from billing_app.states import format as fmt
from billing_app.states.format import get


@dataclasses.dataclass
class MeterView:
    metric: str = ""
    label: str = ""
    used: int = 0
    limit: int = 0
    unlimited: bool = False
    percent: int = 0
    used_text: str = ""
    limit_text: str = ""
    percent_text: str = ""
    resets_text: str = ""
    color: str = "indigo"
    # Used up (used >= limit, so the next request is refused): labelled, not only red.
    limit_reached: bool = False
    # The bar's words for a screen reader: its numbers, not the bar's clamped "100%".
    value_text: str = ""


@dataclasses.dataclass
class PlanView:
    key: str = ""
    name: str = ""
    price: str = ""  # "$19.00", its period shown apart ("/ month")
    price_label: str = ""  # "$19.00 per month": the price and its period as one phrase
    description: str = ""
    features: list[str] = dataclasses.field(default_factory=list)
    is_current: bool = False
    highlight: bool = False


@dataclasses.dataclass
class SubscriptionView:
    plan: str = "free"
    plan_name: str = "Free"
    status: str = "free"
    status_label: str = "Free"
    status_color: str = "gray"
    price: str = ""  # "$19.00 / month"
    price_label: str = ""  # "$19.00 per month", as a screen reader reads it
    renews_text: str = ""
    cancel_at_period_end: bool = False
    cancels: bool = False  # set to cancel, by either Stripe field
    past_due: bool = False
    grace_text: str = ""
    is_subscriber: bool = False
    # "Your Pro subscription ended on <date>." once canceled: the plan card says why it is Free.
    ended_text: str = ""
    # The dates alone, for the portal's return notice: when it renews, or when it cancels.
    renews_on: str = ""
    ends_on: str = ""
    # Not live, but an open invoice still brings it back, billed (services' held_subscription):
    # no new plan is started beside it. The banner's words, and those by the plan buttons.
    held: bool = False
    held_text: str = ""
    held_plans_text: str = ""
    # The banner's bold first words and its button (past due, or held: services' held_banner).
    alert_title: str = PAYMENT_FAILED_TITLE
    alert_action: str = PAYMENT_FAILED_ACTION
    # The held subscription's open invoice, linked by the banner when no failed payment is
    # (one never attempted is not a failed payment: invoices.payment_due leaves it out).
    held_invoice_url: str = ""
    held_invoice_number: str = ""
    # Held, and nothing failed: its first invoice was never attempted (awaits_first_payment).
    awaits_first_payment: bool = False


@dataclasses.dataclass
class InvoiceView:
    id: str = ""
    number: str = ""
    date: str = ""
    period: str = ""
    # What it bills for ("Pro plan (prorated)"); "" when nothing says.
    description: str = ""
    amount: str = ""
    amount_note: str = ""  # "credited to balance", "paid from balance", "$12.00 still due"
    status: str = ""
    status_label: str = ""
    status_color: str = "gray"
    hosted_url: str = ""
    pdf_url: str = ""
    user_email: str = ""
    user_id: int = 0


@dataclasses.dataclass
class DueView:
    """The failed payment the past-due banner asks for: its amount and its hosted page."""

    text: str = ""  # "$99.00 is due on invoice INV-0001."
    number: str = ""
    hosted_url: str = ""


@dataclasses.dataclass
class AdminUserView:
    id: int = 0
    email: str = ""
    display_name: str = ""
    role: str = "user"
    plan: str = "free"
    plan_name: str = "Free"
    status: str = ""
    status_label: str = ""
    status_color: str = "gray"
    created: str = ""
    meters: list[MeterView] = dataclasses.field(default_factory=list)
    ends_text: str = ""  # "Cancels on <date>" for a subscription set to cancel
    owed_text: str = ""  # "$49.00 owed": still owed on their failed payments


@dataclasses.dataclass
class AdminSubscriptionView:
    """One user's plan and subscription, as the admin drawer shows it."""

    has_subscription: bool = False
    headline: str = "Free plan · no subscription"  # "Pro · $99.00 / month" when paying
    status_label: str = ""
    status_color: str = "gray"
    period_text: str = ""
    ends_text: str = ""  # "Renews on" / "Cancels on" / "Ended": the dashboard's wording
    grace_text: str = ""
    customer_id: str = ""
    customer_url: str = ""  # empty on the sandbox: it has no dashboard
    subscription_id: str = ""
    subscription_url: str = ""


@dataclasses.dataclass
class QuotaView:
    metric: str = ""
    label: str = ""
    limit_text: str = ""
    plan_limit_text: str = ""
    source: str = "plan"
    reason: str = ""


@dataclasses.dataclass
class StatView:
    label: str = ""
    value: str = ""
    hint: str = ""
    # The list that shows what the card counts ("past_due": users, "failed": invoices).
    action: str = ""


@dataclasses.dataclass
class ApiKeyView:
    id: int = 0
    name: str = ""
    prefix: str = ""
    owner: str = ""
    created: str = ""
    last_used: str = ""
    revoked: bool = False
    access: str = ""
    # The confirmation's question names the key: "Revoke this key?" did not say which.
    revoke_question: str = ""


# What a key made in the console may do: (choice, its label, its scopes). Least
# privilege: a dashboard that only reads, or a worker that only records.
KEY_ACCESS = (
    ("write_read", "Record and read usage", ("usage:write", "usage:read")),
    ("write", "Record usage only", ("usage:write",)),
    ("read", "Read usage and check quotas", ("usage:read",)),
)


@dataclasses.dataclass
class SavedFields:
    """What a console form's save took from its typed fields (field id -> text), for
    the page to empty each box that still holds it once the answer arrives (`pending`
    until the page says it has). `seq` numbers the saves: each one's answer is new."""

    seq: int = 0
    pending: bool = False
    texts: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class AuditView:
    when: str = ""
    metric: str = ""
    change: str = ""
    reason: str = ""
    who: str = ""  # the admin's email: "by ..." ("" when their account is gone)


def _limit_text(limit: int) -> str:
    return "Unlimited" if limit == 0 else fmt.number(limit)


def _percent_text(used: int, limit: int, percent: float) -> str:
    """Rounded half up (integer maths: 49.5% is 50%), but never across a line the meter
    draws: under the limit never "100%" (99.9% is 99%), under 80 % never "80%" (the
    amber, the warning and the "Near a limit (80%+)" filter start there), any use never
    "0%" ("<1%"); past the limit it always says so: 10,001 of 10,000 is "100%+"."""
    if not limit:
        return f"{int(percent)}%"
    whole = (used * 200 + limit) // (limit * 2)
    if used > limit:
        return "100%+" if whole <= 100 else f"{whole:,}%"
    if used < limit:
        whole = min(whole, 99)
        if used * 5 < limit * 4:  # under 80 %
            whole = min(whole, 79)
    if used > 0 and whole == 0:
        return "<1%"
    return f"{whole:,}%"


def meter_view(m: Any) -> MeterView:
    """From a MeterStatus (or the admin row's usage dict)."""
    unlimited = bool(get(m, "unlimited", False))
    used = int(get(m, "used", 0) or 0)
    limit = int(get(m, "limit", 0) or 0)
    percent = float(get(m, "percent", 0) or 0)
    if not unlimited and limit:
        # Show how far past the limit usage went; the bar itself is clamped at 100.
        percent = used / limit * 100
    metric = str(get(m, "metric", ""))
    resets = get(m, "resets_at")
    reached = not unlimited and limit > 0 and used >= limit
    percent_text = "" if unlimited else _percent_text(used, limit, percent)
    value_text = "" if unlimited else f"{fmt.number(used)} of {_limit_text(limit)} used"
    if value_text:
        value_text += f" ({percent_text})" + (", limit reached" if reached else "")
    return MeterView(
        metric=metric,
        label=str(get(m, "label", "") or (METRICS[metric].label if metric in METRICS else metric)),
        used=used,
        limit=limit,
        unlimited=unlimited,
        percent=min(used * 100 // limit if limit else int(percent), 100),
        used_text=fmt.number(used),
        limit_text=_limit_text(limit) if not unlimited else "Unlimited",
        percent_text=percent_text,
        resets_text=f"Resets on {fmt.date(resets)}" if resets else "",
        color=fmt.meter_color(percent, unlimited),
        limit_reached=reached,
        value_text=value_text,
    )


def _near(m: MeterView) -> bool:
    """At 80 % of its limit or more, not yet used up: the bar's own amber."""
    return m.color == "amber" and not m.limit_reached


def near_limit_text(meters: list[MeterView]) -> str:
    """The amber warning, naming each meter at 80 % or more of its limit (not yet used up)
    and its numbers: "a limit" alone left the customer to find which one."""
    near = [
        f"{m.label}: {m.used_text} of {m.limit_text} ({m.percent_text})" for m in meters if _near(m)
    ]
    if not near:
        return ""
    return "You have used 80% or more of a limit this period. " + "; ".join(near) + "."


def usage_alert_text(meters: list[MeterView]) -> str:
    """For a screen reader's live region: which meters are used up or near their limit.
    Names only, so it changes (and is read out) when a meter crosses a line, not on every
    unit of usage the bars show."""
    reached = [m.label for m in meters if m.limit_reached]
    near = [m.label for m in meters if _near(m)]
    parts = [f"Limit reached: {', '.join(reached)}."] if reached else []
    if near:
        parts.append(f"80% or more used: {', '.join(near)}.")
    return " ".join(parts)


# What a used-up meter refuses, per metric: "New tokens are refused" read as if tokens
# were requested one by one.
_REFUSED = {
    "tokens": "Requests that use tokens are refused",
    "api_calls": "API calls are refused",
    "scraping_tasks": "New scraping tasks are refused",
}


def limit_notices(
    statuses: list[Any],
    catalog: dict[str, Plan],
    plan: str,
    overridden: frozenset[str] | set[str] = frozenset(),
    payment_due: bool = False,
    first_payment: bool = False,
    cancels: bool = False,
) -> list[str]:
    """What each used-up meter (a MeterStatus) means, in words. A downgrade or a lowered
    quota leaves `used` above the new `limit`: both are shown as they are. `overridden`:
    the metrics whose limit an admin set, which no plan change lifts. `payment_due`: Free's
    limits apply because a payment failed (past due after its grace, or a held
    subscription): paying it, not an upgrade, brings the plan's limits back. `first_payment`:
    held, its first invoice never attempted: nothing failed, it waits to be paid. `cancels`:
    set to cancel, a switch needs the subscription resumed first (as the plan buttons say)."""
    current = catalog.get(plan)
    floor = current.amount if current else 0
    can_upgrade = any(p.is_paid and p.amount > floor for p in catalog.values())
    out = []
    for m in statuses:
        used, limit = int(get(m, "used", 0) or 0), int(get(m, "limit", 0) or 0)
        if get(m, "unlimited", False) or not limit or used < limit:
            continue
        metric = str(get(m, "metric", ""))
        known = METRICS.get(metric)
        label = str(get(m, "label", "") or (known.label if known else metric))
        resets = get(m, "resets_at")
        until = f"until {fmt.date(resets)}" if resets else "until usage resets"
        refused = _REFUSED.get(metric) or f"Requests that use {label.lower()} are refused"
        if metric in overridden:
            tail = ". This limit was set for your account: contact support to change it."
        elif first_payment:
            tail = ", or until your subscription's first payment is made."
        elif payment_due:
            tail = ", or until the failed payment is paid."
        else:
            upgrade = "resume your subscription and upgrade it" if cancels else "upgrade your plan"
            tail = f", or until you {upgrade}." if can_upgrade else "."
        out.append(
            f"{label}: limit reached ({fmt.number(used)} of {fmt.number(limit)}). "
            f"{refused} {until}{tail}"
        )
    return out


def usage_resets_text(m: Any, sub: Any) -> str:
    """The usage card's reset date. A calendar-month reset beside a billing date on another
    day says which rule it follows, so the two dates do not read as a mistake."""
    resets = get(m, "resets_at")
    if not resets:
        return ""
    start = get(m, "period_start")
    monthly = start is not None and calendar_month(start) == Period(as_utc(start), as_utc(resets))
    billing = None
    if sub is not None and str(get(sub, "status", "") or "") in LIVE_STATUSES:
        billing = get(sub, "ends_at") or get(sub, "current_period_end")
    if monthly and billing is not None and fmt.date(billing) != fmt.date(resets):
        return f"Usage resets on the 1st of each month · next {fmt.date(resets)}"
    return f"Resets on {fmt.date(resets)}"


def plan_views(catalog: dict[str, Plan], current: str, paid_only: bool = True) -> list[PlanView]:
    # "Popular" (the solid button) is Pro's, but never as a step down from a dearer plan.
    floor = catalog[current].amount if current in catalog else 0
    out = []
    for plan in catalog.values():
        if paid_only and not plan.is_paid:
            continue
        features = [
            # Full numbers, as the meters write them ("100,000", not "100K").
            f"{'Unlimited' if plan.limit_for(k) == 0 else fmt.number(plan.limit_for(k))} {m.plural}"
            for k, m in METRICS.items()
        ]
        price = fmt.money(plan.amount, plan.currency)  # with cents, as on the invoices
        out.append(
            PlanView(
                key=plan.key,
                name=plan.name,
                price=price,
                price_label=f"{price} per month",
                description=plan.description,
                features=features,
                is_current=plan.key == current,
                highlight=plan.key == "pro" and plan.amount >= floor,
            )
        )
    return out


def _grace_text(sub: Any, grace: Any) -> str:
    """The past-due banner's words: the plan kept until the grace ends, and once it has
    ended (effective_plan is then free) that the quotas are Free's, not a date gone by."""
    if str(get(sub, "status", "") or "") != "past_due":
        return ""
    if not grace:
        return "Update your payment method to keep your plan."
    if str(get(sub, "effective_plan", "") or "") == "free":
        return (
            f"Your grace period ended on {fmt.date(grace)}: you have the Free plan's limits "
            "until the payment goes through. Update your payment method to get your plan back."
        )
    # Named for what it is: the plan card beside it gives the billing period's end.
    return (
        f"Your plan stays active until {fmt.date(grace)}, the end of its grace period. "
        "Update your payment method to keep your plan."
    )


def _with_held(view: SubscriptionView, held: Any) -> SubscriptionView:
    """The banner's and the plans' words for a held subscription (a HeldDTO), unless a live
    one is shown: the plan buttons then open the portal, never Checkout."""
    if held is None or view.is_subscriber:
        return view
    name = str(get(held, "plan_name", "") or "")
    banner = held_banner(held)
    view.held = True
    view.alert_title, view.held_text, view.alert_action = banner.title, banner.text, banner.action
    view.held_invoice_url = str(get(held, "hosted_invoice_url", "") or "")
    view.held_invoice_number = str(get(held, "invoice_number", "") or "")
    view.awaits_first_payment = awaits_first_payment(held)
    view.held_plans_text = (
        f"A new plan cannot start while your {name} subscription has an invoice to pay: you "
        "would be billed for both. Pay that invoice, or cancel that subscription in Manage "
        "subscription, then choose a plan here."
    )
    return view


def subscription_view(sub: Any, catalog: dict[str, Plan], held: Any = None) -> SubscriptionView:
    """`held`: services.subscriptions.held_subscription's answer (a HeldDTO, or None)."""
    return _with_held(_subscription_view(sub, catalog), held)


def _subscription_view(sub: Any, catalog: dict[str, Plan]) -> SubscriptionView:
    if sub is None:
        return SubscriptionView()
    status = str(get(sub, "status", "") or "")
    plan_key = str(get(sub, "plan", "free") or "free")
    plan = catalog.get(plan_key)
    live = status in ("active", "trialing", "past_due")
    amount = get(sub, "amount", plan.amount if plan else None)
    end = get(sub, "current_period_end")
    cancel = bool(get(sub, "cancel_at_period_end", False))
    ends = get(sub, "ends_at")  # subscriptions.ends_at: either Stripe field, one rule
    subscribed_name = str(get(sub, "plan_name", "") or (plan.name if plan else plan_key.title()))
    ended_text = ""
    if not live:
        # When it ended: a scheduled end (cancel_at, or the period's end), else the moment
        # it was canceled (a cancel now ends it then, not at the period's end), else the end.
        ended = get(sub, "cancel_at") or (end if cancel else None) or get(sub, "canceled_at") or end
        renews = ""
        # Only a canceled one ended: an incomplete, paused or unpaid one has not (its period
        # end is often still to come), and one that never began (incomplete_expired) never will.
        if status == "canceled" and ended:
            renews = f"Ended {fmt.date(ended)}"
            ended_text = f"Your {subscribed_name} subscription ended on {fmt.date(ended)}."
    elif ends is not None or cancel:
        renews = f"Cancels on {fmt.date(ends)}" if ends else "Cancels at period end"
    elif status == "past_due":
        # Stripe renews nothing while the invoice is unpaid: no "Renews on" promise.
        # "billing period": the banner beside it gives the grace period's end.
        renews = (
            f"Payment failed · billing period ends {fmt.date(end)}" if end else "Payment failed"
        )
    elif status == "trialing":
        # Nothing paid yet: the trial's end is the first charge, not a renewal.
        renews = f"Trial ends on {fmt.date(end)}" if end else ""
    else:
        renews = f"Renews on {fmt.date(end)}" if end else ""
    grace = get(sub, "grace_ends_at")
    price = fmt.money(amount, get(sub, "currency", "usd")) if live and amount else ""
    return SubscriptionView(
        plan=plan_key if live else "free",
        plan_name=subscribed_name if live else "Free",
        status=status,
        status_label=fmt.status_label(status),
        status_color=fmt.status_color(status),
        price=f"{price} / month" if price else "",
        price_label=f"{price} per month" if price else "",
        renews_text=renews,
        cancel_at_period_end=cancel,
        cancels=live and (ends is not None or cancel),
        past_due=status == "past_due",
        grace_text=_grace_text(sub, grace),
        is_subscriber=live,
        ended_text=ended_text,
        renews_on=fmt.date(end) if renews.startswith("Renews on") else "",
        ends_on=fmt.date(ends) if live and ends is not None else "",
    )


def portal_change_text(before: SubscriptionView, after: SubscriptionView) -> str:
    """What changed in the customer portal, as the notice on coming back says it ("" when
    nothing it names did: the webhook may not be in yet, or nothing was changed)."""
    if before.is_subscriber and not after.is_subscriber:
        return f"Your {before.plan_name} subscription has ended. You are on the Free plan."
    if not after.is_subscriber:
        return ""
    if after.plan != before.plan:
        text = f"Your plan is now {after.plan_name}."
        if after.past_due and not before.past_due:
            # The change's invoice was declined: not a success, whatever else it says.
            return text + " Its payment failed: see below to pay it."
        return text + (f" It will be canceled on {after.ends_on}." if after.ends_on else "")
    if after.cancels and not before.cancels:
        when = f"on {after.ends_on}" if after.ends_on else "at the end of the billing period"
        return f"Your {after.plan_name} plan will be canceled {when}."
    if before.cancels and not after.cancels:
        text = f"Your {after.plan_name} plan is no longer set to cancel."
        return text + (f" It renews on {after.renews_on}." if after.renews_on else "")
    if before.past_due and not after.past_due:
        return f"Your payment went through: your {after.plan_name} plan is active."
    return ""


def credit_text(amount: int, currency: str) -> str:
    """The customer's credit balance (minor units), or "" without one."""
    if amount <= 0:
        return ""
    return f"Credit balance: {fmt.money(amount, currency)}, used first for your next invoices."


def due_view(inv: Any) -> DueView:
    """From the customer's newest failed payment still owed (services.invoices.payment_due,
    None without one): what is due and on which invoice."""
    if inv is None:
        return DueView()
    number = str(get(inv, "number", "") or "")
    amount = fmt.money(get(inv, "amount_remaining", 0) or 0, get(inv, "currency", "usd"))
    return DueView(
        text=f"{amount} is due on invoice {number}." if number else f"{amount} is due.",
        number=number,
        hosted_url=str(get(inv, "hosted_invoice_url", "") or ""),
    )


def invoice_view(inv: Any) -> InvoiceView:
    """The invoice's total, and how it was settled: a negative total reads "−$12.34",
    "credited to balance" with a Credit badge, never "$0.00 Paid"; an open one whose
    payment failed (InvoiceDTO.payment_failed) is badged "Payment failed", not "Open"."""
    status = str(get(inv, "status", "") or "")
    currency = get(inv, "currency", "usd")
    money = settlement(
        status=status,
        amount_due=get(inv, "amount_due", 0) or 0,
        amount_paid=get(inv, "amount_paid", 0) or 0,
        total=get(inv, "total"),
        amount_remaining=get(inv, "amount_remaining"),
        starting_balance=get(inv, "starting_balance"),
    )
    label, color = fmt.status_label(status), fmt.status_color(status)
    if get(inv, "payment_failed", False):  # the admin's "failed" filter lists these
        label, color = fmt.PAYMENT_FAILED, "red"
    note = ""
    if money.total < 0:
        amount = fmt.money(money.total, currency)  # with a minus sign, not a hyphen
        if is_credit(status, money.total):  # the admin's "credit" filter lists these
            # One badge, one colour: Stripe's open and paid credits were blue and green.
            note, label, color = "credited to balance", "Credit", "cyan"
    else:
        amount = fmt.money(money.total, currency)
        if status == "paid" and money.paid_from_balance:
            part = money.paid_from_balance < money.total
            note = (fmt.money(money.paid_from_balance, currency) + " " if part else "") + (
                "paid from balance"
            )
        elif status in ("open", "uncollectible") and 0 < money.amount_remaining < money.total:
            note = f"{fmt.money(money.amount_remaining, currency)} still due"
    return InvoiceView(
        id=str(get(inv, "id", "") or get(inv, "stripe_invoice_id", "") or ""),
        number=str(get(inv, "number", "") or "Draft"),
        date=fmt.date(get(inv, "created_at")),
        # No period known (a row from before its lines were read): a dash, not a blank cell.
        period=fmt.period(get(inv, "period_start"), get(inv, "period_end")) or "—",
        description=str(get(inv, "description", "") or ""),
        amount=amount,
        amount_note=note,
        status=status,
        status_label=label,
        status_color=color,
        hosted_url=str(get(inv, "hosted_invoice_url", "") or ""),
        pdf_url=str(get(inv, "invoice_pdf", "") or ""),
        user_email=str(get(inv, "user_email", "") or ""),
        user_id=int(get(inv, "user_id", 0) or 0),
    )


def admin_subscription_view(
    sub: Any, user: Any, catalog: dict[str, Plan], dashboard: str | None = None
) -> AdminSubscriptionView:
    """From the admin detail's subscription (a SubscriptionDTO or its dict) and user.
    `dashboard`: services.admin.stripe_dashboard_base(), None on the sandbox."""
    customer = str(get(user, "stripe_customer_id", "") or "")
    customer_url = f"{dashboard}/customers/{customer}" if dashboard and customer else ""
    if sub is None:
        return AdminSubscriptionView(customer_id=customer, customer_url=customer_url)
    # The dashboard's own view model: same status wording, colours and renew/cancel rule.
    shown = subscription_view(sub, catalog)
    status = shown.status
    plan_name = str(get(sub, "plan_name", "") or get(sub, "plan", "")).strip()
    if shown.is_subscriber:
        headline = f"{plan_name} · {shown.price}" if shown.price else plan_name
        period_label = "Current period"
    else:
        headline = f"Free plan · {plan_name} subscription {fmt.status_label(status).lower()}"
        period_label = "Last period"
    start, end = get(sub, "current_period_start"), get(sub, "current_period_end")
    period = fmt.period(start, end)
    # One known end alone read as a one-day period ("Current period: Jan 2, 2027").
    if period and (start is None or end is None):
        period = f"until {period}" if start is None else f"since {period}"
    grace = get(sub, "grace_ends_at")
    grace_text = ""
    if grace is not None and status == "past_due":
        # effective_plan says whether the grace days are still running.
        if str(get(sub, "effective_plan", "") or "") == "free":
            grace_text = f"Grace period ended on {fmt.date(grace)}: on Free quotas"
        else:
            grace_text = f"Grace period ends on {fmt.date(grace)}, then Free quotas"
    sub_id = str(get(sub, "stripe_subscription_id", "") or "")
    return AdminSubscriptionView(
        has_subscription=True,
        headline=headline,
        status_label=shown.status_label,
        status_color=shown.status_color,
        period_text=f"{period_label}: {period}" if period else "",
        ends_text=shown.renews_text,
        grace_text=grace_text,
        customer_id=customer,
        customer_url=customer_url,
        subscription_id=sub_id,
        subscription_url=f"{dashboard}/subscriptions/{sub_id}" if dashboard and sub_id else "",
    )


def admin_user_view(row: Any) -> AdminUserView:
    status = str(get(row, "status", "") or "")
    if status == "none":
        status = ""
    return AdminUserView(
        id=int(get(row, "id", 0)),
        email=str(get(row, "email", "")),
        display_name=str(get(row, "display_name", "") or ""),
        role=str(get(row, "role", "user")),
        plan=str(get(row, "plan", "free") or "free"),
        plan_name=str(get(row, "plan_name", "") or "Free"),
        status=status or "free",
        status_label=fmt.status_label(status) if status else "No subscription",
        status_color=fmt.status_color(status or "free"),
        created=fmt.date(get(row, "created_at")),
        meters=[meter_view(u) for u in (get(row, "usage", None) or [])],
        ends_text=f"Cancels on {fmt.date(ends)}" if (ends := get(row, "ends_at")) else "",
        owed_text=f"{fmt.money(owed, get(row, 'currency', 'usd'))} owed"
        if (owed := int(get(row, "amount_owed", 0) or 0)) > 0
        else "",
    )


def quota_view(q: Any) -> QuotaView:
    metric = str(get(q, "metric", ""))
    return QuotaView(
        metric=metric,
        label=METRICS[metric].label if metric in METRICS else metric,
        limit_text=_limit_text(int(get(q, "limit", 0))),
        plan_limit_text=_limit_text(int(get(q, "plan_limit", 0))),
        source=str(get(q, "source", "plan")),
        reason=str(get(q, "reason", "") or ""),
    )


def audit_view(a: Any) -> AuditView:
    def lim(v: Any) -> str:
        return "—" if v is None else _limit_text(int(v))

    metric = str(get(a, "metric", ""))
    return AuditView(
        when=fmt.date_time(get(a, "created_at")),  # two changes in a day apart, in order
        metric=METRICS[metric].label if metric in METRICS else metric,
        change=f"{lim(get(a, 'old_limit'))} → {lim(get(a, 'new_limit'))}",
        reason=str(get(a, "reason", "")),
        who=str(get(a, "actor_email", "") or ""),
    )


def api_key_view(k: Any) -> ApiKeyView:
    name, prefix = str(get(k, "name", "")), str(get(k, "prefix", ""))
    return ApiKeyView(
        id=int(get(k, "id", 0)),
        name=name,
        prefix=prefix,
        owner=str(get(k, "service_name", "") or get(k, "user_email", "") or ""),
        created=fmt.date(get(k, "created_at")),
        last_used=fmt.date(get(k, "last_used_at")) or "Never",
        revoked=get(k, "revoked_at") is not None or bool(get(k, "revoked", False)),
        access=key_access_text(get(k, "scopes", None) or ()),
        revoke_question=f"Revoke the key “{name}” ({prefix}…)?",
    )


def key_access_text(scopes: Any) -> str:
    """What a key may do, in the console's words (its scopes; none: all its owner may)."""
    have = set(scopes)
    if not have:
        return "Full access"
    for _choice, label, choice_scopes in KEY_ACCESS:
        if have == set(choice_scopes):
            return label
    return ", ".join(sorted(have))


_STAT_LABELS = {
    "total_users": "Total users",
    "active_subscribers": "Subscribers",
    "mrr": "MRR",
    "failed_payments": "Failed payments",
    "past_due_subscriptions": "Past due",
}
# One definition for every subscriber count (services/admin.headline_stats).
_STAT_HINTS = {
    "active_subscribers": "Active, trialing, or past due within the grace period",
    "mrr": "Active and past due within the grace period; trials excluded",
    "failed_payments": "Open invoices whose payment failed, still owed",
    "past_due_subscriptions": "Users whose subscription is past due",
}
_STAT_ACTIONS = {"failed_payments": "failed", "past_due_subscriptions": "past_due"}


def stat_views(stats: dict[str, Any]) -> list[StatView]:
    """headline_stats() -> cards; the per-plan dict becomes one card per plan."""
    stats = dict(stats or {})
    currency = str(stats.pop("currency", "usd") or "usd")
    owed = stats.pop("failed_amount_due", None)
    out: list[StatView] = []
    for key, value in stats.items():
        if key == "failed_payments" and isinstance(owed, int):
            # How much is owed, not only how many invoices: what the admin chases.
            hint = f"{fmt.money(owed, currency)} still owed on open invoices whose payment failed"
            out.append(StatView(_STAT_LABELS[key], _stat(key, value), hint, _STAT_ACTIONS[key]))
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                # The plan's name, as the list and its filter say it (BILLING_PLANS_JSON may
                # rename one), not its key.
                plan = get_catalog().get(str(sub))
                name = plan.name if plan is not None else str(sub).title()
                out.append(StatView(label=f"{name} subscribers", value=_stat(key, v)))
            continue
        label = _STAT_LABELS.get(key) or key.replace("_", " ").capitalize()
        hint = _STAT_HINTS.get(key, "")
        if key == "mrr" and isinstance(value, int | float):
            out.append(StatView(label=label, value=fmt.money(int(value), currency), hint=hint))
        else:
            out.append(StatView(label, _stat(key, value), hint, _STAT_ACTIONS.get(key, "")))
    # Money and trouble first, then counts.
    order = ["MRR", "Subscribers", "Failed payments", "Past due", "Total users"]
    return sorted(out, key=lambda s: order.index(s.label) if s.label in order else len(order))


def _stat(key: str, value: Any) -> str:
    if isinstance(value, int | float) and ("revenue" in key or "amount" in key):
        return fmt.money(int(value))
    if isinstance(value, int):
        return fmt.number(value)
    return str(value)
