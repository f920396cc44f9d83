"""/login and /signup: native form posts to the auth API (the cookie is HttpOnly, no JS)."""

from __future__ import annotations

import reflex as rx

from billing_app.components.layout import logo, page
from billing_app.states.auth_pages import AuthFormState


def field(label: str, name: str, type_: str, autocomplete: str, **props: object) -> rx.Component:
    return rx.vstack(
        rx.el.label(rx.text(label, size="2", weight="medium"), html_for=name),
        rx.input(
            name=name,
            id=name,
            type=type_,
            auto_complete=autocomplete,
            # The form mounts after on_load (rx.State.is_hydrated), so this is read once, set.
            auto_focus=AuthFormState.focus_field == name,
            size="3",
            width="100%",
            **props,
        ),
        spacing="1",
        width="100%",
    )


def email_field() -> rx.Component:
    """Both forms' email, starting from what was typed before a refused post."""
    return field(
        "Email",
        "email",
        "email",
        "email",
        required=True,
        placeholder="you@company.com",
        default_value=AuthFormState.form_email,
        on_change=AuthFormState.set_form_email,
    )


def _callout(text: rx.Var, icon: str, color: str, role: str) -> rx.Component:
    return rx.cond(
        text != "",
        rx.callout(text, icon=icon, color_scheme=color, role=role, width="100%"),
    )


def error_callout() -> rx.Component:
    return _callout(AuthFormState.error, "circle-alert", "red", "alert")


def notice_callout() -> rx.Component:
    return _callout(AuthFormState.notice, "circle-check", "green", "status")


def sso_button() -> rx.Component:
    return rx.cond(
        AuthFormState.sso_enabled,
        rx.vstack(
            rx.hstack(
                rx.separator(size="4"),
                rx.text("or", size="1", color_scheme="gray"),
                rx.separator(size="4"),
                align="center",
                width="100%",
            ),
            rx.link(
                rx.button(
                    rx.icon("key-round", size=16),
                    "Sign in with SSO",
                    variant="outline",
                    size="3",
                    width="100%",
                ),
                href=AuthFormState.sso_url,
                # A server route (it redirects to the provider): a full page load, not the
                # app's client-side routing, which would show its 404.
                reload_document=True,
                width="100%",
            ),
            width="100%",
            spacing="4",
        ),
    )


def auth_card(title: str, subtitle: str, form: rx.Component, footer: rx.Component) -> rx.Component:
    return rx.center(
        rx.el.main(
            rx.vstack(
                logo(),
                rx.card(
                    rx.vstack(
                        rx.vstack(
                            rx.heading(title, size="6"),
                            rx.text(subtitle, size="2", color_scheme="gray"),
                            spacing="1",
                        ),
                        error_callout(),
                        notice_callout(),
                        # Mounted once on_load ran, so the inputs start from the kept values;
                        # they stay uncontrolled, so typing never races a state update.
                        rx.cond(
                            rx.State.is_hydrated,
                            form,
                            rx.center(rx.spinner(size="3"), min_height="220px", width="100%"),
                        ),
                        sso_button(),
                        spacing="5",
                        width="100%",
                    ),
                    size="4",
                    width="100%",
                ),
                footer,
                spacing="5",
                align="center",
                width="100%",
            ),
            width="100%",
            max_width="420px",
        ),
        min_height="100vh",
        padding="16px",
        background="radial-gradient(circle at 50% 0%, var(--indigo-a3), transparent 60%), "
        "var(--gray-2)",
    )


@page("/login", "Sign in", on_load=AuthFormState.on_load, with_shell=False)
def login() -> rx.Component:
    form = rx.el.form(
        rx.vstack(
            email_field(),
            field("Password", "password", "password", "current-password", required=True),
            rx.el.input(type="hidden", name="next", value=AuthFormState.next_path),
            rx.button("Sign in", type="submit", size="3", width="100%"),
            # No reset by email: an operator runs `billing-app user set-password`.
            rx.text(
                "Forgot your password? Ask an administrator to reset it.",
                size="1",
                color_scheme="gray",
                id="forgot-password",
            ),
            spacing="4",
            width="100%",
        ),
        action="/api/auth/login",
        method="post",
        on_submit=None,
        width="100%",
    )
    footer = rx.text(
        "New here? ",
        rx.link("Create an account", href=AuthFormState.signup_url, weight="medium"),
        size="2",
        color_scheme="gray",
    )
    return auth_card("Sign in", "Welcome back. Sign in to manage billing and usage.", form, footer)


@page("/signup", "Create account", on_load=AuthFormState.on_load, with_shell=False)
def signup() -> rx.Component:
    form = rx.el.form(
        rx.vstack(
            # Reported to the state, so a refused post comes back filled in (not the password).
            field(
                "Name",
                "display_name",
                "text",
                "name",
                placeholder="Ada Lovelace",
                default_value=AuthFormState.form_name,
                on_change=AuthFormState.set_form_name,
            ),
            email_field(),
            field(
                "Password",
                "password",
                "password",
                "new-password",
                required=True,
                min_length=8,
                placeholder="At least 8 characters",
            ),
            rx.el.input(type="hidden", name="next", value=AuthFormState.next_path),
            rx.button("Create account", type="submit", size="3", width="100%"),
            rx.text(
                "You start on the Free plan. Upgrade any time.",
                size="1",
                color_scheme="gray",
                align="center",
                width="100%",
            ),
            spacing="4",
            width="100%",
        ),
        action="/api/auth/signup",
        method="post",
        on_submit=None,
        width="100%",
    )
    footer = rx.text(
        "Already have an account? ",
        rx.link("Sign in", href=AuthFormState.login_url, weight="medium"),
        size="2",
        color_scheme="gray",
    )
    return auth_card("Create your account", "Start free: no card required.", form, footer)
