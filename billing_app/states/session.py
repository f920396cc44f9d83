"""The signed-in user, derived from the server-side session on every event.

The browser only holds the HttpOnly session cookie; Reflex sees it in the
websocket's request headers. Nothing the browser sends in an event is trusted
as identity: handlers call `await self._current_user()` again each time (its lookup
runs off the event loop, live.in_thread).
"""

from __future__ import annotations

from contextlib import suppress
from urllib.parse import quote

import reflex as rx

from billing_app.db import session_scope
from billing_app.errors import BillingError
from billing_app.services import auth
from billing_app.services.auth import safe_next
from billing_app.services.dto import UserDTO
from billing_app.states.live import in_thread, outage_as_error


def clip(value: object, limit: int) -> str:
    """A text field's event argument, at most `limit` characters. Arguments are whatever
    JSON a client sends: anything but a string (a list, an object, a number) is taken as
    empty, never stored in a `str` var, where the page's computed vars (`.strip()`) and
    every later delta and hydrate of the tab would fail on it."""
    return value[:limit] if isinstance(value, str) else ""


def login_url(next_path: str) -> str:
    return f"/login?next={quote(safe_next(next_path), safe='/')}"


def user_from_cookie(cookie_header: str) -> UserDTO | None:
    """Resolve the session cookie to a user through the auth service (one DB read).
    Raises ServiceUnavailable while the database cannot be reached: nobody is known then,
    neither signed in nor out."""
    if not auth.session_tokens(cookie_header):
        return None
    with outage_as_error(), session_scope() as session:
        return auth.user_for_cookie(session, cookie_header)


class SessionState(rx.State):
    """Base for every page state: who is signed in (for display only)."""

    user_id: int = 0
    user_email: str = ""
    user_name: str = ""
    user_role: str = ""
    # False until the first check ran, so guarded pages show a spinner, not a flash.
    auth_checked: bool = False
    # Whose session cookie this State was filled under (states/owner.py); None: nobody's yet.
    _state_owner: str | None = None

    @rx.var
    def signed_in(self) -> bool:
        return self.user_id > 0

    @rx.var
    def is_admin(self) -> bool:
        return self.user_role == "admin"

    @rx.var
    def user_initial(self) -> str:
        return (self.user_name or self.user_email or "?")[:1].upper()

    async def _current_user(self) -> UserDTO | None:
        """Re-derive the user from the session cookie and refresh the display vars.
        ServiceUnavailable (a BillingError) while the database is down: each handler shows
        it where it shows its own errors."""
        cookie = self.router.headers.cookie
        user = await in_thread(lambda: user_from_cookie(cookie))
        self._show_user(user)
        return user

    def _show_user(self, user: UserDTO | None) -> None:
        """The header's display vars for `user` (signed out for None)."""
        self.auth_checked = True
        if user is None:
            self.user_id, self.user_email, self.user_name, self.user_role = 0, "", "", ""
            return
        self.user_id = user.id
        self.user_email = user.email
        self.user_name = user.display_name
        self.user_role = user.role

    def _login_redirect(self) -> rx.event.EventSpec:
        url = self.router.url
        path = url.path or "/billing"
        query = url.query
        return rx.redirect(login_url(f"{path}?{query}" if query else path))

    @rx.event
    async def load_user(self) -> None:
        """on_load for public pages: show who is signed in in the header. While the
        database is down the header stays as it was (these pages have no message)."""
        with suppress(BillingError):
            await self._current_user()

    @rx.event
    async def redirect_home(self) -> rx.event.EventSpec:
        """`/`: the dashboard when signed in, else the sign-in page (also while the database
        is down: that page says so, and once it is back, reloaded, sends a signed-in user
        on to the dashboard)."""
        try:
            user = await self._current_user()
        except BillingError:
            return rx.redirect("/login")
        if user is None:
            return rx.redirect("/login")
        return rx.redirect("/billing")
