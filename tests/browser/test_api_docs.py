"""/api/docs in a real browser that can reach the app and nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import LiveApp, screenshot

pytestmark = pytest.mark.browser


def test_api_docs_render_with_only_the_app_reachable(page: Page, live_app: LiveApp) -> None:
    """An engineer wiring a service opens the docs: every operation is listed, even on a
    network where no CDN answers (every request to another host is cut off here)."""
    app_host = urlsplit(live_app.url).netloc
    outside: list[str] = []

    def only_the_app(route: Route) -> None:
        if urlsplit(route.request.url).netloc == app_host:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_app)
    page.goto(f"{live_app.url}/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Billing API")
    batch = page.locator(".opblock-post").filter(has_text="/api/billing/usage/batch")
    expect(batch).to_be_visible()
    batch.locator(".opblock-summary").click()
    expect(batch).to_contain_text("return=minimal")
    screenshot(page, "api-docs", full_page=False)
    assert outside == [], outside


def test_docs_at_fastapis_default_path_lead_to_the_api_docs(page: Page, live_app: LiveApp) -> None:
    """/docs was the pages' "Page not found": the app served by Reflex on one port (as
    `make run` and production serve it) sends the backend's redirect before any page."""
    for path, target in [("/docs", "/api/docs"), ("/redoc", "/api/docs")]:
        r = httpx.get(f"{live_app.url}{path}", follow_redirects=False, timeout=30)
        assert (r.status_code, r.headers.get("location")) == (307, target), r.text[:200]
    page.goto(f"{live_app.url}/docs")
    expect(page).to_have_url(f"{live_app.url}/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Billing API")
