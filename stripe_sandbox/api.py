"""Stripe's REST API (``/v1/...``) as stripe-python 16 calls it.

One wrapper (:func:`stripe_endpoint`) does what every Stripe endpoint shares: API-key auth,
form decoding, idempotency keys, the Stripe-Version / Request-Id headers, ``Date`` (by the
sandbox clock, as Stripe's is by its clock), ``expand[]`` and the error shape. The handlers
below only hold the resource logic.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import billing, checkout, objects
from .config import API_VERSION
from .errors import RESOURCE_NAMES, StripeError, no_such
from .params import (
    as_bool,
    as_dict,
    as_list,
    created_filter,
    decode_form,
    flatten,
    limit_of,
    matches_created,
)
from .store import IdempotentResult, SandboxState, request_context

Params = dict[str, Any]
Handler = Callable[..., Any]

# --- the shared wrapper -------------------------------------------------------------------


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":  # curl -u sk_test_...: also works against Stripe
        try:
            return base64.b64decode(value).decode().split(":", 1)[0] or None
        except ValueError:
            return None
    return None


def _authenticate(state: SandboxState, request: Request) -> str:
    key = _api_key(request)
    if not key:
        raise StripeError(
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
            status=401,
        )
    if not state.config.accepts_key(key):
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "***"
        raise StripeError(f"Invalid API Key provided: {masked}", status=401)
    return key


def _json(body: Any) -> bytes:
    return json.dumps(body, indent=2).encode("utf-8")


def stripe_endpoint(state: SandboxState, handler: Handler) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        request_id = "req_" + secrets.token_hex(7)
        headers = {
            "Request-Id": request_id,
            "Stripe-Version": request.headers.get("stripe-version") or API_VERSION,
            "Cache-Control": "no-cache, no-store",
        }
        idem_key = request.headers.get("idempotency-key") if request.method == "POST" else None
        store_key: tuple[str, str] | None = None
        try:
            api_key = _authenticate(state, request)
            params = decode_form(request.url.query)
            if request.method == "POST":
                params.update(decode_form(await request.body()))
            if idem_key is not None:
                if len(idem_key) > 255:
                    raise StripeError(
                        "Idempotency-Key must be 255 characters or fewer.",
                        type="idempotency_error",
                    )
                store_key = (api_key, idem_key)
                fingerprint = (request.method, request.url.path, tuple(flatten(params)))
                with state.lock:
                    stored = state.idempotency.get(store_key)
                if stored is not None:
                    if stored.fingerprint != fingerprint:
                        raise StripeError(
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{idem_key}' if you meant to execute a different request.",
                            type="idempotency_error",
                        )
                    return Response(
                        stored.body,
                        stored.status,
                        {**stored.headers, "Idempotent-Replayed": "true", **_date(state)},
                        media_type="application/json",
                    )
            with state.lock, request_context(request_id, idem_key):
                result = handler(state, params, **request.path_params)
                if isinstance(result, dict):
                    result = copy.deepcopy(result)
                    _expand(state, result, as_list(params.get("expand"), "expand"))
                status, body = 200, _json(result)
        except StripeError as exc:
            status, body = exc.status, _json(exc.body(request_id))
        if idem_key:
            headers["Idempotency-Key"] = idem_key
        # Stripe keeps results of requests that ran (success or card decline), not ones that
        # failed validation, so a corrected retry with the same key can still go through.
        if store_key is not None and status in (200, 402):
            with state.lock:
                state.idempotency[store_key] = IdempotentResult(fingerprint, status, body, headers)
        return Response(body, status, {**headers, **_date(state)}, media_type="application/json")

    return endpoint


def _date(state: SandboxState) -> dict[str, str]:
    """`Date` on the sandbox clock, after the handler ran: never before the `created` of an
    event the request emitted. The servers turn uvicorn's own (wall-clock) one off."""
    return {"Date": formatdate(state.now(), usegmt=True)}


def _expand(state: SandboxState, obj: dict[str, Any], paths: Iterable[str]) -> None:
    for path in paths:
        _expand_path(state, obj, str(path).split("."), str(path))


def _expand_path(state: SandboxState, node: Any, parts: list[str], full: str) -> None:
    if not parts or node is None:
        return
    key, rest = parts[0], parts[1:]
    if isinstance(node, dict) and node.get("object") in ("list", "search_result") and key == "data":
        for item in node["data"]:
            _expand_path(state, item, rest, full)
        return
    if isinstance(node, dict) and node.get("object") == "checkout.session" and key == "line_items":
        items = checkout.checkout_line_items(state, node["id"])
        node[key] = objects.list_object(items, f"/v1/checkout/sessions/{node['id']}/line_items")
        _expand_path(state, node[key], rest, full)
        return
    if not isinstance(node, dict) or key not in node:
        raise StripeError(f"This property cannot be expanded ({full}).", param="expand")
    value = node[key]
    if isinstance(value, str):
        target = state.find(value)
        if target is None and value in state.deleted_customers:
            target = {"id": value, "object": "customer", "deleted": True}
        if target is None:
            raise StripeError(f"This property cannot be expanded ({full}).", param="expand")
        node[key] = value = copy.deepcopy(
            state.event_view(target) if target.get("object") == "event" else target
        )
    _expand_path(state, value, rest, full)


# --- lists --------------------------------------------------------------------------------


def paginate(
    state: SandboxState,
    collection: dict[str, dict[str, Any]],
    matching: list[dict[str, Any]],
    params: Params,
    url: str,
    view: Callable[[dict[str, Any]], dict[str, Any]] = copy.deepcopy,
) -> dict[str, Any]:
    """Newest first, Stripe's cursor pagination (``starting_after`` / ``ending_before`` are ids,
    positioned by creation order even when the cursor object itself is filtered out)."""
    limit = limit_of(params)
    order = {obj_id: i for i, obj_id in enumerate(collection)}
    items = sorted(matching, key=lambda o: order[o["id"]], reverse=True)
    if cursor := params.get("starting_after"):
        if cursor not in order:
            raise _bad_cursor(cursor, "starting_after")
        older = [o for o in items if order[o["id"]] < order[cursor]]
        page, has_more = older[:limit], len(older) > limit
    elif cursor := params.get("ending_before"):
        if cursor not in order:
            raise _bad_cursor(cursor, "ending_before")
        newer = [o for o in items if order[o["id"]] > order[cursor]]
        page, has_more = newer[-limit:], len(newer) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    return objects.list_object([view(o) for o in page], url, has_more)


def _bad_cursor(cursor: str, param: str) -> StripeError:
    kind = RESOURCE_NAMES.get(str(cursor).split("_", 1)[0], "object")
    return no_such(kind, str(cursor), param=param, status=400)


def _filter_created(items: list[dict[str, Any]], params: Params) -> list[dict[str, Any]]:
    flt = created_filter(params.get("created"))
    return [o for o in items if matches_created(o["created"], flt)] if flt else items


# --- customers ----------------------------------------------------------------------------


def create_customer(st: SandboxState, p: Params) -> dict:
    return billing.create_customer(st, p)


def retrieve_customer(st: SandboxState, p: Params, id: str) -> dict:
    if id in st.deleted_customers:
        return {"id": id, "object": "customer", "deleted": True}
    return st.get(st.customers, id, "customer")


def update_customer(st: SandboxState, p: Params, id: str) -> dict:
    return billing.update_customer(st, id, p)


def delete_customer(st: SandboxState, p: Params, id: str) -> dict:
    return billing.delete_customer(st, id)


def list_customers(st: SandboxState, p: Params) -> dict:
    items = list(st.customers.values())
    if "email" in p:
        items = [c for c in items if c["email"] == p["email"]]
    items = _filter_created(items, p)
    return paginate(st, st.customers, items, p, "/v1/customers")


_SEARCH_TERM = re.compile(r"""(\w+)(?:\[['"]([^'"]+)['"]\])?\s*:\s*['"]([^'"]*)['"]""")


def search_customers(st: SandboxState, p: Params) -> dict:
    """A small subset of Stripe's search language: ``email:'a@b.c' AND metadata['k']:'v'``
    (also ``name`` and ``id``); exact matches joined by AND."""
    query = p.get("query")
    if not query:
        raise StripeError("Missing required param: query.", param="query")
    clauses = [c.strip() for c in re.split(r"\s+AND\s+", query)]
    terms = []
    for clause in clauses:
        m = _SEARCH_TERM.fullmatch(clause)
        if not m or m.group(1) not in ("email", "name", "metadata", "id", "phone"):
            raise StripeError(
                f"The sandbox cannot parse this search query clause: {clause!r}", param="query"
            )
        terms.append(m.groups())

    def hit(cus: dict[str, Any]) -> bool:
        for field, key, value in terms:
            actual = cus["metadata"].get(key or "") if field == "metadata" else cus.get(field)
            if actual != value:
                return False
        return True

    order = list(st.customers)
    items = sorted(
        (c for c in st.customers.values() if hit(c)),
        key=lambda c: order.index(c["id"]),
        reverse=True,
    )
    limit = limit_of(p)
    offset = int(str(p.get("page") or "page_0").removeprefix("page_") or 0)
    page = items[offset : offset + limit]
    has_more = offset + limit < len(items)
    return {
        "object": "search_result",
        "data": copy.deepcopy(page),
        "has_more": has_more,
        "next_page": f"page_{offset + limit}" if has_more else None,
        "url": "/v1/customers/search",
    }


def list_customer_payment_methods(st: SandboxState, p: Params, id: str) -> dict:
    st.get(st.customers, id, "customer")
    items = [pm for pm in st.payment_methods.values() if pm["customer"] == id]
    return paginate(st, st.payment_methods, items, p, f"/v1/customers/{id}/payment_methods")


def retrieve_payment_method(st: SandboxState, p: Params, id: str) -> dict:
    return st.get(st.payment_methods, id, "PaymentMethod")


# --- catalog ------------------------------------------------------------------------------


def list_products(st: SandboxState, p: Params) -> dict:
    items = list(st.products.values())
    if (active := as_bool(p.get("active"), "active")) is not None:
        items = [o for o in items if o["active"] == active]
    if "ids" in p:
        wanted = set(as_list(p["ids"], "ids"))
        items = [o for o in items if o["id"] in wanted]
    return paginate(st, st.products, _filter_created(items, p), p, "/v1/products")


def retrieve_product(st: SandboxState, p: Params, id: str) -> dict:
    return st.get(st.products, id, "product")


def create_product(st: SandboxState, p: Params) -> dict:
    if not p.get("name"):
        raise StripeError("Missing required param: name.", param="name", code="parameter_missing")
    product_id = p.get("id") or st.new_id("prod")
    if product_id in st.products:
        raise StripeError(
            f"Product already exists: {product_id}", param="id", code="resource_already_exists"
        )
    prod = objects.product(product_id, p["name"], st.now())
    prod["description"] = p.get("description") or None
    prod["metadata"] = {k: str(v) for k, v in as_dict(p.get("metadata"), "metadata").items()}
    st.products[product_id] = prod
    st.emit("product.created", prod)
    return prod


def list_prices(st: SandboxState, p: Params) -> dict:
    items = list(st.prices.values())
    if (active := as_bool(p.get("active"), "active")) is not None:
        items = [o for o in items if o["active"] == active]
    if "product" in p:
        items = [o for o in items if o["product"] == p["product"]]
    if "currency" in p:
        items = [o for o in items if o["currency"] == p["currency"]]
    if "type" in p:
        items = [o for o in items if o["type"] == p["type"]]
    if "lookup_keys" in p:
        keys = set(as_list(p["lookup_keys"], "lookup_keys"))
        items = [o for o in items if o["lookup_key"] in keys]
    recurring = as_dict(p.get("recurring"), "recurring")
    if "interval" in recurring:
        wanted = recurring["interval"]
        items = [o for o in items if (o["recurring"] or {}).get("interval") == wanted]
    return paginate(st, st.prices, _filter_created(items, p), p, "/v1/prices")


def retrieve_price(st: SandboxState, p: Params, id: str) -> dict:
    return st.get(st.prices, id, "price")


def create_price(st: SandboxState, p: Params) -> dict:
    currency = p.get("currency")
    if not currency:
        raise StripeError(
            "Missing required param: currency.", param="currency", code="parameter_missing"
        )
    product_id = p.get("product")
    if not product_id:
        data = as_dict(p.get("product_data"), "product_data")
        if not data.get("name"):
            raise StripeError(
                "Missing required param: product.", param="product", code="parameter_missing"
            )
        product_id = create_product(st, {"name": data["name"], "metadata": data.get("metadata")})[
            "id"
        ]
    st.get(st.products, product_id, "product", param="product", status=400)
    amount = p.get("unit_amount")
    if amount is None or not str(amount).lstrip("-").isdigit() or int(amount) < 0:
        raise StripeError(
            "Missing required param: unit_amount.", param="unit_amount", code="parameter_missing"
        )
    recurring = as_dict(p.get("recurring"), "recurring")
    interval = recurring.get("interval")
    if interval is not None and interval not in ("day", "week", "month", "year"):
        raise StripeError(f"Invalid recurring[interval]: {interval}", param="recurring[interval]")
    lookup_key = p.get("lookup_key") or None
    if lookup_key and any(o["lookup_key"] == lookup_key for o in st.prices.values()):
        if not as_bool(p.get("transfer_lookup_key"), "transfer_lookup_key"):
            raise StripeError(
                f"A price (`{lookup_key}`) already uses that lookup key.", param="lookup_key"
            )
        for other in st.prices.values():
            if other["lookup_key"] == lookup_key:
                other["lookup_key"] = None
    pr = objects.price(
        st.new_id("price"),
        product_id,
        int(amount),
        currency.lower(),
        interval,
        st.now(),
        lookup_key=lookup_key,
        nickname=p.get("nickname") or None,
        interval_count=int(recurring.get("interval_count") or 1),
    )
    pr["metadata"] = {k: str(v) for k, v in as_dict(p.get("metadata"), "metadata").items()}
    st.prices[pr["id"]] = pr
    st.emit("price.created", pr)
    return pr


# --- checkout and portal ------------------------------------------------------------------


def create_checkout_session(st: SandboxState, p: Params) -> dict:
    return checkout.create_checkout_session(st, p)


def retrieve_checkout_session(st: SandboxState, p: Params, id: str) -> dict:
    return st.get(st.checkout_sessions, id, "checkout.session")


def list_checkout_sessions(st: SandboxState, p: Params) -> dict:
    items = list(st.checkout_sessions.values())
    for field in ("customer", "subscription", "status", "payment_intent"):
        if field in p:
            items = [o for o in items if o.get(field) == p[field]]
    return paginate(st, st.checkout_sessions, _filter_created(items, p), p, "/v1/checkout/sessions")


def checkout_session_line_items(st: SandboxState, p: Params, id: str) -> dict:
    items = checkout.checkout_line_items(st, id)
    keyed = {item["id"]: item for item in items}
    return paginate(
        st, keyed, items, p, f"/v1/checkout/sessions/{id}/line_items", view=copy.deepcopy
    )


def expire_checkout_session(st: SandboxState, p: Params, id: str) -> dict:
    return checkout.expire_checkout_session(st, id)


def create_portal_session(st: SandboxState, p: Params) -> dict:
    return checkout.create_portal_session(st, p)


# --- subscriptions ------------------------------------------------------------------------

SUBSCRIPTION_STATUSES = {
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "trialing",
    "paused",
    "ended",
    "all",
}


def create_subscription(st: SandboxState, p: Params) -> dict:
    return billing.create_subscription_from_params(st, p)


def retrieve_subscription(st: SandboxState, p: Params, id: str) -> dict:
    return st.get(st.subscriptions, id, "subscription")


def update_subscription(st: SandboxState, p: Params, id: str) -> dict:
    return billing.update_subscription(st, id, p)


def cancel_subscription(st: SandboxState, p: Params, id: str) -> dict:
    return billing.cancel_subscription(st, id, p)


def list_subscriptions(st: SandboxState, p: Params) -> dict:
    status = p.get("status")
    if status is not None and status not in SUBSCRIPTION_STATUSES:
        raise StripeError(f"Invalid status: {status}", param="status")
    items = list(st.subscriptions.values())
    if status is None:  # Stripe hides ended subscriptions unless asked
        items = [s for s in items if s["status"] not in ("canceled", "incomplete_expired")]
    elif status == "ended":
        items = [s for s in items if s["status"] in ("canceled", "incomplete_expired")]
    elif status != "all":
        items = [s for s in items if s["status"] == status]
    if "customer" in p:
        items = [s for s in items if s["customer"] == p["customer"]]
    if "price" in p:
        items = [
            s for s in items if any(i["price"]["id"] == p["price"] for i in s["items"]["data"])
        ]
    return paginate(st, st.subscriptions, _filter_created(items, p), p, "/v1/subscriptions")


# --- invoices -----------------------------------------------------------------------------


def list_invoices(st: SandboxState, p: Params) -> dict:
    items = list(st.invoices.values())
    if "customer" in p:
        items = [i for i in items if i["customer"] == p["customer"]]
    if "subscription" in p:
        items = [
            i
            for i in items
            if ((i["parent"] or {}).get("subscription_details") or {}).get("subscription")
            == p["subscription"]
        ]
    if "status" in p:
        items = [i for i in items if i["status"] == p["status"]]
    if "collection_method" in p:
        items = [i for i in items if i["collection_method"] == p["collection_method"]]
    return paginate(st, st.invoices, _filter_created(items, p), p, "/v1/invoices")


def retrieve_invoice(st: SandboxState, p: Params, id: str) -> dict:
    return st.get(st.invoices, id, "invoice")


def invoice_lines(st: SandboxState, p: Params, id: str) -> dict:
    inv = st.get(st.invoices, id, "invoice")
    lines = inv["lines"]["data"]
    keyed = {line["id"]: line for line in lines}
    return paginate(st, keyed, list(reversed(lines)), p, f"/v1/invoices/{id}/lines")


def pay_invoice(st: SandboxState, p: Params, id: str) -> dict:
    return billing.pay_invoice(st, id, p)


def void_invoice(st: SandboxState, p: Params, id: str) -> dict:
    return billing.void_invoice(st, id)


# --- events -------------------------------------------------------------------------------


def _type_matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.endswith("*"):  # Stripe allows "customer.*"
        prefix = pattern[:-1]
        return lambda t: t.startswith(prefix)
    return lambda t: t == pattern


def list_events(st: SandboxState, p: Params) -> dict:
    items = list(st.events.values())
    patterns = []
    if "type" in p:
        patterns.append(str(p["type"]))
    if "types" in p:
        patterns.extend(str(t) for t in as_list(p["types"], "types"))
    if patterns:
        matchers = [_type_matcher(t) for t in patterns]
        items = [e for e in items if any(m(e["type"]) for m in matchers)]
    delivered = as_bool(p.get("delivery_success"), "delivery_success")
    if delivered is not None:
        items = [e for e in items if st.webhooks.delivered(e["id"]) == delivered]
    return paginate(st, st.events, _filter_created(items, p), p, "/v1/events", view=st.event_view)


def retrieve_event(st: SandboxState, p: Params, id: str) -> dict:
    return st.event_view(st.get(st.events, id, "event"))


def not_found(st: SandboxState, p: Params, path: str) -> dict:
    raise StripeError(
        "Unrecognized request URL. Please see https://stripe.com/docs or we can help at "
        "https://support.stripe.com/. (The Stripe sandbox implements only part of the API; "
        f"see stripe_sandbox/README.md.) Path: /v1/{path}",
        status=404,
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/customers", create_customer),
    ("GET", "/v1/customers", list_customers),
    ("GET", "/v1/customers/search", search_customers),
    ("GET", "/v1/customers/{id}", retrieve_customer),
    ("POST", "/v1/customers/{id}", update_customer),
    ("DELETE", "/v1/customers/{id}", delete_customer),
    ("GET", "/v1/customers/{id}/payment_methods", list_customer_payment_methods),
    ("GET", "/v1/payment_methods/{id}", retrieve_payment_method),
    ("GET", "/v1/products", list_products),
    ("POST", "/v1/products", create_product),
    ("GET", "/v1/products/{id}", retrieve_product),
    ("GET", "/v1/prices", list_prices),
    ("POST", "/v1/prices", create_price),
    ("GET", "/v1/prices/{id}", retrieve_price),
    ("POST", "/v1/checkout/sessions", create_checkout_session),
    ("GET", "/v1/checkout/sessions", list_checkout_sessions),
    ("GET", "/v1/checkout/sessions/{id}", retrieve_checkout_session),
    ("GET", "/v1/checkout/sessions/{id}/line_items", checkout_session_line_items),
    ("POST", "/v1/checkout/sessions/{id}/expire", expire_checkout_session),
    ("POST", "/v1/billing_portal/sessions", create_portal_session),
    ("POST", "/v1/subscriptions", create_subscription),
    ("GET", "/v1/subscriptions", list_subscriptions),
    ("GET", "/v1/subscriptions/{id}", retrieve_subscription),
    ("POST", "/v1/subscriptions/{id}", update_subscription),
    ("DELETE", "/v1/subscriptions/{id}", cancel_subscription),
    ("GET", "/v1/invoices", list_invoices),
    ("GET", "/v1/invoices/{id}", retrieve_invoice),
    ("GET", "/v1/invoices/{id}/lines", invoice_lines),
    ("POST", "/v1/invoices/{id}/pay", pay_invoice),
    ("POST", "/v1/invoices/{id}/void", void_invoice),
    ("GET", "/v1/events", list_events),
    ("GET", "/v1/events/{id}", retrieve_event),
]


def routes(state: SandboxState) -> list[Route]:
    """Starlette routes; one Route per path so wrong methods fall through to the 404."""
    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler in ROUTES:
        by_path.setdefault(path, {})[method] = handler
    out = []
    for path, handlers in by_path.items():
        endpoints = {m: stripe_endpoint(state, h) for m, h in handlers.items()}
        fallback = stripe_endpoint(state, lambda st, p, path=path, **_: not_found(st, p, path))

        async def dispatch(request: Request, endpoints=endpoints, fallback=fallback) -> Response:
            return await endpoints.get(request.method, fallback)(request)

        out.append(Route(path, dispatch, methods=["GET", "POST", "DELETE"]))
    out.append(
        Route(
            "/v1/{path:path}",
            stripe_endpoint(state, not_found),
            methods=["GET", "POST", "DELETE"],
        )
    )
    return out
