"""The app's log lines: stderr, with time, level, logger and worker pid.

Granian and Reflex configure only their own loggers, so without this the app's INFO
lines (say, how many quota rows a changed plan catalog rewrote) were dropped and its
warnings printed bare, with no time or level, by Python's last-resort handler."""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str) -> None:
    """Send `billing_app.*` records at `level` and up, and every other logger's warnings,
    to stderr. A process that set up logging itself (pytest, an embedding) keeps its own
    handlers."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime  # UTC, as every time the app shows
        handler.setFormatter(formatter)
        root.addHandler(handler)
    logging.getLogger("billing_app").setLevel(level)
