"""What each worker does at startup, before it serves (billing_app.py's lifespan tasks)."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from billing_app.settings import PROJECT_ROOT


def test_a_worker_freezes_its_startup_heap_and_then_collects_less_often():
    """Startup's objects leave the collector's reach, and the youngest generation is
    collected after GC_GEN0_THRESHOLD new objects, not 700 (bench/README finding 39)."""
    from billing_app import billing_app as module

    assert module.freeze_startup_heap in module.app.get_lifespan_tasks()
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        # Its own thread: earlier tests (Playwright's sync API) may leave a loop running here.
        runner = threading.Thread(target=asyncio.run, args=(module.freeze_startup_heap(),))
        runner.start()
        runner.join()
        assert gc.get_freeze_count() > 10_000  # Reflex, the pages, the metadata, ...
        assert gc.get_threshold() == (module.GC_GEN0_THRESHOLD, *before[1:])
        assert module.GC_GEN0_THRESHOLD > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# Imports the app module as each granian worker does, then logs as its lifespan tasks do.
_LOG_AT_START = """
import logging
import billing_app.billing_app
logging.getLogger("billing_app").info("plan limits: 3 quota row(s) now follow the plan catalog")
logging.getLogger("billing_app.api").debug("a debug line")
"""


def _worker_stderr(tmp_path: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "ENVIRONMENT")}
    proc = subprocess.run(
        [sys.executable, "-c", _LOG_AT_START],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**clean, "DATABASE_URL": f"sqlite:///{tmp_path / 'log.db'}", **env},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_worker_logs_the_apps_info_lines_with_time_and_level(tmp_path):
    """The review: under `reflex run --env prod` the start's "plan limits: ..." line never
    appeared (nothing configured the app's loggers) and warnings came out bare."""
    lines = _worker_stderr(tmp_path).splitlines()
    line = next(x for x in lines if "plan limits" in x)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO billing_app \[\d+\] plan limits: 3 "
        r"quota row\(s\) now follow the plan catalog",
        line,
    ), line
    assert "a debug line" not in "\n".join(lines)
    assert "a debug line" in _worker_stderr(tmp_path, LOG_LEVEL="debug")
    assert "plan limits" not in _worker_stderr(tmp_path, LOG_LEVEL="warning")
