"""Builds the FastAPI app that Reflex mounts itself under (`rx.App(api_transformer=...)`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from billing_app.errors import BillingError


def create_api() -> FastAPI:
    api = FastAPI(
        title="Billing API",
        version="1.0.0",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )

    @api.exception_handler(BillingError)
    def _billing_error(_request: Request, exc: BillingError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code)

    @api.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return api
