"""The pages a person sees: hosted Checkout, the billing portal, hosted invoices (+ PDF) and a
small sandbox dashboard. Plain server-rendered HTML with inline CSS; no JavaScript.

Stable element ids (for browser tests) are listed in stripe_sandbox/README.md.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from . import billing, checkout
from .cards import parse_card
from .errors import StripeError
from .objects import money, price_label
from .params import decode_form
from .pdf import invoice_pdf, issued_at
from .store import SandboxState

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,
sans-serif;color:#1a1f36;background:#f6f9fc}
a{color:#635bff;text-decoration:none}a:hover{text-decoration:underline}
.banner{background:#ffde92;color:#5c3c00;text-align:center;font-size:12px;padding:4px;
letter-spacing:.02em}
.wrap{max-width:960px;margin:0 auto;padding:32px 20px}
.narrow{max-width:720px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:48px;align-items:start}
@media(max-width:760px){.grid{grid-template-columns:1fr}}
.card{background:#fff;border-radius:10px;box-shadow:0 2px 5px rgba(50,50,93,.08),
0 1px 2px rgba(0,0,0,.06);padding:24px;margin-bottom:20px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:16px;margin:0 0 14px;color:#3c4257}
.muted{color:#697386}.small{font-size:13px}
.price{font-size:36px;font-weight:600;margin:8px 0 2px}
.merchant{font-weight:600;color:#3c4257;margin-bottom:28px;display:flex;gap:10px;
align-items:center}
.logo{width:28px;height:28px;border-radius:6px;background:#635bff;color:#fff;display:inline-flex;
align-items:center;justify-content:center;font-weight:700}
label{display:block;font-size:13px;font-weight:500;color:#3c4257;margin:14px 0 6px}
input{width:100%;padding:10px 12px;border:1px solid #d5dbe1;border-radius:6px;font-size:15px;
background:#fff}
input:focus{outline:none;border-color:#635bff;box-shadow:0 0 0 3px rgba(99,91,255,.2)}
input[readonly]{background:#f6f9fc;color:#697386}
.row{display:flex;gap:10px}.row>*{flex:1}
button{cursor:pointer;border:0;border-radius:6px;padding:10px 16px;font-size:15px;
font-weight:600;background:#635bff;color:#fff}
button:hover{background:#5148e5}
button.secondary{background:#fff;color:#3c4257;border:1px solid #d5dbe1}
button.secondary:hover{background:#f6f9fc}
button.danger{background:#fff;color:#df1b41;border:1px solid #f2c6cf}
button.danger:hover{background:#fff5f7}
.pay{width:100%;margin-top:20px;padding:12px}
.hint{background:#f0f4ff;border:1px dashed #b9b5ff;border-radius:6px;padding:8px 10px;
font-size:13px;color:#3c4257;margin-top:14px}
.error{background:#fff5f7;border:1px solid #f2c6cf;color:#a41c3a;border-radius:6px;
padding:10px 12px;margin:14px 0}
.notice{background:#effaf3;border:1px solid #b5e4c8;color:#1c6b3c;border-radius:6px;
padding:10px 12px;margin-bottom:20px}
.badge{display:inline-block;font-size:12px;font-weight:600;border-radius:4px;padding:2px 8px;
background:#e3e8ee;color:#3c4257;vertical-align:middle}
.badge.active,.badge.paid,.badge.complete,.badge.succeeded{background:#d7f7c2;color:#05690d}
.badge.past_due,.badge.open,.badge.incomplete,.badge.pending{background:#fcedb9;color:#a82c00}
.badge.canceled,.badge.void,.badge.uncollectible,.badge.expired,.badge.failed{background:#ffe7f2;
color:#b3093c}
table{width:100%;border-collapse:collapse;font-size:14px}
th{text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#697386;
font-weight:600;border-bottom:1px solid #e3e8ee;padding:8px 6px}
td{border-bottom:1px solid #f0f3f7;padding:9px 6px;vertical-align:top}
td.num,th.num{text-align:right;white-space:nowrap}
.actions{display:flex;flex-wrap:wrap;gap:10px;margin-top:16px}
.actions form{margin:0}
.plans{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.plan{border:1px solid #e3e8ee;border-radius:8px;padding:14px}
.plan.current{border-color:#635bff;background:#f7f7ff}
.back{display:inline-block;margin-bottom:24px;color:#697386}
code{background:#f0f3f7;border-radius:4px;padding:1px 5px;font-size:13px}
"""

NOTICES = {
    "switched": "Your plan was changed.",
    "scheduled": "Your subscription will be canceled at the end of the current period.",
    "resumed": "Your subscription will continue; the scheduled cancellation was removed.",
    "canceled": "Your subscription was canceled.",
    "card_updated": "Your card was updated.",
    "card_updated_paid": "Your card was updated and the outstanding invoice was paid.",
    "card_updated_failed": "Your card was saved, but the payment for the outstanding invoice "
    "failed.",
}


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_date(ts: int | None) -> str:
    """As the app writes dates ("Jan 7, 2027"), so a person going between them reads one
    format."""
    return datetime.fromtimestamp(ts, UTC).strftime("%b %-d, %Y") if ts else "—"


# What to do about a refused card, after Stripe's own words (as Stripe Checkout does):
# "Your card was declined." alone leaves the payer guessing.
NEXT_STEP = {
    "card_declined": "Try another card.",
    "incorrect_number": "Check the number, or try another card.",
    "expired_card": "Check the expiry date, or try another card.",
}


def refusal(exc: StripeError) -> str:
    """A refusal as a page shows it: Stripe's message, then the next step for a card."""
    step = NEXT_STEP.get(exc.code or "") if exc.type == "card_error" else None
    return f"{exc.message} {step}" if step else exc.message


# Inline, so the browser asks the sandbox for no /favicon.ico (a 404 in every console).
ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='16' height='16' rx='3' fill='%23635bff'/%3E%3C/svg%3E"
)


def page(title: str, body: str, *, status: int = 200, narrow: bool = False) -> HTMLResponse:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="{ICON}">
<title>{e(title)}</title><style>{CSS}</style></head>
<body><div class="banner">TEST MODE · Stripe sandbox — no real payments are made</div>
<main class="wrap{" narrow" if narrow else ""}">{body}</main></body></html>"""
    # Never kept: Back to a Checkout paid meanwhile showed the kept card form, Pay and all.
    return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})


def message_page(
    title: str, text: str, link: tuple[str, str] | None, status: int = 200
) -> HTMLResponse:
    link_html = f'<p><a id="continue" href="{e(link[1])}">{e(link[0])}</a></p>' if link else ""
    return page(
        title,
        f'<div class="card"><h1 id="message-title">{e(title)}</h1>'
        f'<p class="muted" id="message">{e(text)}</p>{link_html}</div>',
        status=status,
        narrow=True,
    )


def _error_box(error: str | None) -> str:
    return f'<div class="error" id="card-error" role="alert">{e(error)}</div>' if error else ""


async def _form(request: Request) -> dict[str, Any]:
    return decode_form(await request.body())


def _product_name(st: SandboxState, price: dict[str, Any]) -> str:
    return st.products.get(price["product"], {}).get("name", price["id"])


def _card_label(st: SandboxState, cus: dict[str, Any]) -> str | None:
    pm = st.payment_methods.get(cus["invoice_settings"]["default_payment_method"] or "")
    if pm is None:
        return None
    card = pm["card"]
    return (
        f"{card['brand'].title()} •••• {card['last4']} "
        f"(expires {card['exp_month']:02d}/{card['exp_year'] % 100:02d})"
    )


def _success_url(session: dict[str, Any]) -> str | None:
    url = session["success_url"]
    return url.replace("{CHECKOUT_SESSION_ID}", session["id"]) if url else None


# --- checkout -----------------------------------------------------------------------------


def _checkout_form(
    st: SandboxState,
    session: dict[str, Any],
    *,
    error: str | None = None,
    error_field: str = "card-number",
    values: dict[str, Any] | None = None,
) -> HTMLResponse:
    values = values or {}
    # After a refusal the field to fix has the focus (a form post's page starts on <body>).
    focus = {error_field: " autofocus"} if error else {}
    items = st.checkout_internal[session["id"]]["items"]
    price, qty, _ = items[0]
    name = _product_name(st, price)
    cus = st.customers.get(session["customer"] or "")
    email = session["customer_email"] or (cus or {}).get("email")
    summary_rows = "".join(
        f"<tr><td>{e(_product_name(st, p))}"
        f"{' × ' + str(q) if q > 1 else ''}<br><span class='muted small'>"
        f"Billed {e(p['recurring']['interval'])}ly</span></td>"
        f"<td class='num'>{e(money(p['unit_amount'] * q, p['currency']))}</td></tr>"
        for p, q, _ in items
    )
    total = money(session["amount_total"] or 0, session["currency"] or "usd")
    email_field = (
        f'<input id="email" name="email" type="email" value="{e(email)}" readonly>'
        if email
        else f'<input id="email" name="email" type="email" required placeholder="you@example.com"'
        f' value="{e(values.get("email"))}"{focus.get("email", "")}>'
    )
    error_html = _error_box(error)
    back = (
        f'<a class="back" id="back" href="{e(session["cancel_url"])}">← Back</a>'
        if session["cancel_url"]
        else ""
    )
    interval = price["recurring"]["interval"]
    heading = f"Subscribe to {name}" + (f" × {qty}" if qty > 1 else "")
    body = f"""
<div class="grid">
  <section>
    {back}
    <div class="merchant"><span class="logo">{e(st.config.business_name[:1])}</span>
      {e(st.config.business_name)}</div>
    <div class="muted" id="plan-name">{e(heading)}</div>
    <div class="price" id="plan-price">{e(price_label(price))}</div>
    <div class="card" style="margin-top:28px"><table>{summary_rows}
      <tr><td><b>Total due today</b></td><td class="num"><b id="total">{e(total)}</b></td></tr>
    </table></div>
  </section>
  <section class="card">
    <h2>Pay with card</h2>
    <form method="post" action="/checkout/{e(session["id"])}" id="checkout-form">
      <label for="email">Email</label>{email_field}
      <label for="card-number">Card number</label>
      <input id="card-number" name="card_number" inputmode="numeric" autocomplete="cc-number"
        placeholder="1234 1234 1234 1234" value="{e(values.get("card_number"))}" required
        {focus.get("card-number", "")}>
      <div class="row">
        <div><label for="card-expiry">Expiry</label>
          <input id="card-expiry" name="card_expiry" placeholder="MM / YY"
            autocomplete="cc-exp" value="{e(values.get("card_expiry"))}"
            {focus.get("card-expiry", "")}></div>
        <div><label for="card-cvc">CVC</label>
          <input id="card-cvc" name="card_cvc" placeholder="CVC" autocomplete="cc-csc"
            inputmode="numeric" value="{e(values.get("card_cvc"))}"
            {focus.get("card-cvc", "")}></div>
      </div>
      <label for="card-name">Name on card</label>
      <input id="card-name" name="card_name" placeholder="Full name" autocomplete="cc-name"
        value="{e(values.get("card_name"))}">
      <div class="hint" id="test-card-hint">Test card: <b>4242 4242 4242 4242</b>, any future
        date, any CVC. Declined: <code>4000 0000 0000 0341</code>.</div>
      {error_html}
      <button type="submit" class="pay" id="pay">Pay</button>
      <p class="muted small" style="text-align:center">You will be charged {e(total)} now and
        then every {e(interval)} until you cancel.</p>
    </form>
  </section>
</div>"""
    return page(f"{heading} · {st.config.business_name}", body)


def _error_field(exc: StripeError) -> str:
    """The checkout field (its id) a refusal is about."""
    if exc.param == "email":
        return "email"
    return {
        "invalid_expiry_month": "card-expiry",
        "expired_card": "card-expiry",
        "invalid_cvc": "card-cvc",
    }.get(exc.decline_code or exc.code or "", "card-number")


def _closed_checkout(session: dict[str, Any]) -> HTMLResponse:
    if session["status"] == "complete":
        success = _success_url(session)
        return message_page(
            "This checkout session is already complete",
            "The payment went through and your subscription is active.",
            ("Continue →", success) if success else None,
        )
    return message_page(
        "This checkout session has expired",
        "Start again from the app to get a new checkout page.",
        ("← Back", session["cancel_url"]) if session["cancel_url"] else None,
    )


def checkout_routes(st: SandboxState) -> list[Route]:
    async def show(request: Request) -> Response:
        with st.lock:
            session = st.checkout_sessions.get(request.path_params["id"])
            if session is None:
                return message_page("Checkout session not found", "Check the link.", None, 404)
            if session["status"] != "open":
                return _closed_checkout(session)
            return _checkout_form(st, session)

    async def submit(request: Request) -> Response:
        form = await _form(request)
        with st.lock:
            session = st.checkout_sessions.get(request.path_params["id"])
            if session is None:
                return message_page("Checkout session not found", "Check the link.", None, 404)
            if session["status"] != "open":
                return _closed_checkout(session)
            try:
                card = parse_card(
                    form.get("card_number", ""),
                    form.get("card_expiry", ""),
                    form.get("card_cvc", ""),
                    now_year=datetime.fromtimestamp(st.now(), UTC).year,
                )
                checkout.complete_checkout(
                    st,
                    session["id"],
                    card,
                    email=(form.get("email") or "").strip() or None,
                    name=(form.get("card_name") or "").strip() or None,
                )
            except StripeError as exc:
                # Re-render with the values typed so far (minus nothing: it's test data).
                return _checkout_form(
                    st, session, error=refusal(exc), error_field=_error_field(exc), values=form
                )
            success = _success_url(session)
        if success:
            return RedirectResponse(success, status_code=303)
        return message_page("Payment successful", "Your subscription is active.", None)

    return [
        Route("/checkout/{id}", show, methods=["GET"]),
        Route("/checkout/{id}", submit, methods=["POST"]),
    ]


# --- billing portal -----------------------------------------------------------------------


def _portal_page(
    st: SandboxState, session: dict[str, Any], notice: str | None, error: str | None
) -> HTMLResponse:
    cus = st.customers.get(session["customer"])
    if cus is None:
        return message_page("Customer not found", "This customer was deleted.", None, 404)
    sid = session["id"]
    subs = [
        s
        for s in reversed(st.subscriptions.values())
        if s["customer"] == cus["id"] and s["status"] not in ("canceled", "incomplete_expired")
    ]
    blocks = []
    for n, sub in enumerate(subs):
        suffix = "" if n == 0 else f"-{sub['id']}"  # ids stay unique with several subscriptions
        item = sub["items"]["data"][0]
        price = item["price"]
        end = item["current_period_end"]
        # cancel_at is set by either form of scheduled cancellation (classic or flexible).
        scheduled = sub["cancel_at"] is not None
        if scheduled:
            when = f'Cancels on <b id="period-end{suffix}">{fmt_date(sub["cancel_at"])}</b>'
        elif sub["status"] == "past_due":
            when = (
                "Payment failed — update your card to keep your subscription "
                f'(period ends <b id="period-end{suffix}">{fmt_date(end)}</b>)'
            )
        elif sub["status"] == "incomplete":
            when = "Waiting for the first payment — update your card to activate it"
        else:
            when = f'Renews on <b id="period-end{suffix}">{fmt_date(end)}</b>'
        hidden = f'<input type="hidden" name="subscription" value="{e(sub["id"])}">'
        if scheduled:
            schedule_button = (
                f'<form method="post" action="/portal/{sid}/resume">{hidden}'
                f'<button id="resume{suffix}">Resume subscription</button></form>'
            )
        else:
            schedule_button = (
                f'<form method="post" action="/portal/{sid}/cancel">{hidden}'
                '<input type="hidden" name="when" value="period_end">'
                f'<button class="secondary" id="cancel-at-period-end{suffix}">'
                "Cancel at period end</button></form>"
            )
        plans = []
        for other in st.prices.values():
            if not other["active"] or not other["recurring"]:
                continue
            current = other["id"] == price["id"]
            button = (
                '<span class="badge active">Current plan</span>'
                if current
                else f'<form method="post" action="/portal/{sid}/switch">{hidden}'
                f'<input type="hidden" name="price" value="{e(other["id"])}">'
                f'<button class="secondary" id="switch-{e(other["id"])}{suffix}">'
                f"Switch to {e(_product_name(st, other))}</button></form>"
            )
            plans.append(
                f'<div class="plan{" current" if current else ""}">'
                f"<b>{e(_product_name(st, other))}</b>"
                f'<div class="muted small">{e(price_label(other))}</div>'
                f'<div style="margin-top:10px">{button}</div></div>'
            )
        blocks.append(
            f"""
<div class="card" id="subscription{suffix}" data-subscription-id="{e(sub["id"])}">
  <h2>Current plan</h2>
  <div style="display:flex;justify-content:space-between;align-items:center;gap:12px">
    <div><div style="font-size:20px;font-weight:600" id="current-plan{suffix}">
      {e(_product_name(st, price))}</div>
      <div class="muted">{e(price_label(price))}{
                " × " + str(item["quantity"]) if item["quantity"] > 1 else ""
            }</div></div>
    <span class="badge {e(sub["status"])}" id="subscription-status{suffix}">
      {e(sub["status"].replace("_", " "))}</span>
  </div>
  <p class="muted">{when}</p>
  <div class="actions">{schedule_button}
    <form method="post" action="/portal/{sid}/cancel">{hidden}
      <input type="hidden" name="when" value="now">
      <button class="danger" id="cancel-now{suffix}">Cancel now</button></form>
  </div>
  <h2 style="margin-top:24px">Change plan</h2>
  <div class="plans">{"".join(plans)}</div>
</div>"""
        )
    if not subs:
        blocks.append(
            '<div class="card" id="no-subscription"><h2>Current plan</h2>'
            '<p class="muted">You have no active subscription.</p></div>'
        )
    card = _card_label(st, cus)
    invoices = [i for i in reversed(st.invoices.values()) if i["customer"] == cus["id"]]
    invoice_rows = (
        "".join(
            f"<tr><td>{fmt_date(i['created'])}</td><td>{e(i['number'] or 'Draft')}</td>"
            f"<td class='num'>{e(money(i['total'], i['currency']))}</td>"
            f"<td><span class='badge {e(i['status'])}'>{e(i['status'])}</span></td>"
            f"<td class='num'>"
            + (
                f"<a href='{e(i['hosted_invoice_url'])}'>View</a> · "
                f"<a href='{e(i['invoice_pdf'])}'>PDF</a>"
                if i["hosted_invoice_url"]
                else ""
            )
            + "</td></tr>"
            for i in invoices[:12]
        )
        or "<tr><td colspan='5' class='muted'>No invoices yet.</td></tr>"
    )
    back = session["return_url"]
    back_html = (
        f'<a class="back" id="return-link" href="{e(back)}">← Return to {e(st.config.app_name)}</a>'
        if back
        else ""
    )
    notice_html = f'<div class="notice" id="notice">{e(NOTICES[notice])}</div>' if notice else ""
    error_html = _error_box(error)
    body = f"""
{back_html}
<div class="merchant"><span class="logo">{e(st.config.business_name[:1])}</span>
  {e(st.config.business_name)} · Billing</div>
<p class="muted" id="customer-email">{e(cus["email"] or cus["name"] or cus["id"])}</p>
{notice_html}{error_html}
{"".join(blocks)}
<div class="card" id="payment-method"><h2>Payment method</h2>
  <p id="current-card">{e(card) if card else '<span class="muted">No card on file.</span>'}</p>
  <form method="post" action="/portal/{sid}/card" class="row" style="align-items:flex-end">
    <div><label for="card-number">New card number</label>
      <input id="card-number" name="card_number" inputmode="numeric"
        placeholder="4242 4242 4242 4242" required></div>
    <div style="flex:0 0 auto"><button id="update-card">Update card</button></div>
  </form>
  <div class="hint">Test cards: <b>4242 4242 4242 4242</b> works; <code>4000 0000 0000 0341</code>
    is saved but future charges fail.</div>
</div>
<div class="card" id="invoices"><h2>Invoice history</h2>
  <table><tr><th>Date</th><th>Number</th><th class="num">Amount</th><th>Status</th>
  <th></th></tr>{invoice_rows}</table></div>"""
    return page(f"Billing · {st.config.business_name}", body, narrow=True)


def portal_routes(st: SandboxState) -> list[Route]:
    def session_or_404(request: Request) -> dict[str, Any] | None:
        return st.portal_sessions.get(request.path_params["id"])

    def back(session: dict[str, Any], **query: str) -> RedirectResponse:
        url = f"/portal/{session['id']}" + (f"?{urlencode(query)}" if query else "")
        return RedirectResponse(url, status_code=303)

    def own_subscription(session: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
        sub = st.subscriptions.get(form.get("subscription") or "")
        if sub is None or sub["customer"] != session["customer"]:
            raise StripeError("That subscription does not belong to this customer.")
        return sub

    async def show(request: Request) -> Response:
        with st.lock:
            session = session_or_404(request)
            if session is None:
                return message_page("Portal session not found", "Check the link.", None, 404)
            notice = request.query_params.get("notice")
            return _portal_page(
                st,
                session,
                notice if notice in NOTICES else None,
                request.query_params.get("error"),
            )

    def action(fn: Callable[[dict[str, Any], dict[str, Any]], str]) -> Callable:
        """A portal form POST: run ``fn`` (returns a notice code), redirect back (303)."""

        async def endpoint(request: Request) -> Response:
            form = await _form(request)
            with st.lock:
                session = session_or_404(request)
                if session is None:
                    return message_page("Portal session not found", "Check the link.", None, 404)
                try:
                    notice = fn(session, form)
                except StripeError as exc:
                    return back(session, error=refusal(exc))
                return back(session, notice=notice)

        return endpoint

    def switch(session: dict[str, Any], form: dict[str, Any]) -> str:
        sub = own_subscription(session, form)
        if form.get("price") not in st.prices:
            raise StripeError("Choose one of the plans shown.")
        item = sub["items"]["data"][0]
        billing.update_subscription(
            st,
            sub["id"],
            {
                "items": [{"id": item["id"], "price": form.get("price")}],
                "proration_behavior": st.config.portal_proration_behavior,
            },
        )
        return "switched"

    def cancel(session: dict[str, Any], form: dict[str, Any]) -> str:
        sub = own_subscription(session, form)
        if form.get("when") == "now":
            billing.cancel_subscription(st, sub["id"], {})
            return "canceled"
        if sub["billing_mode"]["type"] == "flexible":
            # Stripe's portal (since late 2025) schedules a flexible subscription's end as
            # cancel_at = the period end and leaves cancel_at_period_end false.
            billing.update_subscription(st, sub["id"], {"cancel_at": "max_period_end"})
        else:
            billing.update_subscription(st, sub["id"], {"cancel_at_period_end": "true"})
        return "scheduled"

    def resume(session: dict[str, Any], form: dict[str, Any]) -> str:
        sub = own_subscription(session, form)
        # Undo whichever form the cancellation took: the flag, or a cancel_at time.
        undo = (
            {"cancel_at_period_end": "false"} if sub["cancel_at_period_end"] else {"cancel_at": ""}
        )
        billing.update_subscription(st, sub["id"], undo)
        return "resumed"

    def card(session: dict[str, Any], form: dict[str, Any]) -> str:
        parsed = parse_card(form.get("card_number", ""), form.get("card_expiry", ""))
        _, retried = billing.update_default_card(st, session["customer"], parsed)
        if not retried:
            return "card_updated"
        return (
            "card_updated_paid"
            if all(i["status"] == "paid" for i in retried)
            else ("card_updated_failed")
        )

    return [
        Route("/portal/{id}", show, methods=["GET"]),
        Route("/portal/{id}/switch", action(switch), methods=["POST"]),
        Route("/portal/{id}/cancel", action(cancel), methods=["POST"]),
        Route("/portal/{id}/resume", action(resume), methods=["POST"]),
        Route("/portal/{id}/card", action(card), methods=["POST"]),
    ]


# --- hosted invoice -----------------------------------------------------------------------


def _invoice_page(st: SandboxState, inv: dict[str, Any], error: str | None) -> HTMLResponse:
    cur = inv["currency"]
    rows = "".join(
        f"<tr><td>{e(line['description'])}<br><span class='muted small'>"
        f"{fmt_date(line['period']['start'])} – {fmt_date(line['period']['end'])}</span></td>"
        f"<td class='num'>{e(line['quantity'])}</td>"
        f"<td class='num'>{e(money(line['amount'], cur))}</td></tr>"
        for line in inv["lines"]["data"]
    )
    if inv["status"] == "paid":
        headline = (
            f"{money(inv['amount_paid'], cur)} paid on "
            f"{fmt_date(inv['status_transitions']['paid_at'])}"
        )
    elif inv["status"] == "open":
        headline = f"{money(inv['amount_remaining'], cur)} due"
    else:
        headline = f"{money(inv['total'], cur)} · {inv['status']}"
    pay_form = ""
    if inv["status"] == "open":
        error_html = f'<div class="error" id="card-error">{e(error)}</div>' if error else ""
        pay_form = f"""
<div class="card"><h2>Pay this invoice</h2>
  <form method="post" action="/invoice/{e(inv["id"])}/pay" class="row" style="align-items:flex-end">
    <div><label for="card-number">Card number</label>
      <input id="card-number" name="card_number" placeholder="4242 4242 4242 4242" required></div>
    <div style="flex:0 0 auto"><button id="pay-invoice">Pay {e(headline.split()[0])}</button>
    </div></form>{error_html}</div>"""
    body = f"""
<div class="merchant"><span class="logo">{e(st.config.business_name[:1])}</span>
  {e(st.config.business_name)}</div>
<div class="card">
  <div style="display:flex;justify-content:space-between;align-items:center">
    <h1 id="invoice-number">Invoice {e(inv["number"] or "(draft)")}</h1>
    <span class="badge {e(inv["status"])}" id="invoice-status">{e(inv["status"])}</span></div>
  <div class="price" id="invoice-amount">{e(headline)}</div>
  <p class="muted">Billed to {e(inv["customer_email"] or inv["customer"])} ·
    issued {fmt_date(issued_at(inv))}</p>
  <table><tr><th>Description</th><th class="num">Qty</th><th class="num">Amount</th></tr>
  {rows}
  <tr><td colspan="2"><b>Total</b></td>
    <td class="num"><b>{e(money(inv["total"], cur))}</b></td></tr>
  <tr><td colspan="2">Amount paid</td><td class="num">{e(money(inv["amount_paid"], cur))}</td></tr>
  <tr><td colspan="2">Amount remaining</td>
    <td class="num">{e(money(inv["amount_remaining"], cur))}</td></tr></table>
  <div class="actions"><a id="download-pdf" href="/invoice/{e(inv["id"])}/pdf">
    <button class="secondary" type="button">Download PDF</button></a></div>
</div>{pay_form}"""
    return page(f"Invoice {inv['number'] or inv['id']}", body, narrow=True)


def invoice_routes(st: SandboxState) -> list[Route]:
    async def show(request: Request) -> Response:
        with st.lock:
            inv = st.invoices.get(request.path_params["id"])
            if inv is None:
                return message_page("Invoice not found", "Check the link.", None, 404)
            return _invoice_page(st, inv, request.query_params.get("error"))

    async def pdf(request: Request) -> Response:
        with st.lock:
            inv = st.invoices.get(request.path_params["id"])
            if inv is None:
                return message_page("Invoice not found", "Check the link.", None, 404)
            data = invoice_pdf(inv, st.config.business_name)
            filename = f"invoice-{inv['number'] or inv['id']}.pdf"
        return Response(
            data,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{filename}"'},
        )

    async def pay(request: Request) -> Response:
        form = await _form(request)
        with st.lock:
            inv = st.invoices.get(request.path_params["id"])
            if inv is None:
                return message_page("Invoice not found", "Check the link.", None, 404)
            url = f"/invoice/{inv['id']}"
            try:
                card = parse_card(form.get("card_number", ""))
                if error := card.charge_error():
                    raise error
                billing.collect(st, inv, card)
            except StripeError as exc:
                url += "?" + urlencode({"error": refusal(exc)})
        return RedirectResponse(url, status_code=303)

    return [
        Route("/invoice/{id}", show, methods=["GET"]),
        Route("/invoice/{id}/pdf", pdf, methods=["GET"]),
        Route("/invoice/{id}/pay", pay, methods=["POST"]),
    ]


# --- dashboard ----------------------------------------------------------------------------


def dashboard_routes(st: SandboxState) -> list[Route]:
    async def show(request: Request) -> Response:
        with st.lock:
            now = st.now()
            rows = []
            for s in list(reversed(st.subscriptions.values()))[:20]:
                who = st.customers.get(s["customer"], {}).get("email") or s["customer"]
                item = s["items"]["data"][0]
                rows.append(
                    f"<tr><td><code>{e(s['id'])}</code></td><td>{e(who)}</td>"
                    f"<td>{e(_product_name(st, item['price']))}</td>"
                    f"<td><span class='badge {e(s['status'])}'>{e(s['status'])}</span>"
                    f"{' (cancels)' if s['cancel_at'] and s['status'] != 'canceled' else ''}</td>"
                    f"<td>{fmt_date(item['current_period_end'])}</td></tr>"
                )
            subs = (
                "".join(rows) or "<tr><td colspan='5' class='muted'>No subscriptions yet.</td></tr>"
            )
            events = []
            for evt in list(reversed(st.events.values()))[:25]:
                record = st.webhooks.records.get(evt["id"])
                status = record.status if record else "not sent"
                events.append(
                    f"<tr><td>{datetime.fromtimestamp(evt['created'], UTC):%Y-%m-%d %H:%M:%S}"
                    f"</td><td>{e(evt['type'])}</td><td><code>{e(evt['id'])}</code></td>"
                    f"<td><span class='badge {e(status)}'>{e(status)}</span></td></tr>"
                )
            event_rows = "".join(events) or "<tr><td colspan='4' class='muted'>None</td></tr>"
            webhook = st.webhooks.url or "not configured"
            catalog = ", ".join(
                f"{_product_name(st, p)} <code>{e(p['id'])}</code> {e(price_label(p))}"
                for p in st.prices.values()
            )
        body = f"""
<h1>Stripe sandbox</h1>
<p class="muted">A local stand-in for the Stripe API (test mode). Catalog: {catalog}.</p>
<div class="card"><h2>Clock</h2>
  <p>Sandbox time: <b id="clock-now">{datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M:%S} UTC</b>
  · webhooks → <code>{e(webhook)}</code></p>
  <div class="actions">
    <form method="post" action="/_sandbox/clock/advance">
      <input type="hidden" name="seconds" value="86400">
      <input type="hidden" name="return_to" value="/">
      <button class="secondary" id="advance-day">Advance 1 day</button></form>
    <form method="post" action="/_sandbox/clock/advance">
      <input type="hidden" name="months" value="1">
      <input type="hidden" name="return_to" value="/">
      <button id="advance-month">Advance 1 month (renewals)</button></form>
  </div></div>
<div class="card"><h2>Subscriptions</h2><table><tr><th>Id</th><th>Customer</th><th>Plan</th>
  <th>Status</th><th>Period end</th></tr>{subs}</table></div>
<div class="card"><h2>Recent events</h2><table><tr><th>Created</th><th>Type</th><th>Id</th>
  <th>Webhook</th></tr>{event_rows}</table></div>"""
        return page("Stripe sandbox", body)

    return [Route("/", show, methods=["GET"])]


def routes(st: SandboxState) -> list[Route]:
    return checkout_routes(st) + portal_routes(st) + invoice_routes(st) + dashboard_routes(st)
