"""Fault and load tests. The fast ones run in the normal suite; the slow ones are marked
`reliability` and run only from `make reliability` (RUN_RELIABILITY=1), which CI also runs.

Every figure these tests produce (lost, duplicated, overshoot) is printed and asserted zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

RUN_SLOW = os.environ.get("RUN_RELIABILITY") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: slow fault test, run by `make reliability` (RUN_RELIABILITY=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow fault test: run with `make reliability`")
    for item in items:
        if item.get_closest_marker("reliability") is not None:
            item.add_marker(skip)


def report(name: str, **figures: int) -> None:
    """Print the test's figures (visible with -s and in `make reliability`'s output)."""
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def database_kind() -> str:
    return (
        "postgresql" if os.environ.get("TEST_DATABASE_URL", "").startswith("postgres") else "sqlite"
    )


@pytest.fixture(scope="module")
def scratch_url(_migrated_template: str) -> Iterator[str]:
    """A migrated scratch database of the leg's kind, for a real server process: a copy of
    the run's migrated template."""
    from bench.servers import scratch_database

    with scratch_database(database_kind(), template=_migrated_template) as url:
        yield url
