"""The Reflex app: the UI pages plus the JSON API, served from one process."""

import reflex as rx

import billing_app.models  # noqa: F401  (registers the tables with SQLModel.metadata)
from billing_app.api.app import create_api
from billing_app.settings import get_settings_or_exit

get_settings_or_exit()


@rx.page(route="/", title="Billing")
def index() -> rx.Component:
    return rx.center(rx.heading("Billing"), height="100vh")


app = rx.App(api_transformer=create_api())
