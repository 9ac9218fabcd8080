"""The heap's exceptions (bad input raises the usual TypeError/ValueError/IndexError).

Every attribute an exception carries is declared here, in its class.
"""

from __future__ import annotations

from .events import get_logger

log = get_logger("remapgc.heap")


class HeapError(Exception):
    """Base of the heap's own errors."""


class HeapFull(HeapError, MemoryError):
    """A collection could not make room for the allocation (OutOfMemoryError)."""


class HeapCorrupted(HeapError):
    """An invariant of the heap is broken; the message names the first one.

    ``invariant``: which one ("headers", "reference targets", "install", ...);
    ``detail``: what was found.
    """

    invariant: str
    detail: str

    def __init__(self, invariant: str, detail: str):
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class HeapClosed(HeapError, RuntimeError):
    """The heap was closed; its memory is gone."""


class CompactionAborted(HeapError, OSError):
    """The kernel refused to finish installing pages (ENOMEM, EINTR, ...).

    The heap stays consistent: the pages not yet installed are kept aside
    (fixed up, in the from-space) and installed by the next heap operation.
    ``errno`` is the kernel's. ``stats``: what the collection did before it
    stopped (a concurrent collection's ``ConcurrentGCStats``), or None.
    """

    stats: object | None

    def __init__(self, err: int, message: str, stats: object | None = None):
        OSError.__init__(self, err, message)
        self.stats = stats


class RemapRefused(HeapError):
    """The kernel refused to register the arena, before anything changed
    (internal: the auto compactor then falls back to copying). ``error``: the
    kernel's refusal."""

    error: OSError

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class Health:
    """Whether the heap is still sound. Once an install finds a broken
    invariant (a to-space page filled from outside, ...) the heap refuses
    every operation but close() with HeapCorrupted, rather than hand out or
    keep bytes that may not be an object's."""

    __slots__ = ("broken",)

    def __init__(self) -> None:
        self.broken: HeapCorrupted | None = None

    def mark_broken(self, exc: HeapCorrupted) -> None:
        if self.broken is None:
            self.broken = exc
            log.error("heap_corrupted", invariant=exc.invariant, error=str(exc))

    def check(self) -> None:
        """Raise HeapCorrupted if the heap is broken."""
        b = self.broken
        if b is not None:
            raise HeapCorrupted(b.invariant, f"{b.detail} (found earlier: the heap refuses every operation "
                                "but close())") from b
