"""Assembles the ASGI app: Stripe API + sandbox control endpoints + human pages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from . import api, control, pages
from .config import SandboxConfig
from .store import SandboxState


def create_app(config: SandboxConfig | None = None, state: SandboxState | None = None) -> Starlette:
    """A Starlette app serving one sandbox. ``app.state.sandbox`` is its :class:`SandboxState`."""
    config = config or SandboxConfig()
    state = state or SandboxState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.close()  # stop the webhook worker with the server

    app = Starlette(
        routes=[*api.routes(state), *control.routes(state), *pages.routes(state)],
        lifespan=lifespan,
    )
    app.state.sandbox = state
    return app
