"""The metered quantities. Adding a metric is one line in METRICS."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    singular: str
    plural: str
    # Default monthly limit per plan; 0 means unlimited.
    limits: dict[str, int]


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("tokens", "Tokens", "token", "tokens",
               {"free": 10_000, "basic": 100_000, "pro": 1_000_000, "enterprise": 0}),
        Metric("api_calls", "API calls", "API call", "API calls",
               {"free": 100, "basic": 1_000, "pro": 10_000, "enterprise": 0}),
        Metric("scraping_tasks", "Scraping tasks", "scraping task", "scraping tasks",
               {"free": 10, "basic": 100, "pro": 1_000, "enterprise": 0}),
    )
}  # fmt: skip

METRIC_KEYS: tuple[str, ...] = tuple(METRICS)

# One event may not carry more than this (guards against typos and overflow).
MAX_QUANTITY = 1_000_000_000
# The largest limit an admin may set (0 is unlimited): a thousand of the largest events.
MAX_LIMIT = MAX_QUANTITY * 1000
