"""The 404 page: Reflex serves the page registered at route "404" for unknown paths."""

from __future__ import annotations

import reflex as rx

from billing_app.components.layout import page
from billing_app.states.session import SessionState


@page("404", "Page not found", on_load=SessionState.load_user)
def not_found() -> rx.Component:
    return rx.center(
        rx.vstack(
            rx.text("404", size="9", weight="bold", color=rx.color("indigo", 9)),
            rx.heading("Page not found", size="6", align="center"),
            rx.text(
                "The page you asked for does not exist or has moved.",
                color_scheme="gray",
                align="center",
            ),
            rx.link(rx.button("Back to billing", size="3"), href="/billing"),
            align="center",
            spacing="4",
            max_width="440px",
        ),
        padding_y="96px",
        width="100%",
        id="not-found",
    )
