"""The Reflex app: the UI pages plus the JSON API, served from one process."""

import reflex as rx

import billing_app.models  # noqa: F401  (registers the tables with SQLModel.metadata)
import billing_app.pages  # noqa: F401  (registers every @rx.page)
from billing_app.api.app import create_api
from billing_app.api.fast_lane import fast_lane
from billing_app.services.stripe_sync import grace_period_task
from billing_app.settings import get_settings_or_exit

get_settings_or_exit()

app = rx.App(
    # FastAPI in front of Reflex, and the hot service routes in front of FastAPI.
    api_transformer=[create_api(), fast_lane],
    stylesheets=["/styles.css"],
)
# Past-due subscriptions fall back to the free plan's quotas once their grace ends.
app.register_lifespan_task(grace_period_task)
