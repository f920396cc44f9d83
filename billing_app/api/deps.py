"""Request dependencies: a DB session, the caller (principal), CSRF, roles."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from fastapi import Depends, Request
from sqlmodel import Session

from billing_app.db import session_scope
from billing_app.errors import CsrfFailed, Forbidden, Unauthorized
from billing_app.services import api_keys, auth
from billing_app.services.dto import Principal, UserDTO
from billing_app.settings import get_settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def db_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def own_origins(host: str | None) -> set[str]:
    """The app's own origins: APP_URL, API_URL and `host`, the one a request was sent to."""
    settings = get_settings()
    out = {o for o in (_origin_of(settings.app_url), _origin_of(settings.api_url)) if o}
    if host:
        # Behind a TLS-terminating proxy the scheme seen here may be http: accept both.
        out |= {f"http://{host}".lower(), f"https://{host}".lower()}
    return out


def allowed_origins(request: Request) -> set[str]:
    return own_origins(request.headers.get("host"))


def request_origin(request: Request) -> str | None:
    """Origin, else the origin of Referer, else None."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return origin.lower().rstrip("/")
    if origin == "null":
        return "null"
    referer = request.headers.get("referer")
    return _origin_of(referer) if referer else None


def check_same_origin(request: Request, *, required: bool) -> None:
    """CSRF rule: a cookie-authenticated state change must come from our own origin.

    `required=False` (sign-in forms) only rejects a foreign Origin; a client that
    sends neither Origin nor Referer (curl, a service) is allowed there.
    """
    origin = request_origin(request)
    if origin is None:
        if required:
            raise CsrfFailed(
                "Missing Origin header on a cookie-authenticated request.", reason="no_origin"
            )
        return
    if origin not in allowed_origins(request):
        raise CsrfFailed("Cross-site request refused.", reason="foreign_origin")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        # Not ours (a proxy's Basic auth in front of a staging site): the session cookie
        # still signs the browser's calls.
        return None
    if not value.strip():
        raise Unauthorized("Authorization must be 'Bearer <API key>'.")
    return value.strip()


def optional_principal(
    request: Request, session: Session = Depends(db_session)
) -> Principal | None:
    return resolve_principal(request, session)


def require_principal(request: Request, session: Session) -> Principal:
    """For hot-path routes that resolve the caller inside their own thread (no extra hops)."""
    p = resolve_principal(request, session)
    if p is None:
        raise no_caller(request)
    return p


def no_caller(request: Request) -> Unauthorized:
    """The 401 for a request without a caller; an API key sent under another scheme
    (`Authorization: Token bk_live_...`, or the bare key) is told the scheme."""
    header = request.headers.get("authorization", "")
    if "bk_live_" in header:
        return Unauthorized("Send the API key as 'Authorization: Bearer <API key>'.")
    return Unauthorized("Sign in or send an API key.")


def cookie_header(request: Request) -> str:
    """Every Cookie header of the request, joined (as the pages' state sees them;
    Starlette's `request.cookies` reads the first header and keeps a name's last value)."""
    return "; ".join(request.headers.getlist("cookie"))


def resolve_principal(request: Request, session: Session) -> Principal | None:
    """Bearer API key, else the session cookie (with the CSRF rule for state changes)."""
    secret = _bearer(request)
    if secret is not None:
        return api_keys.authenticate(session, secret)
    user = auth.user_for_cookie(session, cookie_header(request))
    if user is None:
        return None
    if request.method not in SAFE_METHODS:
        check_same_origin(request, required=True)
    return Principal(kind="user", user=user, via="session")


async def principal(
    request: Request, p: Principal | None = Depends(optional_principal)
) -> Principal:
    # async: no I/O here, so no thread hop on the hot path
    if p is None:
        raise no_caller(request)
    return p


def _user_of(p: Principal) -> UserDTO:
    if p.user is None:
        raise Forbidden("This endpoint acts for a user; use a session or a user API key.")
    return p.user


async def usage_caller(p: Principal = Depends(principal)) -> Principal:
    """For the reads (GET /usage, /quota, /subscription, /invoices): a caller that may
    read (a session, an unscoped key, or a key holding `usage:read`), service keys
    included. Checked here, before the query is validated; whose: `usage_subject`."""
    api_keys.check_scope(p, "usage:read")
    return p


def usage_subject(p: Principal, user_id: int | None) -> int:
    """Whose usage and quotas `p` may read: a service key names the user (`user_id`
    required, 422 without it), a session or user key reads its own (`user_id` omitted
    or its own id; another user's is 403). A scoped key needs `usage:read`. One rule for
    the routes and the fast lane (the routes' `usage_caller` has checked the scope once
    already, before their query was validated)."""
    api_keys.check_scope(p, "usage:read")
    return resolve_user_id(p, user_id)


async def current_user(p: Principal = Depends(principal)) -> UserDTO:
    """A user (by session or by that user's unrestricted API key); a service key is not a
    user. Everything not covered by a scope (checkout, portal, admin, account) uses this,
    so a scoped key is refused by default on any endpoint that names no scope."""
    user = _user_of(p)
    api_keys.check_scope(p, None)
    return user


async def admin_user(user: UserDTO = Depends(current_user)) -> UserDTO:
    if user.role != "admin":
        raise Forbidden("Admins only.")
    return user


def require_scope(p: Principal, scope: str) -> None:
    """An API key restricted to scopes may only do what they name (no scopes: unrestricted)."""
    api_keys.check_scope(p, scope)


# Another user's id, worded for the caller: a signed-in person holds no key.
KEY_OTHER_USER = "This key may only act for its own user."
SESSION_OTHER_USER = "You may only act for your own account."


def resolve_user_id(p: Principal, user_id: int | None) -> int:
    """Whom a service call acts for: a service key names the user; a user acts for itself."""
    if user_id is None:
        if p.user is None:
            from billing_app.errors import ValidationFailed

            raise ValidationFailed("user_id is required with a service key.", field="user_id")
        return p.user.id
    if not p.can_act_for(user_id):
        raise Forbidden(
            SESSION_OTHER_USER if p.via == "session" else KEY_OTHER_USER, user_id=user_id
        )
    return user_id
