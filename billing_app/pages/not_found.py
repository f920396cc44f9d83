"""The 404 page: Reflex serves the page registered at route "404" for unknown paths."""

from __future__ import annotations

import reflex as rx

from billing_app.components.common import status_page
from billing_app.components.layout import page
from billing_app.states.session import SessionState


@page("404", "Page not found", on_load=SessionState.load_user)
def not_found() -> rx.Component:
    return status_page(
        "404",
        "Page not found",
        "The page you asked for does not exist or has moved.",
        "not-found",
    )
