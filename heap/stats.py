"""What a collection reports: ``GCStats`` and one structlog event per phase."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import structlog

log = structlog.get_logger("remapgc.heap")


@dataclass
class GCStats:
    """One collection's counts; times in nanoseconds."""

    live_objects: int = 0
    live_bytes: int = 0  # bytes the live objects occupy (headers and padding included)
    freed_objects: int = 0
    pages_moved: int = 0  # pages installed with UFFDIO_MOVE (zero-copy)
    bytes_moved_zero_copy: int = 0
    bytes_copied: int = 0  # evacuated objects, memmoved objects, EBUSY fallback pages
    eagain_retries: int = 0
    partial_moves: int = 0
    eexist_races: int = 0
    ebusy_fallbacks: int = 0
    faults_served: int = 0
    pause_ns: int = 0
    total_ns: int = 0
    rss_before: int = 0
    rss_after: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeapStats:
    """``Heap.stats()``: the heap's state without collecting."""

    objects: int  # objects in the heap (live or not yet found dead)
    live_bytes: int  # bytes those objects occupy
    free_bytes: int  # room left before the heap reaches its size
    size: int
    rss: int  # resident bytes of the heap's mappings


class PhaseClock:
    """Times the phases of one collection and logs one event per phase."""

    def __init__(self, compactor: str):
        self.compactor = compactor
        self.ns: dict[str, int] = {}
        self.events: list[dict] = []

    @contextmanager
    def phase(self, name: str, **fields):
        t0 = time.perf_counter_ns()
        extra: dict = {}
        yield extra
        ns = time.perf_counter_ns() - t0
        self.ns[name] = self.ns.get(name, 0) + ns
        event = dict(phase=name, compactor=self.compactor, ns=ns, **fields, **extra)
        self.events.append(event)
        log.info(f"gc_{name}", **event)
