"""Sign-in and sign-up pages: the forms post natively to the API; this only reads the query."""

from __future__ import annotations

from urllib.parse import quote

import reflex as rx

from billing_app.errors import BillingError
from billing_app.services.auth import SIGNUP_LIMITED, safe_next
from billing_app.settings import get_settings
from billing_app.states.session import SessionState, clip

SIGN_IN_FAILED = "Sign-in failed. Please try again."
SIGN_UP_FAILED = "Could not create the account. Please try again."
EMAIL_TAKEN = "An account with this email already exists. Sign in instead."
BAD_EMAIL = "Enter a valid email address."
BAD_PASSWORD = "Passwords are 8 to 1,024 characters long."
BAD_NAME = "Names are at most 200 characters long."
SSO_FAILED = "Single sign-on failed. Please try again."
SSO_NO_EMAIL = "Your identity provider did not confirm a verified email address."
SSO_LINKED_ELSEWHERE = (
    "The account with this email signs in with another identity at your provider. Contact support."
)

# `?error=` is attacker-controlled (anyone can send a /login?error=... link), so the
# pages only ever show one of these fixed messages, never the query's text.
ERROR_CODES = {
    "login_failed": "Email or password is incorrect.",
    "rate_limited": "Too many failed sign-in attempts. Try again in a few minutes.",
    "signup_limited": SIGNUP_LIMITED,
    "email_taken": EMAIL_TAKEN,
    "invalid_email": BAD_EMAIL,
    "invalid_password": BAD_PASSWORD,
    "invalid_name": BAD_NAME,
    "sso_failed": SSO_FAILED,
    "sso_unverified_email": SSO_NO_EMAIL,
    "sso_linked_elsewhere": SSO_LINKED_ELSEWHERE,
}


# The field a refused post's message is about: it gets the focus when the page comes back
# (the post's reload leaves the keyboard on <body>, away from what to fix).
ERROR_FIELDS = {
    "login_failed": "password",
    "email_taken": "email",
    "invalid_email": "email",
    "invalid_password": "password",
    "invalid_name": "display_name",
}


def error_message(code: str | None, generic: str = SIGN_IN_FAILED) -> str:
    """The app's own message for an `?error=` code (the auth routes send codes), else
    `generic`: the query's text itself is never shown."""
    if not code:
        return ""
    return ERROR_CODES.get(code.strip(), generic)


SIGNED_OUT = "You are signed out."


class AuthFormState(SessionState):
    error: str = ""
    # After a sign-out (the logout form lands on /login?signed_out=1): it did happen.
    notice: str = ""
    # Empty until the page's state loads: the API then takes `next` from the Referer.
    next_path: str = ""
    sso_enabled: bool = False
    # What was typed, so a refused sign-up comes back filled in (never the password).
    form_email: str = ""
    form_name: str = ""
    # The field (its name) that takes the focus: the one an `?error=` is about, else none.
    focus_field: str = ""

    @rx.event
    async def on_load(self) -> rx.event.EventSpec | None:
        params = self.router.url.query_parameters
        signup = self.router.url.path.rstrip("/").endswith("/signup")
        self.error = error_message(
            params.get("error"), SIGN_UP_FAILED if signup else SIGN_IN_FAILED
        )
        self.focus_field = ERROR_FIELDS.get((params.get("error") or "").strip(), "")
        self.notice = SIGNED_OUT if "signed_out" in params and not self.error else ""
        self.next_path = safe_next(params.get("next"))
        self.sso_enabled = bool(get_settings().oidc_issuer)
        if not self.error:  # a fresh visit starts empty; a refused post keeps what was typed
            self.form_email = self.form_name = ""
        if self.error:
            return None
        try:
            user = await self._current_user()
        except BillingError as err:  # the database is down: the form says so
            self.error = err.message
            return None
        # Already signed in (and no error to show): go straight on.
        if user is not None:
            return rx.redirect(safe_next(self.next_path))
        return None

    @rx.event
    def set_form_email(self, value: str) -> None:
        self.form_email = clip(value, 320)

    @rx.event
    def set_form_name(self, value: str) -> None:
        self.form_name = clip(value, 200)

    @rx.var
    def sso_url(self) -> str:
        return f"/api/auth/oidc/login?next={quote(safe_next(self.next_path), safe='/')}"

    @rx.var
    def signup_url(self) -> str:
        return f"/signup?next={quote(safe_next(self.next_path), safe='/')}"

    @rx.var
    def login_url(self) -> str:
        return f"/login?next={quote(safe_next(self.next_path), safe='/')}"
