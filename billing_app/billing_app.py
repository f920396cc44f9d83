"""The Reflex app: the UI pages plus the JSON API, served from one process."""

import asyncio
import gc
import logging

import reflex as rx
from starlette.types import ASGIApp

import billing_app.models  # noqa: F401  (registers the tables with SQLModel.metadata)
import billing_app.pages  # noqa: F401  (registers every @rx.page)
from billing_app.api.app import create_api
from billing_app.api.cors import own_origins_only
from billing_app.api.fast_lane import fast_lane
from billing_app.api.frames import no_framing
from billing_app.api.proxies import behind_proxies
from billing_app.db import schema_problem, unavailable
from billing_app.logs import configure_logging
from billing_app.services import quotas
from billing_app.services.stripe_sync import grace_period_task
from billing_app.settings import get_settings_or_exit
from billing_app.states.owner import StateOwnerMiddleware

configure_logging(get_settings_or_exit().log_level)


class BillingApp(rx.App):
    """Reflex's app with the fast lane (api/fast_lane.py) in front of everything, ahead of
    Reflex's own ASGI layers (error, CORS and context middlewares, router and mount):
    measured, those cost ~0.1 ms of CPU per service call on PostgreSQL."""

    def __call__(self) -> ASGIApp:
        # The pages refuse frames (api/frames.py); behind the fast lane, off its path.
        return behind_proxies(fast_lane(no_framing(own_origins_only(super().__call__()))))


app = BillingApp(
    api_transformer=create_api(),  # FastAPI in front of Reflex's own routes
    stylesheets=["/styles.css"],
)
# A tab's State is wiped before any event from a connection with another session cookie:
# its client token alone never hands one user's data to another (states/owner.py).
app.add_middleware(StateOwnerMiddleware(), index=0)
# Past-due subscriptions fall back to the free plan's quotas once their grace ends.
app.register_lifespan_task(grace_period_task)


async def check_schema() -> None:
    """Say at start-up, in one line, when the database is not at this code's migration
    (GET /api/health answers 503 with the same line until it is)."""
    try:
        problem = await asyncio.to_thread(schema_problem)
    except Exception as err:  # unreachable now; requests will answer 503 meanwhile
        logging.getLogger("billing_app").warning("database not reachable at start: %s", err)
        return
    if problem is not None:
        logging.getLogger("billing_app").error(problem)


app.register_lifespan_task(check_schema)


async def apply_plan_limits() -> None:
    """A changed BILLING_PLANS_JSON reaches every user already on the plan at start, not
    only those who change plan later (each worker tries; after the first, nothing is
    left to change)."""
    log = logging.getLogger("billing_app")
    try:
        changed = await asyncio.to_thread(quotas.apply_catalog_now)
    except Exception as err:  # unreachable or un-migrated: said above; the next start retries
        down = unavailable(err)
        log.warning("plan limits not applied at start: %s", down.message if down else err)
        return
    if changed:
        log.info("plan limits: %d quota row(s) now follow the plan catalog", changed)


app.register_lifespan_task(apply_plan_limits)


# Collect the youngest generation after this many new container objects, not 700.
# Under load a request's objects die by reference counting, so few are left over: with
# 700, a worker still ran ~250 collections a second (~7 µs of CPU per request, pauses
# of 2-6 ms once a second); with 10,000, none under the benchmarks' loads (finding 39).
# Cyclic garbage still triggers a collection once 10,000 such objects pile up.
GC_GEN0_THRESHOLD = 10_000


async def freeze_startup_heap() -> None:
    """Move what startup built (Reflex, the compiled pages, SQLAlchemy's metadata: about
    216,000 objects) out of the collector's reach. Otherwise every full collection walks
    them all: measured ~100 ms per collection, during which the worker answers nothing;
    after the freeze ~0.01 ms. Then collect less often (GC_GEN0_THRESHOLD)."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


app.register_lifespan_task(freeze_startup_heap)
