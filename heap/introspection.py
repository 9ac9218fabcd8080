"""What a ``Heap`` says about itself: read-only properties, kept apart from
heap.runtime so that module stays about the heap's own work (a base class of
``Heap``; it reads the parts the heap built, never changes them)."""

from __future__ import annotations

from .kernel import Kernel
from .objects import ObjectModel


class HeapProperties:
    """Read-only facts of a heap: its kernel, compactor, fault mode, size, and
    what its last collection did."""

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @property
    def compactor(self) -> str:
        return self._compactor

    @property
    def size(self) -> int:
        return self._size

    @property
    def base(self) -> int:
        return self._alloc.base

    @property
    def object_model(self) -> ObjectModel:
        return self._model

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def collections(self) -> int:
        """Collections so far (counted when their pause is over)."""
        return self._pause.collections

    @property
    def last_phase_ns(self) -> dict[str, int]:
        """Phase name -> nanoseconds, of the last collection."""
        return self._pause.last_phase_ns

    @property
    def last_events(self) -> list[dict]:
        """The phase events of the last collection, as logged."""
        return self._pause.last_events

    @property
    def faults(self) -> str:
        """Who serves a concurrent cycle's userfaults: "self" (the faulting thread,
        by SIGBUS) or "thread" (a handler thread); ``Heap(faults=...)`` asks,
        docs/self_service.md."""
        return self._spaces.faults

    @property
    def faults_reason(self) -> str:
        """Why ``faults`` is what it is (asked for, measured, or a fallback and its cause)."""
        return self._spaces.faults_reason
