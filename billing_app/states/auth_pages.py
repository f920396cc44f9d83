"""Sign-in and sign-up pages: the forms post natively to the API; this only reads the query."""

from __future__ import annotations

from urllib.parse import quote

import reflex as rx

from billing_app.services.auth import safe_next
from billing_app.settings import get_settings
from billing_app.states.session import SessionState


class AuthFormState(SessionState):
    error: str = ""
    # Empty until the page's state loads: the API then takes `next` from the Referer.
    next_path: str = ""
    sso_enabled: bool = False

    @rx.event
    def on_load(self) -> rx.event.EventSpec | None:
        params = self.router.url.query_parameters
        self.error = (params.get("error") or "")[:300]
        self.next_path = safe_next(params.get("next"))
        self.sso_enabled = bool(get_settings().oidc_issuer)
        # Already signed in (and no error to show): go straight on.
        if not self.error and self._current_user() is not None:
            return rx.redirect(safe_next(self.next_path))
        return None

    @rx.var
    def sso_url(self) -> str:
        return f"/api/auth/oidc/login?next={quote(safe_next(self.next_path), safe='/')}"

    @rx.var
    def signup_url(self) -> str:
        return f"/signup?next={quote(safe_next(self.next_path), safe='/')}"

    @rx.var
    def login_url(self) -> str:
        return f"/login?next={quote(safe_next(self.next_path), safe='/')}"
