"""Sign-up, sign-in, sign-out and `me`; OIDC single sign-on.

Login and signup take JSON (→ JSON + Set-Cookie) or an HTML form post (→ 303 redirect
with Set-Cookie), so the Reflex login page signs in without JavaScript ever touching
the HttpOnly cookie.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from sqlmodel import Session

from billing_app.api import schemas as s
from billing_app.api.deps import (
    check_same_origin,
    client_ip,
    cookie_header,
    current_user,
    db_session,
    optional_principal,
)
from billing_app.api.messages import field_name, friendly
from billing_app.clock import iso
from billing_app.db import session_scope
from billing_app.errors import (
    BillingError,
    Conflict,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from billing_app.services import api_keys, auth
from billing_app.services.dto import Principal, UserDTO
from billing_app.settings import get_settings

log = logging.getLogger("billing_app.auth")
router = APIRouter(prefix="/api/auth", tags=["auth"])

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def cookie_secure() -> bool:
    """Secure exactly when the app is served over https (APP_URL): a browser drops a
    Secure cookie set over plain http, so sign-in would loop on any http host
    (e.g. http://[::1]:8000, or a demo on a network). Deployments must be https
    (settings' _require_https)."""
    return urlsplit(get_settings().app_url).scheme == "https"


def set_session_cookie(response: Response, token: str) -> None:
    response.set_cookie(
        auth.session_cookie_name(),
        token,
        max_age=int(auth.SESSION_TTL.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=cookie_secure(),
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(
        auth.session_cookie_name(), path="/", httponly=True, samesite="lax", secure=cookie_secure()
    )


def form_next(request: Request, body: AuthInput) -> str:
    """Where a form post goes on: its `next`, else the `next` of the page it came from
    (a form submitted before the page's state loaded carries an empty `next`)."""
    value = body.data.get("next")
    if not value:
        referer = urlsplit(request.headers.get("referer", ""))
        value = (parse_qs(referer.query).get("next") or [None])[0]
    return auth.safe_next(value)


class AuthInput:
    """The parsed body of a login/signup post, and whether it came from an HTML form."""

    def __init__(self, data: dict[str, Any], is_form: bool) -> None:
        self.data = data
        self.is_form = is_form


async def auth_input(request: Request) -> AuthInput:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in FORM_TYPES:
        form = await request.form()
        return AuthInput({k: v for k, v in form.items() if isinstance(v, str)}, True)
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}]
        ) from None
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.", field="body")
    return AuthInput(data, False)


def _body_doc(model: type) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


def _parse(model: type, data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as err:
        first = err.errors()[0]
        field = field_name(first.get("loc", ()))
        raise ValidationFailed(friendly(dict(first), field), field=field) from None


_FIELD_CODES = {"email": "invalid_email", "password": "invalid_password"}
_FIELD_CODES["display_name"] = "invalid_name"


def form_error_code(err: BillingError) -> str:
    """The short code a refused form post goes back with (`?error=`): the pages map codes
    to their own texts and never show the query's, which anyone can put in a link."""
    if isinstance(err, RateLimited):
        return "rate_limited"
    if isinstance(err, Conflict):
        return "email_taken"
    field = err.details.get("field")
    if field in _FIELD_CODES:
        return _FIELD_CODES[field]
    return "login_failed" if isinstance(err, Unauthorized) else "failed"


def _form_error(path: str, code: str, next_: str) -> RedirectResponse:
    query = urlencode({"error": code, "next": next_})
    return RedirectResponse(f"{path}?{query}", status_code=303)


def _user_out(user: UserDTO) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "role": user.role,
        "created_at": iso(user.created_at),
    }


def _signed_in(
    body: AuthInput, next_: str, user: UserDTO, token: str, status_code: int = 200
) -> Response:
    """Form posts go on to `next`, JSON callers get the user; both get the session cookie."""
    response: Response
    if body.is_form:
        response = RedirectResponse(next_, status_code=303)
    else:
        response = JSONResponse({"user": _user_out(user)}, status_code=status_code)
    set_session_cookie(response, token)
    return response


_FORM_REDIRECT = {303: {"description": "Form post: redirect to `next` (or back with ?error=)"}}


@router.post(
    "/login",
    response_model=s.AuthOut,
    responses={**s.errors(400, 401, 403, 413, 422, 429, 503), **_FORM_REDIRECT},
    openapi_extra=_body_doc(s.LoginIn),
)
def login(
    request: Request,
    body: AuthInput = Depends(auth_input),
    session: Session = Depends(db_session),
) -> Response:
    """Sign in with email and password; sets the HttpOnly session cookie."""
    next_ = form_next(request, body)
    try:
        check_same_origin(request, required=False)
        data = _parse(s.LoginIn, body.data)
        user, token = auth.login(
            session,
            data.email,
            data.password,
            client_ip(request),
            user_agent=request.headers.get("user-agent"),
        )
    except BillingError as err:
        if body.is_form:
            return _form_error("/login", form_error_code(err), next_)
        raise
    return _signed_in(body, next_, user, token)


@router.post(
    "/signup",
    status_code=201,
    response_model=s.AuthOut,
    responses={**s.errors(400, 403, 409, 413, 422, 429, 503), **_FORM_REDIRECT},
    openapi_extra=_body_doc(s.SignupIn),
)
def signup(
    request: Request,
    body: AuthInput = Depends(auth_input),
    session: Session = Depends(db_session),
) -> Response:
    """Create a local account on the free plan and sign in. Sign-ups from one client
    address are limited (429 with Retry-After past the limit)."""
    next_ = form_next(request, body)
    ip = client_ip(request)
    try:
        check_same_origin(request, required=False)
        data = _parse(s.SignupIn, body.data)
        user = auth.signup(session, data.email, data.password, data.display_name, ip=ip)
        token = auth.new_session(
            session, user.id, ip=ip, user_agent=request.headers.get("user-agent")
        )
    except BillingError as err:
        if body.is_form:
            # The sign-up page's own text for its limit (rate_limited is sign-in's).
            code = "signup_limited" if isinstance(err, RateLimited) else form_error_code(err)
            return _form_error("/signup", code, next_)
        raise
    return _signed_in(body, next_, user, token, status_code=201)


@router.post(
    "/logout",
    response_model=s.OkOut,
    responses={
        **s.errors(403, 503),
        303: {"description": "Form post: redirect to /login?signed_out=1"},
    },
)
def logout(
    request: Request,
    p: Principal | None = Depends(optional_principal),
    session: Session = Depends(db_session),
) -> Response:
    """Revoke the session and clear the cookie (a form post redirects to /login)."""
    # optional_principal already ran the CSRF check for a cookie-authenticated post.
    if p is not None:  # a scoped key names no account action (one rule for every route)
        api_keys.check_scope(p, None)
    if p is not None and p.via == "session":
        auth.logout(session, cookie_header(request))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    response: Response
    if ctype in FORM_TYPES:
        # The sign-in page says the sign-out happened (auth_pages.SIGNED_OUT).
        response = RedirectResponse("/login?signed_out=1", status_code=303)
    else:
        response = JSONResponse({"ok": True})
    clear_session_cookie(response)
    # The browser tab's pages keep their state under a token in sessionStorage: cleared,
    # the next page load (whoever signs in next) starts from fresh state, not from the
    # previous user's (an admin's user list, a key's secret).
    response.headers["Clear-Site-Data"] = '"storage"'
    return response


@router.get("/me", response_model=s.UserOut, responses=s.errors(401, 403, 503))
def me(user: UserDTO = Depends(current_user)) -> dict[str, Any]:
    return _user_out(user)


# ------------------------------------------------------------------ OIDC


def oidc_configured() -> bool:
    st = get_settings()
    return bool(st.oidc_issuer and st.oidc_client_id and st.oidc_client_secret)


@lru_cache(maxsize=4)
def _oauth_client(issuer: str, client_id: str, client_secret: str) -> Any:
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    oauth.register(
        "oidc",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256"},
    )
    return oauth.create_client("oidc")


def oidc_client() -> Any:
    st = get_settings()
    if not oidc_configured():
        raise NotFound("Single sign-on is not configured.", reason="oidc_not_configured")
    assert st.oidc_issuer and st.oidc_client_id and st.oidc_client_secret
    return _oauth_client(st.oidc_issuer, st.oidc_client_id, st.oidc_client_secret)


@router.get(
    "/oidc/login",
    status_code=302,
    responses={302: {"description": "Redirect to the identity provider"}, **s.errors(404, 503)},
    response_class=RedirectResponse,
)
async def oidc_login(
    request: Request, next: str | None = Query(default=None, max_length=2000)
) -> Response:
    """Start single sign-on (authorization code flow with PKCE; state in a signed cookie)."""
    client = oidc_client()
    request.session["oidc_next"] = auth.safe_next(next)
    redirect_uri = str(request.url_for("oidc_callback"))
    try:
        return await client.authorize_redirect(request, redirect_uri)
    except Exception as err:  # the provider's discovery document is unreachable or bad
        log.warning("OIDC provider unavailable: %s", err)
        from billing_app.errors import ServiceUnavailable

        raise ServiceUnavailable("The identity provider is unavailable.") from None


# oidc_user's refusals, by the field they name, as the sign-in page's `?error=` codes.
_SSO_CODES = {"email_verified": "sso_unverified_email", "oidc_subject": "sso_linked_elsewhere"}


@router.get(
    "/oidc/callback",
    name="oidc_callback",
    status_code=303,
    responses={303: {"description": "Signed in (or back to /login?error=)"}, **s.errors(404)},
    response_class=RedirectResponse,
)
async def oidc_callback(request: Request) -> Response:
    client = oidc_client()
    next_ = auth.safe_next(request.session.pop("oidc_next", None))
    try:
        token = await client.authorize_access_token(request)
        claims = token.get("userinfo") or {}
        if not claims:
            raise ValueError("no ID token")
    except Exception as err:  # bad state, bad code, bad ID-token signature, provider down
        log.warning("OIDC sign-in failed: %s: %s", type(err).__name__, err)
        return _form_error("/login", "sso_failed", next_)

    def finish() -> str:
        with session_scope() as session:
            user = auth.oidc_user(
                session,
                subject=str(claims.get("sub") or ""),
                email=claims.get("email"),
                email_verified=claims.get("email_verified") is True,
                name=str(claims.get("name") or ""),
            )
            return auth.new_session(
                session,
                user.id,
                ip=client_ip(request),
                user_agent=request.headers.get("user-agent"),
            )

    try:
        session_token = await run_in_threadpool(finish)
    except BillingError as err:
        code = _SSO_CODES.get(err.details.get("field"), "sso_failed")
        return _form_error("/login", code, next_)
    response = RedirectResponse(next_, status_code=303)
    set_session_cookie(response, session_token)
    return response
