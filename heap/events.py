"""The library's events, through the standard library's ``logging``.

remapgc is silent unless its host asks: every logger lives under
``remapgc`` (``remapgc.heap``, ``remapgc.kernel``, ``remapgc.linux``, ...),
the ``remapgc`` logger carries a ``NullHandler``, and nothing is printed by
the library itself. A host sees the events by configuring logging as it
already does, e.g. ``logging.basicConfig(level=logging.DEBUG)``.

An event is a name plus fields. The record's message renders as
``event key=value ...`` only when a handler formats it; the name and the
fields are also on the record (``record.event``, ``record.fields``) for
handlers that want them structured (structlog's ``ProcessorFormatter``, a
JSON formatter). An event whose level is disabled costs one level check:
no message, no record, no formatting.

Levels: per-phase events at DEBUG, one summary per collection (``gc_done``)
at DEBUG, decisions a host should know about once (``kernel_chosen``,
``compactor_fallback``) at INFO/WARNING, failures at ERROR.
"""

from __future__ import annotations

import logging

ROOT = "remapgc"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


class _Message:
    """Formats ``event key=value ...`` on demand (only a handler asks)."""

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: dict):
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        if not self.fields:
            return self.event
        return self.event + " " + " ".join(f"{k}={v}" for k, v in self.fields.items())


class EventLogger:
    """A named stdlib logger that emits events (a name and fields)."""

    __slots__ = ("_logger",)

    def __init__(self, name: str):
        self._logger = logging.getLogger(name)

    @property
    def name(self) -> str:
        return self._logger.name

    def enabled(self, level: int = logging.DEBUG) -> bool:
        """Whether an event at ``level`` would reach a handler: check it before
        building costly fields on a hot path."""
        return self._logger.isEnabledFor(level)

    # Each level method checks the level itself before anything else: a disabled event
    # costs that check and the call (the fields dict is built once, by the call).
    def log(self, level: int, event: str, **fields) -> None:
        if self._logger.isEnabledFor(level):
            self._emit(level, event, fields)

    def debug(self, event: str, **fields) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields) -> None:
        if self._logger.isEnabledFor(logging.WARNING):
            self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields) -> None:
        if self._logger.isEnabledFor(logging.ERROR):
            self._emit(logging.ERROR, event, fields)

    def _emit(self, level: int, event: str, fields: dict) -> None:
        # stacklevel 3: the record names the library's line that logged, not this module
        self._logger.log(level, _Message(event, fields), extra={"event": event, "fields": fields}, stacklevel=3)


def get_logger(name: str) -> EventLogger:
    """The event logger ``name`` (``remapgc.<part>``)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"remapgc loggers live under {ROOT!r}: {name!r}")
    return EventLogger(name)
