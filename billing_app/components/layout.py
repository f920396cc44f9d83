"""The page template: top bar, content column, and the `page` decorator that wraps `@rx.page`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import reflex as rx

from billing_app.brand import BRAND
from billing_app.components.common import ONE_LINE
from billing_app.states.session import SessionState


def logo() -> rx.Component:
    return rx.link(
        rx.hstack(
            rx.center(
                rx.icon("zap", size=16, color="white"),
                width="28px",
                height="28px",
                border_radius="8px",
                background="linear-gradient(135deg, var(--indigo-9), var(--violet-9))",
            ),
            rx.text(BRAND, weight="bold", size="4"),
            align="center",
            spacing="2",
        ),
        href="/billing",
        underline="none",
        color_scheme="gray",
        high_contrast=True,
    )


def nav_link(text: str, href: str) -> rx.Component:
    active = rx.State.router.url.path.to(str).startswith(href)
    return rx.link(
        text,
        href=href,
        size="2",
        weight="medium",
        color_scheme=rx.cond(active, "indigo", "gray"),
        underline="none",
        padding_y="4px",
        border_bottom=rx.cond(active, "2px solid var(--indigo-9)", "2px solid transparent"),
    )


def sign_out_form() -> rx.Component:
    # A native form post: the API clears the HttpOnly cookie and redirects to /login.
    return rx.el.form(
        rx.button(
            rx.icon("log-out", size=14),
            rx.text("Sign out", display=["none", "inline"]),
            type="submit",
            # On a phone the text is hidden: the icon alone must still have a name.
            aria_label="Sign out",
            variant="soft",
            color_scheme="gray",
            size="2",
        ),
        action="/api/auth/logout",
        method="post",
        on_submit=None,
    )


def avatar() -> rx.Component:
    return rx.avatar(fallback=SessionState.user_initial, size="2", radius="full", variant="soft")


def account_popover() -> rx.Component:
    """Below the chip's breakpoint the name and email do not fit beside the links: the
    avatar, a letter alone, is a button that says who is signed in."""
    return rx.popover.root(
        rx.popover.trigger(
            rx.button(
                avatar(),
                variant="ghost",
                radius="full",
                padding="0",
                # Led by the name its letter is from (axe: label-content-name-mismatch).
                aria_label=rx.cond(
                    SessionState.user_name != "", SessionState.user_name, SessionState.user_email
                )
                + ", signed in",
                id="account-button",
            ),
        ),
        rx.popover.content(
            rx.vstack(
                rx.text("Signed in as", size="1", color_scheme="gray"),
                rx.text(SessionState.user_name, size="2", weight="medium"),
                rx.text(SessionState.user_email, size="2", word_break="break-all"),
                spacing="1",
            ),
            align="end",
            max_width="calc(100vw - 32px)",
            aria_label="Account",  # Radix makes it a dialog, which needs a name
            id="account-details",
        ),
    )


def user_chip() -> rx.Component:
    return rx.hstack(
        rx.box(account_popover(), display=["flex", "flex", "none"]),
        rx.box(avatar(), display=["none", "none", "flex"]),
        rx.vstack(
            # Cut short, not wrapped: a long name pushed Sign out off a tablet's screen. No
            # `trim`: it shrinks the line box, and `overflow: hidden` then cut the descenders.
            rx.text(
                SessionState.user_name,
                size="2",
                weight="medium",
                max_width="100%",
                **ONE_LINE,
            ),
            rx.text(
                SessionState.user_email,
                size="1",
                color_scheme="gray",
                max_width="100%",
                **ONE_LINE,
            ),
            spacing="0",
            max_width="220px",
            title=SessionState.user_email,
            display=["none", "none", "flex"],
        ),
        align="center",
        spacing="2",
    )


def navbar() -> rx.Component:
    # Landmarks (banner, navigation, main) let screen-reader users jump between parts.
    return rx.el.header(
        rx.hstack(
            rx.hstack(
                logo(),
                rx.cond(
                    SessionState.signed_in,
                    rx.el.nav(
                        rx.hstack(
                            nav_link("Billing", "/billing"),
                            rx.cond(SessionState.is_admin, nav_link("Admin", "/admin/billing")),
                            spacing="4",
                            padding_left="4",
                        ),
                        aria_label="Main",
                    ),
                ),
                align="center",
                spacing="4",
            ),
            rx.cond(
                SessionState.signed_in,
                rx.hstack(user_chip(), sign_out_form(), align="center", spacing="3"),
                # Only once the check found nobody: a signed-in customer's page, still
                # loading, offered them "Sign in".
                rx.cond(
                    SessionState.auth_checked,
                    rx.link(rx.button("Sign in", variant="soft", size="2"), href="/login"),
                ),
            ),
            justify="between",
            align="center",
            max_width="1200px",
            margin_x="auto",
            padding_x=["16px", "24px"],
            height="60px",
        ),
        position="sticky",
        top="0",
        z_index="10",
        background="var(--color-panel-translucent)",
        backdrop_filter="blur(12px)",
        border_bottom="1px solid var(--gray-a4)",
        width="100%",
    )


def shell(content: rx.Component) -> rx.Component:
    return rx.box(
        navbar(),
        rx.el.main(
            content,
            max_width="1200px",
            margin_x="auto",
            padding_x=["16px", "24px"],
            padding_y=["20px", "32px"],
            width="100%",
        ),
        min_height="100vh",
        background="var(--gray-2)",
    )


def loading(text: str = "Loading…") -> rx.Component:
    return rx.center(
        rx.hstack(rx.spinner(size="3"), rx.text(text, color_scheme="gray"), align="center"),
        padding_y="96px",
        width="100%",
    )


def page(
    route: str,
    title: str,
    on_load: Any = None,
    with_shell: bool = True,
) -> Callable[[Callable[[], rx.Component]], Callable[[], rx.Component]]:
    """`@rx.page` plus the app's chrome, so every page looks the same and sets a title."""

    def decorator(fn: Callable[[], rx.Component]) -> Callable[[], rx.Component]:
        @functools.wraps(fn)
        def wrapped() -> rx.Component:
            body = fn()
            return shell(body) if with_shell else body

        return rx.page(route=route, title=f"{title} · {BRAND}", on_load=on_load)(wrapped)

    return decorator
