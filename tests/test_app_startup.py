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


def _start_worker(db_file: Path, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "ENVIRONMENT")}
    return subprocess.Popen(
        [sys.executable, "-c", _LOG_AT_START],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env={**clean, "DATABASE_URL": f"sqlite:///{db_file}", **env},
    )


def _stderr(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


def test_a_worker_logs_the_apps_info_lines_with_time_and_level(tmp_path):
    """The review: under `reflex run --env prod` the start's "plan limits: ..." line never
    appeared (nothing configured the app's loggers) and warnings came out bare."""
    # Three imports of the app, seconds each: side by side.
    default = _start_worker(tmp_path / "default.db")
    debug = _start_worker(tmp_path / "debug.db", LOG_LEVEL="debug")
    warning = _start_worker(tmp_path / "warning.db", LOG_LEVEL="warning")
    lines = _stderr(default).splitlines()
    line = next(x for x in lines if "plan limits" in x)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO billing_app \[\d+\] plan limits: 3 "
        r"quota row\(s\) now follow the plan catalog",
        line,
    ), line
    assert "a debug line" not in "\n".join(lines)
    assert "a debug line" in _stderr(debug)
    assert "plan limits" not in _stderr(warning)
