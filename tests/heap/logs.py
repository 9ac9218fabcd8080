"""Capture the library's events (heap.events: stdlib logging) as dicts."""

from __future__ import annotations

import logging
from contextlib import contextmanager


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.events: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event is not None:
            self.events.append(dict(event=event, log_level=record.levelname.lower(), **record.fields))


@contextmanager
def capture_events(level: int = logging.DEBUG):
    """``with capture_events() as events:`` every remapgc event at ``level`` or
    above, as ``{"event": name, "log_level": ..., **fields}``."""
    logger = logging.getLogger("remapgc")
    handler = _Collect()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
