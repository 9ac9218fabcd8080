"""What a collection reports: ``GCStats``, the counters installers keep, and
one event per phase (``PhaseClock``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

from .events import get_logger

log = get_logger("remapgc.heap")


@dataclass
class GCStats:
    """One collection's counts; times in nanoseconds."""

    live_objects: int = 0
    live_bytes: int = 0  # bytes the live objects occupy (headers and padding included)
    freed_objects: int = 0
    pages_moved: int = 0  # pages installed with UFFDIO_MOVE (zero-copy)
    bytes_moved_zero_copy: int = 0
    bytes_copied: int = 0  # evacuated objects, memmoved objects, EBUSY fallback pages
    # THP: dead bytes kept resident in sparse huge units moved whole instead of copied out
    # (bounded by Pause.sparse_keep x live_bytes; heap.plan)
    kept_dead_bytes: int = 0
    # pages from the arena's start left where they were (a dense prefix the plan leaves in
    # place: neither flipped nor installed; heap.pause.dense_prefix); all of them when the
    # to-space was built in the arena
    pages_kept_in_place: int = 0
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
class ConcurrentGCStats(GCStats):
    """``GCStats`` of a concurrent collection (``collect(concurrent=True)``), with what only it has."""

    zero_filled: int = 0  # pages installed as zero pages (a source hole met without ALLOW_SRC_HOLES: ENOENT)
    fresh_pages: int = 0  # zero pages put under faults past the to-space top (allocation during install)
    install_aborts: int = 0  # installs the kernel refused (ENOMEM, EINTR ...): CompactionAborted raised
    install_retries: int = 0  # fault services refused and retried after a back-off
    pages_installed_by_faults: int = 0  # to-space pages the fault handler installed (the rest: the compactor)
    fault_p50_ns: int = 0  # service time of the faults the handler resolved itself, from reading the event to the wake
    fault_p99_ns: int = 0
    fault_max_ns: int = 0
    install_ns: int = 0  # from the end of the pause to the last page installed
    # the pause split into its parts (also in heap.last_phase_ns)
    mark_ns: int = 0
    plan_ns: int = 0
    flip_ns: int = 0
    precompute_ns: int = 0
    roots_ns: int = 0
    # 1: asked for concurrently, but the heap's compactor cannot run concurrently (the copying
    # one): it collected stop-the-world (everything above then happened inside the pause)
    stop_the_world: int = 0


@dataclass
class InstallCounters:
    """What one installer did (the stop-the-world install, the concurrent
    compactor, the fault handler, a native walk or fault server). Each
    installer keeps its own; at the end of a collection each adds itself into
    the collection's stats (``add_into``)."""

    pages_moved: int = 0
    bytes_copied: int = 0
    eagain_retries: int = 0
    partial_moves: int = 0
    eexist_races: int = 0
    ebusy_fallbacks: int = 0
    zero_filled: int = 0
    ioctls: int = 0
    faults_served: int = 0
    pages_installed_by_faults: int = 0
    fresh_pages: int = 0
    install_retries: int = 0

    def add_into(self, stats: GCStats, page_size: int) -> None:
        """Add every count into the stats field of the same name (those the
        stats have: a stop-the-world GCStats has no fault counts), and the
        moved pages as ``bytes_moved_zero_copy``."""
        names = _field_names(type(stats))
        for name, count in self.__dict__.items():  # the dataclass's fields: nothing else is set on it
            if count and name in names:
                setattr(stats, name, getattr(stats, name) + count)
        stats.bytes_moved_zero_copy += self.pages_moved * page_size


_FIELDS: dict[type, frozenset] = {}


def _field_names(cls: type) -> frozenset:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
    return names


@dataclass
class HeapStats:
    """``Heap.stats()``: the heap's state without collecting."""

    objects: int  # objects in the heap (live or not yet found dead)
    live_bytes: int  # bytes those objects occupy
    free_bytes: int  # room left before the heap reaches its size
    size: int
    rss: int  # resident bytes of the heap's mappings


class PhaseClock:
    """Times the phases of one collection; keeps one event per phase (the
    heap's ``last_events``) and logs it at DEBUG. Inside a pause a phase costs
    two clock reads and a tuple: the event dicts are built when asked for
    (``events``, after the pause) or when DEBUG is enabled."""

    def __init__(self, compactor: str):
        self.compactor = compactor
        self.ns: dict[str, int] = {}
        self._done: list[tuple[str, int, dict, dict]] = []  # (phase, ns, fields, extra), in order

    def phase(self, name: str, **fields) -> "_Phase":
        """``with clock.phase(name) as ev:`` times the block; ``ev`` is a dict
        the block may add event fields to."""
        return _Phase(self, name, fields)

    @property
    def events(self) -> list[dict]:
        return [self._event(*done) for done in self._done]

    def _event(self, name: str, ns: int, fields: dict, extra: dict) -> dict:
        return dict(phase=name, compactor=self.compactor, ns=ns, **fields, **extra)

    def _record(self, name: str, ns: int, fields: dict, extra: dict) -> None:
        self.ns[name] = self.ns.get(name, 0) + ns
        done = (name, ns, fields, extra)
        self._done.append(done)
        if log.enabled():
            log.debug("gc_" + name, **self._event(*done))


class _Phase:
    """One timed phase (a context manager: cheaper than a generator-based one)."""

    __slots__ = ("clock", "name", "fields", "extra", "t0")

    def __init__(self, clock: PhaseClock, name: str, fields: dict):
        self.clock, self.name, self.fields = clock, name, fields

    def __enter__(self) -> dict:
        self.extra = {}
        self.t0 = time.perf_counter_ns()
        return self.extra

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:  # a phase that raised is not recorded
            self.clock._record(self.name, time.perf_counter_ns() - self.t0, self.fields, self.extra)
