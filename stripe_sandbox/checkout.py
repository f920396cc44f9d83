"""Hosted Checkout and the billing portal session objects (the pages are in pages.py)."""

from __future__ import annotations

import copy
from typing import Any

from . import objects
from .billing import (
    attach_card,
    billing_mode_param,
    create_customer,
    create_subscription,
    item_specs,
)
from .cards import Card, attach_error
from .errors import StripeError, missing_param
from .params import apply_metadata, as_bool, as_dict, as_int, as_list
from .store import SandboxState


def create_checkout_session(st: SandboxState, params: dict[str, Any]) -> dict[str, Any]:
    mode = params.get("mode")
    if not mode:
        raise missing_param("mode")
    if mode != "subscription":
        raise StripeError(
            f"The Stripe sandbox only supports mode=subscription (got {mode!r}).", param="mode"
        )
    raw_items = as_list(params.get("line_items"), "line_items")
    if not raw_items:
        raise missing_param("line_items")
    specs = item_specs(st, raw_items, "line_items")
    cus_id = params.get("customer") or None
    if cus_id:
        st.get(st.customers, cus_id, "customer", param="customer", status=400)
        if params.get("customer_email"):
            raise StripeError(
                "You may only specify one of these parameters: customer, customer_email.",
                param="customer_email",
            )
    now = st.now()
    session_id = st.new_id("cs_test", 58)
    expires_at = as_int(params.get("expires_at"), "expires_at") or now + 24 * 3600
    total = sum(price["unit_amount"] * qty for price, qty, _ in specs)
    session = objects.checkout_session(
        session_id,
        now,
        st.url(f"/checkout/{session_id}"),
        customer=cus_id,
        customer_email=params.get("customer_email") or None,
        client_reference_id=params.get("client_reference_id") or None,
        success_url=params.get("success_url") or None,
        cancel_url=params.get("cancel_url") or None,
        metadata=apply_metadata({}, as_dict(params.get("metadata"), "metadata")),
        allow_promotion_codes=as_bool(params.get("allow_promotion_codes"), "a"),
        locale=params.get("locale") or None,
        currency=specs[0][0]["currency"],
        amount_subtotal=total,
        amount_total=total,
    )
    session["expires_at"] = expires_at
    sub_data = as_dict(params.get("subscription_data"), "subscription_data")
    if sub_data.get("trial_period_days") or sub_data.get("trial_end"):
        raise StripeError(
            "Trials are not supported by the Stripe sandbox.",
            param="subscription_data[trial_period_days]",
        )
    # Validated now (a bad value fails the session create, as on Stripe); the subscription's
    # updated_at is set when it is created.
    billing_mode_param(sub_data.get("billing_mode"), "subscription_data[billing_mode]", now)
    st.checkout_sessions[session_id] = session
    st.checkout_internal[session_id] = {
        "items": specs,
        "subscription_metadata": apply_metadata(
            {}, as_dict(sub_data.get("metadata"), "subscription_data[metadata]")
        ),
        "subscription_description": sub_data.get("description") or None,
        "subscription_billing_mode": sub_data.get("billing_mode"),
    }
    return session


def checkout_line_items(st: SandboxState, session_id: str) -> list[dict[str, Any]]:
    """The session's ``line_items`` list (Stripe's "item" objects)."""
    st.get(st.checkout_sessions, session_id, "checkout.session")
    out = []
    for n, (price, qty, _) in enumerate(st.checkout_internal[session_id]["items"]):
        name = st.products.get(price["product"], {}).get("name", price["id"])
        amount = price["unit_amount"] * qty
        out.append(
            {
                "id": f"li_{session_id[8:30]}{n}",
                "object": "item",
                "amount_discount": 0,
                "amount_subtotal": amount,
                "amount_tax": 0,
                "amount_total": amount,
                "currency": price["currency"],
                "description": name,
                "price": copy.deepcopy(price),
                "quantity": qty,
            }
        )
    return out


def complete_checkout(
    st: SandboxState,
    session_id: str,
    card: Card,
    *,
    email: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The customer pressed Pay with a valid card: [customer.created], payment_method.attached,
    customer.updated, customer.subscription.created, invoice.created, invoice.finalized,
    invoice.paid, invoice.payment_succeeded, checkout.session.completed.
    A card that would be declined raises (402 card_error) before anything is created."""
    session = st.get(st.checkout_sessions, session_id, "checkout.session")
    if session["status"] != "open":
        raise StripeError(f"This Checkout Session is {session['status']}.", code="session_closed")
    if error := attach_error(card) or card.charge_error():
        raise error
    internal = st.checkout_internal[session_id]
    if session["customer"]:
        cus = st.get(st.customers, session["customer"], "customer")
    else:
        email = session["customer_email"] or email
        if not email or "@" not in email:
            raise StripeError("Please enter a valid email address.", param="email")
        cus = create_customer(st, {"email": email, "name": name})
    attach_card(st, cus, card, name)
    sub = create_subscription(
        st,
        cus["id"],
        internal["items"],
        metadata=dict(internal["subscription_metadata"]),
        description=internal["subscription_description"],
        billing_mode=billing_mode_param(
            internal["subscription_billing_mode"], "subscription_data[billing_mode]", st.now()
        ),
    )
    session.update(
        status="complete",
        payment_status="paid",
        customer=cus["id"],
        subscription=sub["id"],
        invoice=sub["latest_invoice"],
        customer_details={
            "address": None,
            "email": cus["email"],
            "name": name or cus["name"],
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
            "business_name": None,
            "individual_name": None,
        },
    )
    st.emit("checkout.session.completed", session)
    return session


def expire_checkout_session(st: SandboxState, session_id: str) -> dict[str, Any]:
    session = st.get(st.checkout_sessions, session_id, "checkout.session")
    if session["status"] != "open":
        raise StripeError('Only Checkout Sessions with a status in ["open"] can be expired.')
    session["status"] = "expired"
    st.emit("checkout.session.expired", session)
    return session


def create_portal_session(st: SandboxState, params: dict[str, Any]) -> dict[str, Any]:
    cus_id = params.get("customer")
    if not cus_id:
        raise missing_param("customer")
    st.get(st.customers, cus_id, "customer", param="customer", status=400)
    session_id = st.new_id("bps", 24)
    session = objects.portal_session(
        session_id,
        st.now(),
        cus_id,
        params.get("return_url") or None,
        st.url(f"/portal/{session_id}"),
    )
    st.portal_sessions[session_id] = session
    return session
