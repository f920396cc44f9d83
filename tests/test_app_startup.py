"""What each worker does at startup, before it serves (billing_app.py's lifespan tasks)."""

from __future__ import annotations

import asyncio
import gc
import threading


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
