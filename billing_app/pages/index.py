"""/: the dashboard for a signed-in user, else the sign-in page."""

from __future__ import annotations

import reflex as rx

from billing_app.components.layout import loading, page
from billing_app.states.session import SessionState


@page("/", "Billing", on_load=SessionState.redirect_home, with_shell=False)
def index() -> rx.Component:
    return loading("Redirecting…")
