"""The Heap: configuration, life cycle, allocation, collection, stats and verify.

The heap owns its parts and wires them together (docs/design.md, "The parts
of the heap"):

* ``Spaces`` (heap.spaces): the arena, the from-space, the userfaultfd;
* ``Allocator``, ``ObjectTable``, ``AddressIndex`` (heap.alloc, heap.mark):
  where objects are and the side tables that mirror them;
* ``HandleTable`` (heap.roots): the roots Python code holds;
* ``Access`` and ``AccessGate`` (heap.access): what ``Ref`` and
  ``RefArray`` do, and the gate a pause drains;
* ``Pause`` (heap.pause): the steps every compactor shares, and the end of
  every collection; the compactors' own steps are in heap.compactors;
* ``ConcurrentCycle`` (heap.concurrent): the running concurrent cycle, if any;
* ``Health`` (heap.errors): whether an install found a broken invariant.

Every public method takes the heap's lock; ``Ref`` methods go through the
``Access``. Freed space is reused through compaction: allocation only bumps
upwards, so the side tables stay sorted by address and a collection packs
the live objects at the bottom and leaves the rest of the arena empty.
"""

from __future__ import annotations

import threading
from typing import Iterable

import numpy as np

from . import forksafety, signals
from .access import AccessGate, as_index, as_shapes
from .alloc import Allocator, ObjectTable, round_up
from .compactors import copy_collect, remap_pause
from .concurrent import CHUNK_PAGES, ConcurrentCycle, collect_concurrent, concurrent_pause
from .errors import CompactionAborted, HeapClosed, HeapCorrupted, HeapFull, Health, RemapRefused
from .events import get_logger
from .fastpath import bump_step, make_access
from .embedding import EmbeddingAPI, model_for
from .hooks import Hooks
from .install import InstallInterrupted, PageInstaller
from .introspection import HeapProperties
from .kernel import Kernel, KernelUnsupported, open_kernel
from .mark import AddressIndex, Workspace, index_granule
from .objects import DEFAULT_MODEL, ObjectModel, RootScanner
from .pause import Collection, Pause, python_gc_held
from .roots import HandleTable, Ref, RefArray
from .spaces import Spaces
from .stats import ConcurrentGCStats, GCStats, HeapStats, InstallCounters
from .verify import verify_heap

log = get_logger("remapgc.heap")

COMPACTORS = ("auto", "remap", "copy")
# A small-object page moves whole when at least this fraction of it is live.
# Moving a page costs an ioctl per run of pages (~1.5 us when the run is one
# page), sliding its objects into a rebuilt page costs a memmove of the live
# bytes (~0.4 us for a full page) and leaves no holes; so only nearly full
# pages, which come in long runs, are worth moving. Measured on the bench's
# small-object heap (1M objects, half dead): threshold 0.5 -> 16k MOVE runs,
# 292 ms, RSS 122 MiB; 0.7 -> 1.8k runs, 195 ms, 90 MiB; 0.9 -> 2 runs,
# 188 ms, 89 MiB.
DEFAULT_DENSE = 0.85
# With THP the unit is a 2 MiB huge page: it moves by PMD for ~0.5 us while
# copying its live objects out costs ~100 us per MiB, so it moves whole down
# to a quarter full (the holes stay resident: memory traded for time).
DEFAULT_DENSE_HUGE = 0.25
MAX_NREFS = (1 << 32) - 1
CLOSE_DRAIN_S = 10.0  # close() waits this long for accesses in flight


class Heap(HeapProperties, EmbeddingAPI):
    """A compacting heap in one arena of ``size`` bytes.

    kernel: "auto" | "linux" | "sim" | a Kernel instance.
    compactor: "auto" (remap when userfaultfd with UFFDIO_MOVE works, else
    copy, logging why) | "remap" | "copy".
    thp: advise the arena MADV_HUGEPAGE and place objects >= 2 MiB 2 MiB-aligned.
    dense: live fraction at which a unit (a small-object page; with THP a
    2 MiB region) moves whole instead of having its objects evacuated
    (default 0.85, with THP 0.25; see DEFAULT_DENSE).
    collect_every: collect before an allocation once this many bytes were
    allocated since the last collection (None: only when the heap is full).
    host_word: every object gets a header word the host owns (``alloc(host=)``).
    faults: "auto" (measured once per process: "self" where it is faster) | "self" | "thread" (heap.faultmode).
    Embedding: heap.embedding, docs/embedding.md.
    """

    def __init__(self, kernel: str | Kernel = "auto", size: int = 256 << 20, *, compactor: str = "auto",
                 thp: bool = False, dense: float | None = None, collect_every: int | None = None,
                 object_model: ObjectModel | None = None, root_scanners: Iterable[RootScanner] = (),
                 host_word: bool = False, faults: str = "auto"):
        self._spaces: Spaces | None = None
        self._closed = True  # until the arena exists
        if compactor not in COMPACTORS:
            raise ValueError(f"compactor must be one of {COMPACTORS}, not {compactor!r}")
        size = as_index(size, "size")
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        if dense is None:
            dense = DEFAULT_DENSE_HUGE if thp else DEFAULT_DENSE
        if not 0.0 < dense <= 1.0:
            raise ValueError(f"dense must be in (0, 1], not {dense}")
        self._lock = threading.RLock()
        self._owns_kernel = isinstance(kernel, str)
        self._kernel = k = open_kernel(kernel) if isinstance(kernel, str) else kernel
        self._model = model = model_for(object_model, host_word)  # host_word: heap.embedding
        granule = index_granule(model)  # before anything is mapped
        # a model may offer one object's total_bytes and header as plain arithmetic (DefaultObjectModel does)
        self._object_bytes = getattr(model, "object_bytes", None)
        self._scalar_header = getattr(model, "header", None)
        self.collect_every = collect_every  # checked by the setter (heap.embedding)
        self._scanners: list[RootScanner] = list(root_scanners)
        self._ps = ps = k.page_size
        self._size = round_up(size, k.hpage_size if thp else ps)
        self._spaces = spaces = Spaces(k, self._size, thp=bool(thp), faults=faults)
        self._alloc = Allocator(spaces.base, self._size, ps, k.hpage_size // ps if thp else 0)
        self._table = ObjectTable()
        self._index = AddressIndex(spaces.base, self._size, granule)
        self._bump = bump_step(k, model, self._alloc, self._table, self._index)  # heap.fastpath
        self._work = Workspace()
        self._handles = HandleTable()
        self._gate = AccessGate()  # mutator memory accesses in flight outside the lock
        self._health = Health()
        self._hooks = Hooks(self._gate)  # the host's mutator hooks and collection callbacks (heap.hooks)
        self._pause = Pause(k, model, spaces, self._alloc, self._table, self._index, self._work, self._handles,
                            self._scanners, float(dense), host=self._hooks.run_host)
        self._access = make_access(self, self._lock, self._ready, self._gate, self._health, k, model, self._handles,
                              self._table, self._index, self._pause)
        self._pending: PageInstaller | None = None  # a stop-the-world install the kernel interrupted
        self._cycle: ConcurrentCycle | None = None  # the running concurrent cycle
        self._since_collect = 0
        self._disabled = 0  # disable() calls not yet matched by enable(): no automatic collection
        self._closed = False
        self._auto = compactor == "auto"
        self._compactor = self._choose_compactor(compactor)
        forksafety.track(self)  # os.fork waits for a quiet heap (heap.forksafety)
        self._dropped = spaces.release_with(self, k if self._owns_kernel else None)  # dropped unclosed: released

    def _choose_compactor(self, wanted: str) -> str:
        if wanted == "copy":
            return "copy"
        try:
            self._spaces.open_uffd()
        except (KernelUnsupported, OSError) as exc:
            if wanted == "remap":
                self.close()
                raise KernelUnsupported(f"compactor='remap' needs userfaultfd with UFFDIO_MOVE: {exc}") from exc
            log.warning("compactor_fallback", compactor="copy", reason=str(exc))
            return "copy"
        return "remap"

    # -- properties -------------------------------------------------------------------
    @property
    def lock(self) -> threading.RLock:
        """The heap's lock. Held, no collection and no access that takes it can
        start; with ``quiesce()`` after it, no access at all (the compiled ones of
        heap.fastpath wait too; heap.forksafety does both across os.fork)."""
        return self._lock

    @property
    def _uffd(self):
        """The userfaultfd (None: copying compactor), for tests that check its options."""
        return self._spaces.uffd

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "Heap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._hooks.inside:
            self._hooks.check()  # from a root scanner, hook or callback: the collection needs the heap
        with signals.deferred(), signals.critical(), self._lock:  # interrupted, threads and mappings stay behind
            if self._closed and (self._spaces is None or self._spaces.closed):
                return
            if self._cycle is not None:
                self._cycle.shutdown()
                self._cycle = None
            drained = self._gate.drain(CLOSE_DRAIN_S)
            self._closed = self._access.closed = True
            if not drained:
                log.warning("close_left_memory_mapped", reason=f"an access was still in flight after {CLOSE_DRAIN_S} s")
            self._spaces.close(unmap=drained)
            self._pending = None
            self._index.close()  # its memory goes with the heap
            self._work.close()
            k = self._kernel
            if self._owns_kernel:
                k.close()
            if getattr(self, "_dropped", None) is not None:  # not set when __init__ failed before it
                self._dropped.detach()

    def _ready(self) -> None:
        """Entry check of every operation: open, sound, handles reaped, no install pending."""
        if self._closed:
            raise HeapClosed("the heap is closed")
        if self._hooks.inside:
            self._hooks.check()  # a host hook or callback calling back in, mid-collection
        if self._health.broken is not None:
            self._health.check()
        if self._handles.reap_due:
            self._handles.reap()
        if self._cycle is not None:
            self._cycle.on_heap_operation()
        if self._pending is not None:
            self._install_pending(InstallCounters())
            self._spaces.unregister()
            self._spaces.release_from_space()

    def quiesce(self) -> None:
        """Bring the heap to rest: a running concurrent cycle ends, an
        interrupted install is finished, the from-space is released, no access
        is in flight. Before os.fork (heap.forksafety), with ``lock`` held."""
        with self._lock:
            if self._closed:
                return
            self._ready()
            self._settle_cycle()
            self._spaces.settle_release()

    def after_fork_in_child(self) -> None:
        """In a forked child (heap.forksafety): on a kernel whose userfaultfd is
        a descriptor (``reopen_uffd_after_fork``), the inherited one acts on the
        parent's address space; open one of the child's own, or fall back to
        copying. (The simulator's state is copied with the process: nothing to do.)"""
        if self._closed or self._spaces.uffd is None or not self._kernel.reopen_uffd_after_fork:
            return
        self._spaces.drop_uffd()  # the child's copy of the descriptor; the parent keeps its own
        try:
            self._spaces.open_uffd()
        except Exception as exc:
            self._compactor = "copy"
            log.warning("compactor_fallback", compactor="copy", reason=f"after fork: {exc}")

    # -- allocation -------------------------------------------------------------------
    def alloc(self, nbytes: int, nrefs: int = 0, *, host: int | None = None) -> Ref:
        """A new object with ``nrefs`` None slots and ``nbytes`` zero bytes of payload
        (``host``: its host header word, on a heap made with ``host_word=True``)."""
        nbytes, nrefs, total = self._check_shape(nbytes, nrefs)
        with self._lock:
            return self._access.issue(self._new_object(nbytes, nrefs, total, host), (nbytes, nrefs))

    def _new_object(self, nbytes: int, nrefs: int, total: int, host: int | None) -> int:
        """With the lock held: place one object, write its header, record it; its address.
        In the current page that is one compiled step (heap.fastpath), else deferred:
        placed but not recorded, the side tables would disagree."""
        self._ready()
        every = self._collect_every
        if every is None or self._since_collect + total <= every:
            addr = self._bump(nbytes, nrefs, total, host)
            if addr:
                self._since_collect += total
                return addr
        with signals.deferred_alloc():
            addr = self._place(lambda: self._alloc.place(total), total)
            self._kernel.store(addr, self._header(nbytes, nrefs, total >= self._ps, host))
            self._index.add(addr, self._table.append(addr, nbytes, nrefs, total))
            # the collector's per-object buffers grow with the table (where it grows), not in a pause:
            # as many rows as it holds, and slots in the proportion seen so far
            t = self._table
            self._work.reserve(t.capacity, t.nslots * t.capacity // t.n)
        return addr

    def alloc_many(self, nbytes, nrefs) -> RefArray:
        """Many objects at once (arrays, or scalars broadcast): one root block
        holding all of them, headers written in one vectorised store."""
        nbytes, nrefs = as_shapes(nbytes, nrefs, self._model, self._size, MAX_NREFS)
        totals = self._model.total_bytes(nbytes, nrefs)
        if int(totals.sum()) > self._size:
            raise ValueError(f"{int(totals.sum())} bytes cannot fit a heap of {self._size} bytes")
        with signals.deferred(), self._lock:  # interrupted half way, the side tables would disagree
            self._ready()
            addrs = self._place(lambda: self._alloc.place_many(totals), int(totals.sum()))
            words = self._model.header_words(nbytes, nrefs, totals >= self._ps)
            hw = words.shape[1]
            where = (addrs[:, None] + 8 * np.arange(hw)[None, :]).ravel()
            self._kernel.store_words(where.astype(np.uint64), words.ravel().astype(np.uint64))
            self._index.add_many(addrs, self._table.n)
            self._table.extend(addrs, nbytes, nrefs, totals)
            self._work.reserve(self._table.n, self._table.nslots)
            return self._access.new_block(addrs)

    def _check_shape(self, nbytes, nrefs) -> tuple[int, int, int]:
        """(nbytes, nrefs, total bytes) of an object that can be allocated, or a clear error."""
        nbytes, nrefs = as_index(nbytes, "nbytes"), as_index(nrefs, "nrefs")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        if not 0 <= nrefs <= MAX_NREFS:
            raise ValueError(f"nrefs must be in [0, 2**32), not {nrefs}")
        if nbytes > self._size:  # before the int64 arithmetic of total_bytes
            raise ValueError(f"an object of {nbytes} bytes cannot fit a heap of {self._size} bytes")
        if self._object_bytes is not None:
            total = self._object_bytes(nbytes, nrefs)
        else:
            total = int(self._model.total_bytes(nbytes, nrefs))
        if total > self._size:
            raise ValueError(f"an object of {total} bytes cannot fit a heap of {self._size} bytes")
        return nbytes, nrefs, total

    def _place(self, place, total: int):
        if self._disabled:
            return self._place_disabled(place, total)
        if self._collect_every is not None and self._since_collect + total > self._collect_every:
            self._collect_locked()
        where = place()
        if where is None:
            self._collect_locked()
            where = place()
            if where is None:
                st = self.stats()
                raise HeapFull(f"no room for {total} bytes after a collection "
                               f"({st.live_bytes} bytes live in a heap of {self._size})")
        self._since_collect += total
        return where

    # -- collection ----------------------------------------------------------------------
    def collect(self, concurrent: bool = False, wait: bool = True) -> GCStats:
        """Compact the heap; returns what it did. Stop-the-world: every step in
        the pause, a ``GCStats``. ``concurrent=True``: the pages are installed
        while mutators run (a touch of one not yet installed is served on
        demand), a ``ConcurrentGCStats``; with the copying compactor, which
        cannot run concurrently, it collects stop-the-world and says so
        (``stop_the_world == 1``, an INFO event), docs/embedding.md. ``wait=False``: heap.background.

        The pause (``pause_ns``) ends when every live page is installed (or,
        concurrent, when the install program is ready) and the heap lock is
        dropped; releasing the from-space happens after that, outside the
        lock, and ``total_ns`` includes it.
        """
        with signals.deferred():  # SIGINT/SIGTERM reach the caller once the heap is consistent
            if concurrent:
                return collect_concurrent(self, wait=wait)
            rss_before = self._rss_unlocked()
            with self._lock:
                self._ready()
                stats, finish = self._collect_pause(rss_before=rss_before)
            finish()
            return stats

    def _collect_locked(self) -> GCStats:
        """A whole collection while holding the lock (alloc's own collections)."""
        with signals.deferred():
            stats, finish = self._collect_pause(automatic=True)
            finish()
            return stats

    def _collect_pause(self, *, automatic: bool = False, asked_concurrent: bool = False, rss_before=None):
        """A stop-the-world collection up to the end of its pause: (its stats,
        the rest of it to call once the heap lock is dropped)."""
        self._settle_cycle()  # a concurrent cycle ends and no mutator access is in flight
        self._spaces.settle_release()
        rss = self._rss() if rss_before is None else rss_before  # before the pause's clock starts
        col = Collection(ConcurrentGCStats(stop_the_world=1) if asked_concurrent else GCStats(), self._compactor)
        col.stats.rss_before = rss
        with self._hooks.pause(col, self._pause.collections + 1, concurrent=False, automatic=automatic,
                               compactor=self._compactor), signals.critical(), python_gc_held():  # no escape mid-flip
            if self._compactor == "remap":
                try:
                    self._collect_remap(col)
                except RemapRefused as exc:
                    if not self._auto:
                        raise exc.error
                    # nothing was changed yet: compact by copying, now and from now on
                    log.warning("compactor_fallback", compactor="copy",
                                reason=f"registering the arena failed: {exc.error}")
                    self._compactor = col.clock.compactor = "copy"
                    copy_collect(self._pause, col)
            else:
                copy_collect(self._pause, col)
            col.pause_over()
            self._since_collect = 0
            token = self._spaces.owe_release() if self._compactor == "remap" else None  # before an escape
        return col.stats, lambda: self._hooks.after(col.info, self._pause.end, col, token)

    def _collect_remap(self, col: Collection) -> None:
        inst = self._pending = remap_pause(self._pause, col)
        with col.clock.phase("install") as ev:
            if inst is not None and inst.pending:
                counters = InstallCounters()
                try:
                    self._install_pending(counters)
                finally:
                    counters.add_into(col.stats, self._ps)
                    ev.update(runs=int(inst.run_count.size), pages=counters.pages_moved, ioctls=counters.ioctls,
                              ebusy=counters.ebusy_fallbacks)
            else:  # the to-space was built in the arena (or is empty): nothing to move
                self._pending = None
                ev.update(runs=0, pages=0, ioctls=0, ebusy=0)
        self._spaces.unregister()  # fresh pages fault normally again

    def _install_pending(self, counters: InstallCounters) -> None:
        try:
            self._pending.install(counters)
        except HeapCorrupted as exc:
            self._health.mark_broken(exc)
            raise
        except InstallInterrupted as exc:
            err = exc.error
            raise CompactionAborted(err.errno or 0, f"installing to-space pages failed ({err}); the rest stays "
                                    "pending and is installed by the next heap operation") from err
        self._pending = None

    # -- concurrent collection --------------------------------------------------------------
    def begin_concurrent(self, *, chunk_pages: int = CHUNK_PAGES, run_compactor: bool = True):
        """The first half of ``collect(concurrent=True)``, for benchmarks and
        tests that act during the install: the pause. Returns (the running
        cycle, its stats, None), or (None, stats, finish) when the heap has no
        userfaultfd and collected stop-the-world (call ``finish()``).
        ``run_compactor=False`` leaves every page to the fault handler."""
        rss_before = self._rss_unlocked()
        with signals.critical():  # no escape between the flip and the threads that install
            with self._lock:
                self._ready()
                self._settle_cycle()
                if self._compactor != "remap":  # no userfaultfd: the copying compactor, stop-the-world
                    log.info("collect_stop_the_world", reason="the copying compactor cannot run concurrently")
                    stats, finish = self._collect_pause(asked_concurrent=True, rss_before=rss_before)
                    return None, stats, finish
                self._spaces.settle_release()
                col = Collection(ConcurrentGCStats(rss_before=self._rss() if rss_before is None else rss_before),
                                 "concurrent")
                with self._hooks.pause(col, self._pause.collections + 1, concurrent=True, automatic=False,
                                       compactor=self._compactor), python_gc_held():
                    try:
                        program = concurrent_pause(self._pause, col)
                    except RemapRefused as exc:
                        raise exc.error
                    self._since_collect = 0
                    cycle = self._cycle = ConcurrentCycle(self._kernel, self._spaces, self._gate, self._health,
                                                          self._pause, self._end_cycle, program, col,
                                                          chunk_pages=chunk_pages, run_compactor=run_compactor)
                    col.pause_over()
            # the threads start once the pause is over: a fault taken meanwhile just waits in the uffd
            # queue, and a starting thread that takes the GIL cannot stretch the pause
            cycle.start()
        self._hooks.raise_resume_error(col.info)
        return cycle, cycle.stats, None

    def end_concurrent(self, cycle: ConcurrentCycle) -> None:
        """The second half: once the compactor stopped, raise its error or
        install what is left; then end the collection."""
        if cycle.error is not None or not cycle.states.all_installed():
            with self._lock:
                if self._cycle is not cycle:
                    return
                cycle.raise_error()
                cycle.complete()
        cycle.finish()

    def _end_cycle(self, cycle: ConcurrentCycle) -> object | None:
        """``cycle`` is over: forget it, and owe its from-space release (the
        token), unless another thread ended it first (None)."""
        with self._lock:
            if self._cycle is not cycle:
                return None
            self._cycle = None
            return self._spaces.owe_release()

    def _settle_cycle(self) -> None:
        """Before a pause or an inspection: the running cycle ends, and no access is in flight."""
        if self._cycle is not None:
            self._cycle.settle()
        self._gate.drain()

    # -- inspection ----------------------------------------------------------------------
    def _rss(self) -> int:
        return self._pause.rss(from_space_too=self._pending is not None)

    def _rss_unlocked(self) -> int | None:
        """RSS before a collection, read before taking the lock (None: with a cycle
        running, read it under the lock): reading the page tables of a large arena
        takes milliseconds (15 ms for 1 GiB here) that mutators need not wait for."""
        return self._rss() if self._cycle is None and not self._closed else None

    def stats(self) -> HeapStats:
        with self._lock:
            self._ready()
            a = self._alloc
            free = a.end - a.top + ((a.limit - a.cursor) if a.cursor else 0)
            return HeapStats(objects=self._table.n, live_bytes=int(self._table.total.sum()), free_bytes=free,
                             size=self._size, rss=self._rss())

    def verify(self) -> None:
        """Check every invariant; raise HeapCorrupted naming the first broken one."""
        with self._lock:
            self._ready()
            self._settle_cycle()
            self._spaces.settle_release()
            verify_heap(self._pause)
