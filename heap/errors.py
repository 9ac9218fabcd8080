"""The heap's exceptions (bad input raises the usual TypeError/ValueError/IndexError)."""

from __future__ import annotations


class HeapError(Exception):
    """Base of the heap's own errors."""


class HeapFull(HeapError, MemoryError):
    """A collection could not make room for the allocation (OutOfMemoryError)."""


class HeapCorrupted(HeapError):
    """An invariant of the heap is broken; the message names the first one."""

    def __init__(self, invariant: str, detail: str):
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant


class HeapClosed(HeapError, RuntimeError):
    """The heap was closed; its memory is gone."""


class CompactionAborted(HeapError, OSError):
    """The kernel refused to finish installing pages (ENOMEM, EINTR, ...).

    The heap stays consistent: the pages not yet installed are kept aside
    (fixed up, in the from-space) and installed by the next heap operation.
    ``errno`` is the kernel's.
    """

    def __init__(self, err: int, message: str):
        OSError.__init__(self, err, message)


class RemapRefused(HeapError):
    """The kernel refused to register the arena, before anything changed
    (internal: the auto compactor then falls back to copying)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error
