"""The Heap: allocation, handles, and stop-the-world compaction.

Two compactors share marking and the object model:

* ``remap`` (ARCHITECTURE.md "Compaction"): mark; plan; register the arena
  with the userfaultfd and flip it whole to the from-space with one
  ``mremap(MREMAP_DONTUNMAP)`` (the arena stays mapped, empty and registered,
  so a stray touch would fault instead of reading stale memory; measured
  against one whole-range UFFDIO_MOVE as the flip: 1.2 ms against 5 ms for
  512 MiB); slide the sparse pages' live objects down into the first sparse
  pages and fix every reference slot, all inside the from-space where no
  mutator can see it; update the roots; install every to-space page with one
  UFFDIO_MOVE per contiguous run (all runs in one batched call); unregister.
  The pause ends there. Releasing the from-space (MADV_DONTNEED: RSS drops)
  happens after the heap lock is dropped; ``total_ns`` includes it.
* ``copy``: mark; slide every live object down with one ordered batch of
  memmoves; fix the slots; release the freed tail (inside the pause: it is
  arena memory). Used when userfaultfd is unusable, and the baseline of
  every benchmark.

Freed space is reused through compaction: allocation only bumps upwards, so
the side tables stay sorted by address and a collection packs the live
objects at the bottom and leaves the rest of the arena empty.

Every public method takes the heap's lock; ``Ref`` methods go through here.
"""

from __future__ import annotations

import operator
import sys
import threading
import time
from typing import Iterable

import numpy as np
import structlog

from . import forksafety, signals
from .alloc import Allocator, ObjectTable, round_up
from .concurrent import AccessGate, collect_concurrent, settle_cycle
from .errors import CompactionAborted, HeapClosed, HeapCorrupted, HeapFull, RemapRefused
from .install import InstallCounters, InstallInterrupted, PageInstaller, evacuate, slot_values
from .kernel import (MADV_DONTNEED, MADV_HUGEPAGE, UFFD_FEATURE_MOVE, Kernel, KernelUnsupported,
                     UFFDIO_REGISTER_MODE_MISSING, open_kernel)
from .mark import AddressIndex, Workspace, mark, rows_of
from .objects import DEFAULT_MODEL, ObjectModel, RootScanner
from .plan import Plan, plan_remap, plan_slide
from .roots import HandleTable, Ref, RefArray
from .stats import GCStats, HeapStats, PhaseClock

log = structlog.get_logger("remapgc.heap")

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
_BYTEORDER = sys.byteorder


def _index(value, name: str) -> int:
    if type(value) is int:
        return value
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


class Heap:
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
    """

    def __init__(self, kernel: str | Kernel = "auto", size: int = 256 << 20, *, compactor: str = "auto",
                 thp: bool = False, dense: float | None = None, collect_every: int | None = None,
                 object_model: ObjectModel | None = None, root_scanners: Iterable[RootScanner] = ()):
        if compactor not in COMPACTORS:
            raise ValueError(f"compactor must be one of {COMPACTORS}, not {compactor!r}")
        size = _index(size, "size")
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        if dense is None:
            dense = DEFAULT_DENSE_HUGE if thp else DEFAULT_DENSE
        if not 0.0 < dense <= 1.0:
            raise ValueError(f"dense must be in (0, 1], not {dense}")
        self._lock = threading.RLock()
        self._release_lock = threading.Lock()  # the from-space release runs outside the heap lock
        self._owed_release: object | None = None
        self._closed = True  # until the arena exists
        self._owns_kernel = isinstance(kernel, str)
        self._kernel = open_kernel(kernel) if isinstance(kernel, str) else kernel
        k = self._kernel
        self._model = object_model or DEFAULT_MODEL
        # a model may offer slot_offset(nrefs, slot) for one slot as plain arithmetic (DefaultObjectModel does)
        self._slot_offset = getattr(self._model, "slot_offset", None)
        self._object_bytes = getattr(self._model, "object_bytes", None)
        self._scalar_header = getattr(self._model, "header", None)
        self._thp = bool(thp)
        self._dense = float(dense)
        self._collect_every = collect_every
        self._scanners: list[RootScanner] = list(root_scanners)
        ps = k.page_size
        self._ps = ps
        unit = k.hpage_size if thp else ps
        self._size = round_up(size, unit)
        # 2 MiB-aligned even without THP: the flip's mremap then moves whole
        # page tables instead of one PTE at a time
        self._base = k.mmap(self._size, align=k.hpage_size)
        if thp:
            k.madvise(self._base, self._size, MADV_HUGEPAGE)
        self._alloc = Allocator(self._base, self._size, ps, k.hpage_size // ps if thp else 0)
        self._table = ObjectTable()
        self._addr_index = AddressIndex(self._base, self._size)
        self._work = Workspace()
        self._handles = HandleTable()
        self._uffd = None
        self._from_space = 0
        self._pending: PageInstaller | None = None
        self._gate = AccessGate()  # mutator memory accesses in flight outside the lock (heap.concurrent)
        self._cycle = None  # the running concurrent cycle (heap.concurrent.ConcurrentCycle)
        self._broken: HeapCorrupted | None = None  # set once an install finds a broken invariant
        self._since_collect = 0
        self.last_phase_ns: dict[str, int] = {}  # phase -> ns of the last collection
        self.last_events: list[dict] = []  # the phase events of the last collection, as logged
        self.collections = 0
        self._closed = False
        self._auto = compactor == "auto"
        self._compactor = self._choose_compactor(compactor)
        forksafety.track(self)  # os.fork waits for a quiet heap (heap.forksafety)

    # -- set-up -------------------------------------------------------------------
    def _choose_compactor(self, wanted: str) -> str:
        if wanted == "copy":
            return "copy"
        try:
            uffd = self._kernel.userfaultfd(UFFD_FEATURE_MOVE)
            if not uffd.features & UFFD_FEATURE_MOVE:
                uffd.close()
                raise KernelUnsupported(f"the kernel does not offer UFFD_FEATURE_MOVE (features {uffd.features:#x})")
        except (KernelUnsupported, OSError) as exc:
            if wanted == "remap":
                self.close()
                raise KernelUnsupported(f"compactor='remap' needs userfaultfd with UFFDIO_MOVE: {exc}") from exc
            log.warning("compactor_fallback", compactor="copy", reason=str(exc))
            return "copy"
        self._uffd = uffd
        self._from_space = self._kernel.mmap(self._size, align=self._kernel.hpage_size)
        return "remap"

    # -- properties -------------------------------------------------------------------
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
        return self._base

    @property
    def object_model(self) -> ObjectModel:
        return self._model

    def add_root_scanner(self, scanner: RootScanner) -> None:
        with self._lock:
            self._ready()
            self._scanners.append(scanner)

    def remove_root_scanner(self, scanner: RootScanner) -> None:
        with self._lock:
            self._scanners.remove(scanner)

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "Heap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed and not getattr(self, "_base", 0):
                return
            if self._cycle is not None:
                self._cycle.shutdown()
            self._gate.drain(10.0)
            self._closed = True
            with self._release_lock:
                self._owed_release = None
            k = self._kernel
            if self._uffd is not None:
                self._uffd.close()
                self._uffd = None
            for addr, length in ((self._base, self._size), (self._from_space, self._size)):
                if addr:
                    k.munmap(addr, length)
            self._base = self._from_space = 0
            self._pending = None
            self._addr_index = self._work = None  # their memory goes with them
            if self._owns_kernel and hasattr(k, "close"):
                k.close()

    def _ready(self) -> None:
        """Entry check of every operation: open, handles reaped, no install pending."""
        if self._closed:
            raise HeapClosed("the heap is closed")
        if self._broken is not None:
            self._refuse_broken()
        handles = self._handles
        if handles._dropped or handles._dropped_blocks:
            handles.reap()
        if self._cycle is not None:
            self._cycle.on_heap_operation()
        if self._pending is not None:
            self._install_pending(InstallCounters())
            self._uffd.unregister(self._base, self._size)
            self._release_from_space()

    def _mark_broken(self, exc: HeapCorrupted) -> None:
        """An install found a broken invariant (a to-space page filled from
        outside, ...): from now on every operation refuses with HeapCorrupted
        rather than hand out or keep bytes that may not be an object's.
        Only close() still works."""
        if self._broken is None:
            self._broken = exc
            log.error("heap_corrupted", invariant=exc.invariant, error=str(exc))

    def _refuse_broken(self) -> None:
        b = self._broken
        raise HeapCorrupted(b.invariant, f"{str(b).split(': ', 1)[-1]} (found earlier: the heap refuses every "
                            "operation but close())") from b

    # -- allocation -------------------------------------------------------------------
    def alloc(self, nbytes: int, nrefs: int = 0) -> Ref:
        """A new object with ``nrefs`` None slots and ``nbytes`` zero bytes of payload."""
        nbytes, nrefs, total = self._check_shape(nbytes, nrefs)
        with signals.deferred(), self._lock:  # placed but not recorded, the side tables would disagree
            self._ready()
            addr = self._place(lambda: self._alloc.place(total), total)
            self._kernel.store(addr, self._header(nbytes, nrefs, total >= self._ps))
            row = self._table.append(addr, nbytes, nrefs, total)
            self._addr_index.add(addr, row)
            return Ref._issue(self, self._handles.new(addr))

    def alloc_many(self, nbytes, nrefs) -> RefArray:
        """Many objects at once (arrays, or scalars broadcast): one root block
        holding all of them, headers written in one vectorised store."""
        nbytes = np.asarray(nbytes, dtype=np.int64)
        nrefs = np.asarray(nrefs, dtype=np.int64)
        nbytes, nrefs = np.broadcast_arrays(nbytes, nrefs)
        nbytes, nrefs = nbytes.ravel().copy(), nrefs.ravel().copy()
        if nbytes.size and (nbytes.min() < 0 or nrefs.min() < 0 or nrefs.max() > MAX_NREFS):
            raise ValueError("nbytes and nrefs must be >= 0 (and nrefs < 2**32)")
        if nbytes.size and nbytes.max() > self._size:  # before any sum: int64 totals must not wrap
            raise ValueError(f"an object of {int(nbytes.max())} bytes cannot fit a heap of {self._size} bytes")
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
            self._addr_index.add_many(addrs, self._table.n)
            self._table.extend(addrs, nbytes, nrefs, totals)
            self._work.reserve(self._table.n, self._table.nslots)
            key = id(addrs) ^ time.perf_counter_ns()
            while key in self._handles.blocks:
                key += 1
            self._handles.blocks[key] = np.asarray(addrs, dtype=np.int64)
            return RefArray(self, key)

    def _header(self, nbytes: int, nrefs: int, large: bool) -> bytes:
        if self._scalar_header is not None:
            return self._scalar_header(nbytes, nrefs, large)
        words = self._model.header_words(np.array([nbytes]), np.array([nrefs]), np.array([large]))
        return words.astype(np.uint64).tobytes()

    def _check_shape(self, nbytes, nrefs) -> tuple[int, int, int]:
        """(nbytes, nrefs, total bytes) of an object that can be allocated, or a clear error."""
        nbytes, nrefs = _index(nbytes, "nbytes"), _index(nrefs, "nrefs")
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

    # -- Ref operations (called by Ref) ----------------------------------------------------
    def _own(self, ref) -> int:
        if not isinstance(ref, Ref):
            raise TypeError(f"expected a Ref, not {type(ref).__name__}")
        if ref._heap is not self:
            raise ValueError("this Ref belongs to another heap")
        return self._handles.addr.item(ref._handle)

    def _find(self, addr: int) -> int:
        """Row of the object starting at ``addr``, or -1: one gather in the
        address index (scalar numpy reads, ~10x cheaper than a searchsorted call)."""
        ix, t = self._addr_index, self._table
        granule = (addr - ix.base) >> ix.shift
        if not 0 <= granule < ix.map.size:
            return -1
        row = ix.map.item(granule)
        return row if 0 <= row < t.n and t.start.item(row) == addr else -1

    def _row(self, addr: int) -> int:
        row = self._find(addr)
        if row < 0:
            raise HeapCorrupted("roots", f"a handle holds 0x{addr:x}, which is no object start")
        return row

    def _shape_of_row(self, row: int) -> tuple[int, int, int]:
        """(nbytes, nrefs, payload offset) of the object in ``row``."""
        t = self._table
        nrefs = t.nrefs.item(row)
        return t.nbytes.item(row), nrefs, self._model.payload_offset(nrefs)

    def _locate(self, ref) -> tuple[int, tuple[int, int, int]]:
        """(address, (nbytes, nrefs, payload offset)) of a Ref's object; the
        shape is looked up (and the address checked) once per handle, then
        cached in the handle table (heap.roots.HandleTable.shape)."""
        addr = self._own(ref)
        handles = self._handles
        shape = handles.shape[ref._handle]
        if shape is None:
            shape = handles.shape[ref._handle] = self._shape_of_row(self._row(addr))
        return addr, shape

    def _ref_address(self, ref) -> int:
        with self._lock:
            self._ready()
            return self._own(ref)

    def _ref_info(self, ref) -> tuple[int, int, int]:
        with self._lock:
            self._ready()
            addr, (nbytes, nrefs, _) = self._locate(ref)
            return addr, nbytes, nrefs

    def _slot_address(self, ref, slot) -> int:
        if type(slot) is not int:
            slot = _index(slot, "slot")
        addr, (_, nrefs, _) = self._locate(ref)
        if not 0 <= slot < nrefs:
            raise IndexError(f"slot {slot} out of range: the object has {nrefs} reference slots")
        if self._slot_offset is not None:  # a scalar: one object's slot is arithmetic, not an array call
            return addr + self._slot_offset(nrefs, slot)
        return int(self._model.slot_addresses(np.array([addr]), np.array([nrefs]))[slot])

    # Ref accesses touch memory outside the heap lock, inside the access gate
    # (heap.concurrent): during a concurrent cycle they may fault, and other
    # mutators go on meanwhile; a pause waits for them to leave the gate.
    def _ref_set(self, ref, slot, target) -> None:
        with self._lock:
            self._ready()
            where = self._slot_address(ref, slot)
            value = 0 if target is None else self._own(target)
            self._gate.enter()
        try:
            self._kernel.store(where, value.to_bytes(8, _BYTEORDER))
        finally:
            self._gate.leave()
        if self._broken is not None:  # found while this access waited on its fault
            self._refuse_broken()

    def _ref_get(self, ref, slot):
        while True:
            with self._lock:
                self._ready()
                where = self._slot_address(ref, slot)
                epoch = self.collections
                self._gate.enter()
            try:
                value = int.from_bytes(self._kernel.load(where, 8), _BYTEORDER)
            finally:
                self._gate.leave()
            if self._broken is not None:  # the bytes loaded may not be the object's
                self._refuse_broken()
            if value == 0:
                return None
            with self._lock:
                if self._closed:  # closed by another thread since the load
                    raise HeapClosed("the heap is closed")
                if self.collections != epoch:
                    continue  # a collection moved the target since the load: load again
                return self._ref_target(ref, slot, value)

    def _ref_target(self, ref, slot, value: int):
        row = self._find(value)
        if row < 0:
            raise HeapCorrupted("reference targets", f"slot {slot} of 0x{self._own(ref):x} holds 0x{value:x}, "
                                "which is no object start")
        return Ref._issue(self, self._handles.new(value, self._shape_of_row(row)))

    def _payload_range(self, ref, length, offset) -> int:
        if type(length) is not int:
            length = _index(length, "length")
        if type(offset) is not int:
            offset = _index(offset, "offset")
        addr, (nbytes, _, payload) = self._locate(ref)
        if offset < 0 or length < 0 or offset + length > nbytes:
            raise ValueError(f"bytes [{offset}, {offset + length}) are outside the object's {nbytes}-byte payload")
        return addr + payload + offset

    def _ref_read(self, ref, length, offset) -> bytes:
        with self._lock:
            self._ready()
            where = self._payload_range(ref, length, offset)
            if not length:
                return b""
            self._gate.enter()
        try:
            data = self._kernel.load(where, length)
        finally:
            self._gate.leave()
        if self._broken is not None:  # the bytes loaded may not be the object's
            self._refuse_broken()
        return data

    def _ref_write(self, ref, data, offset) -> None:
        try:
            data = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
        with self._lock:
            self._ready()
            where = self._payload_range(ref, len(data), offset)
            if not len(data):
                return
            self._gate.enter()
        try:
            self._kernel.store(where, data)
        finally:
            self._gate.leave()
        if self._broken is not None:
            self._refuse_broken()

    # -- RefArray operations ----------------------------------------------------------------
    def _block(self, arr: RefArray) -> np.ndarray:
        if arr._heap is not self:
            raise ValueError("this RefArray belongs to another heap")
        with self._lock:
            self._ready()
            return self._handles.blocks[arr._key]

    def _block_ref(self, arr: RefArray, i) -> Ref:
        i = _index(i, "index")
        with self._lock:
            block = self._block(arr)
            if not -block.size <= i < block.size:
                raise IndexError(f"index {i} out of range for {block.size} objects")
            return Ref._issue(self, self._handles.new(int(block[i])))

    def _block_set_refs(self, arr: RefArray, slot, sources, targets: RefArray, target_index) -> None:
        slot = _index(slot, "slot")
        with self._lock:
            block = self._block(arr)
            tblock = self._block(targets)
            sources = np.asarray(sources, dtype=np.int64)
            tidx = np.asarray(target_index, dtype=np.int64)
            if sources.shape != tidx.shape:
                raise ValueError("sources and target_index must have the same shape")
            if sources.size == 0:
                return
            if sources.min() < 0 or sources.max() >= block.size or tidx.max() >= tblock.size or tidx.min() < -1:
                raise IndexError("an index is out of range")
            starts = block[sources]
            nrefs = self._table.nrefs[rows_of(self._table.start, starts, "roots")]
            if slot < 0 or (nrefs <= slot).any():
                raise IndexError(f"slot {slot} out of range for some of the objects")
            every = self._model.slot_addresses(starts, nrefs)
            where = every[np.cumsum(nrefs) - nrefs + slot]
            values = np.where(tidx >= 0, tblock[np.maximum(tidx, 0)], 0)
            self._kernel.store_words(where.astype(np.uint64), values.astype(np.uint64))

    # -- collection ----------------------------------------------------------------------
    def collect(self, concurrent: bool = False) -> GCStats:
        """Compact the heap, stop-the-world; returns what it did.

        The pause (``pause_ns``) ends when every live page is installed and
        the heap lock is dropped; releasing the from-space (remap) happens
        after that, outside the lock, and ``total_ns`` includes it.
        """
        with signals.deferred():  # SIGINT/SIGTERM reach the caller once the heap is consistent
            if concurrent:
                return collect_concurrent(self)
            with self._lock:
                self._ready()
                stats, finish = self._collect_pause()
            finish()
            return stats

    def _collect_locked(self) -> GCStats:
        """A whole collection while holding the lock (alloc's own collections)."""
        with signals.deferred():
            stats, finish = self._collect_pause()
            finish()
            return stats

    def _collect_pause(self):
        settle_cycle(self)  # a concurrent cycle ends and no mutator access is in flight
        self._settle_release()
        stats = GCStats(rss_before=self._rss())
        t0 = time.perf_counter_ns()
        clock = PhaseClock(self._compactor)
        if self._compactor == "remap":
            try:
                self._collect_remap(stats, clock)
            except RemapRefused as exc:
                if not self._auto:
                    raise exc.error
                # nothing was changed yet: compact by copying, now and from now on
                log.warning("compactor_fallback", compactor="copy", reason=f"registering the arena failed: {exc.error}")
                self._compactor = clock.compactor = "copy"
                self._collect_copy(stats, clock)
        else:
            self._collect_copy(stats, clock)
        stats.pause_ns = time.perf_counter_ns() - t0
        self._since_collect = 0
        self.collections += 1
        token = self._owed_release = object() if self._compactor == "remap" else None

        def finish() -> None:
            if token is not None:
                with self._release_lock:
                    if self._owed_release is token:
                        with clock.phase("release") as ev:
                            ev.update(**self._release_from_space())
                        self._owed_release = None
            stats.total_ns = time.perf_counter_ns() - t0
            with self._release_lock:  # close() takes it before unmapping: the heap is still there
                stats.rss_after = 0 if self._closed else self._rss()
            self.last_phase_ns = dict(clock.ns)
            self.last_events = list(clock.events)
            log.info("gc_done", compactor=self._compactor, **stats.as_dict())

        return stats, finish

    def _settle_release(self) -> None:
        """Release the last from-space now if the collecting thread has not yet."""
        with self._release_lock:
            if self._owed_release is not None:
                self._release_from_space()
                self._owed_release = None

    def _roots(self) -> np.ndarray:
        parts = [self._handles.roots()]
        parts.extend(np.asarray(s.scan_roots(), dtype=np.int64) for s in self._scanners)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _mark(self, stats: GCStats, clock: PhaseClock):
        t = self._table
        old = {c: t.column(c) for c in ObjectTable.COLUMNS}  # views: valid until _commit_tables rewrites them
        with clock.phase("mark") as ev:
            marking = mark(self._kernel, self._model, self._addr_index, self._work, old["start"], old["nrefs"],
                           old["slot"], self._roots())
            live = marking.live
            stats.live_objects = int(live.sum())
            stats.live_bytes = int(old["total"][live].sum())
            stats.freed_objects = t.n - stats.live_objects
            ev.update(objects=t.n, live=stats.live_objects, levels=marking.levels, slots=marking.slots_read)
        return old, marking

    def _forward_roots(self, old_starts: np.ndarray, new_by_row: np.ndarray) -> None:
        def forward(addrs):
            addrs = np.asarray(addrs, dtype=np.int64)
            out = np.zeros(addrs.shape, dtype=np.int64)
            held = addrs != 0
            out[held] = new_by_row[self._addr_index.rows(old_starts, addrs[held], "root")]
            return out

        self._handles.forward(forward)
        for scanner in self._scanners:
            scanner.update_roots(forward)

    def _commit_tables(self, old, plan: Plan, top: int) -> None:
        """The new layout becomes the heap's; ``old`` is stale afterwards."""
        rows = plan.live_rows
        nbytes, nrefs, totals = old["nbytes"][rows], old["nrefs"][rows], old["total"][rows]  # copies first
        self._table.replace(plan.new_starts, nbytes, nrefs, totals)
        self._addr_index.add_many(plan.new_starts, 0)
        self._alloc.reset(plan.new_starts, totals, top, plan.last_object_end)

    def _collect_remap(self, stats: GCStats, clock: PhaseClock) -> None:
        k, uffd, ps = self._kernel, self._uffd, self._ps
        base, size, fs = self._base, self._size, self._from_space
        old, marking = self._mark(stats, clock)
        plan, new_by_row = self._plan_remap(old, marking, clock)
        with clock.phase("flip") as ev:
            self._flip(register_first=True)
            ev.update(bytes=self._alloc.used_pages * ps)
        with clock.phase("fixup") as ev:
            try:
                stats.bytes_copied += evacuate(k, plan, old["total"], fs)
            except OSError:
                self._unflip()
                raise
            rows = plan.live_rows
            locations = fs + (old["start"][rows] - base)
            locations[plan.evacuated] = fs + plan.evac_to
            if plan.last_object_end:  # bump allocation resumes there: the rest of its page must read zero
                end = int(locations[-1] + old["total"][rows[-1]])
                k.store(end, bytes(round_up(end - fs, ps) + fs - end))
            slots = self._model.slot_addresses(locations, old["nrefs"][rows])
            values = slot_values(plan, marking, old["nrefs"], new_by_row)
            k.store_words(slots.view(np.uint64), values.view(np.uint64))
            t_roots = time.perf_counter_ns()
            self._forward_roots(old["start"], new_by_row)
            self._commit_tables(old, plan, base + plan.end_pages * ps)
            ev.update(slots=int(slots.size), evacuated_bytes=stats.bytes_copied,
                      roots_ns=time.perf_counter_ns() - t_roots)
        self._pending = PageInstaller(k, uffd, plan, base, fs)
        counters = InstallCounters()
        with clock.phase("install") as ev:
            try:
                self._install_pending(counters)
            finally:
                self._count(stats, counters)
                ev.update(runs=int(self._pending_runs), pages=counters.pages_moved, ioctls=counters.ioctls,
                          ebusy=counters.ebusy_fallbacks)
        self._uffd.unregister(base, size)  # fresh pages fault normally again

    def _count(self, stats: GCStats, c: InstallCounters) -> None:
        stats.pages_moved += c.pages_moved
        stats.bytes_moved_zero_copy += c.pages_moved * self._ps
        stats.bytes_copied += c.bytes_copied
        stats.eagain_retries += c.eagain_retries
        stats.partial_moves += c.partial_moves
        stats.eexist_races += c.eexist_races
        stats.ebusy_fallbacks += c.ebusy_fallbacks

    _pending_runs = 0

    def _install_pending(self, counters: InstallCounters) -> None:
        inst = self._pending
        self._pending_runs = inst.run_count.size
        try:
            inst.install(counters)
        except HeapCorrupted as exc:
            self._mark_broken(exc)
            raise
        except InstallInterrupted as exc:
            err = exc.error
            raise CompactionAborted(err.errno or 0, f"installing to-space pages failed ({err}); the rest stays "
                                    "pending and is installed by the next heap operation") from err
        self._pending = None

    def _release_from_space(self) -> dict:
        """After an install: drop what the from-space still holds (the dead pages)."""
        self._kernel.madvise(self._from_space, self._size, MADV_DONTNEED)
        return dict(from_space_bytes=self._size)

    def _plan_remap(self, old, marking, clock: PhaseClock):
        """The remap plan (both compactors that move pages) and every old row's new address."""
        with clock.phase("plan") as ev:
            plan = plan_remap(old["start"], old["total"], marking.live, self._base, self._ps,
                              self._alloc.hpage_pages, self._alloc.used_pages, self._dense)
            new_by_row = np.zeros(old["start"].size, dtype=np.int64)
            new_by_row[plan.live_rows] = plan.new_starts
            ev.update(whole_pages=plan.whole_pages, rebuilt_pages=plan.rebuilt_pages,
                      evacuated=int(plan.evacuated.sum()))
        return plan, new_by_row

    def _flip(self, *, register_first: bool) -> None:
        """Move every arena page to the from-space with one mremap(MREMAP_DONTUNMAP):
        the arena stays mapped, empty and registered with the userfaultfd, so
        a touch of a page not yet installed is a userfault.

        The order is a trade measured on Linux 6.18 (1 GiB of 4 KiB pages):
        registering first makes mremap move the pages one PTE at a time
        (2-8 ms) but the install then reuses the arena's page tables;
        registering after moves whole page tables (0.1 ms) and the install
        rebuilds them. A stop-the-world cycle wants the smaller sum, a
        concurrent one the shorter pause. Mutators cannot touch the arena in
        between: the pause holds the heap lock and the access gate.

        Raises RemapRefused, with the pages back in place, when registering
        is refused.
        """
        k, uffd, base, size = self._kernel, self._uffd, self._base, self._size
        if register_first:
            try:
                uffd.register(base, size, UFFDIO_REGISTER_MODE_MISSING)
            except OSError as exc:
                raise RemapRefused(exc) from exc
            try:
                k.mremap(base, size, self._from_space, dontunmap=True)
            except OSError:
                uffd.unregister(base, size)
                raise
            return
        k.mremap(base, size, self._from_space, dontunmap=True)
        try:
            uffd.register(base, size, UFFDIO_REGISTER_MODE_MISSING)
        except OSError as exc:
            self._unflip()
            raise RemapRefused(exc) from exc

    def _unflip(self) -> None:
        """Undo a flip whose plan could not be carried out: the pages go back."""
        k = self._kernel
        k.mremap(self._from_space, self._size, self._base)
        try:
            self._uffd.unregister(self._base, self._size)
        except OSError:
            pass
        self._from_space = k.mmap(self._size, align=k.hpage_size)

    def _collect_copy(self, stats: GCStats, clock: PhaseClock) -> None:
        k, ps, base = self._kernel, self._ps, self._base
        old_top = self._alloc.top
        old, marking = self._mark(stats, clock)
        with clock.phase("plan") as ev:
            plan = plan_slide(old["start"], old["total"], marking.live, base, ps, self._alloc.hpage_pages)
            new_by_row = np.zeros(old["start"].size, dtype=np.int64)
            new_by_row[plan.live_rows] = plan.new_starts
            ev.update(pages=plan.end_pages)
        rows = plan.live_rows
        with clock.phase("install") as ev:
            srcs = old["start"][rows]
            moving = srcs != plan.new_starts
            lengths = old["total"][rows][moving]
            k.copy_ranges(plan.new_starts[moving].astype(np.uint64), srcs[moving].astype(np.uint64),
                          lengths.astype(np.uint64))
            stats.bytes_copied += int(lengths.sum())
            ev.update(objects_moved=int(moving.sum()), bytes=int(lengths.sum()))
        with clock.phase("fixup") as ev:
            slots = self._model.slot_addresses(plan.new_starts, old["nrefs"][rows])
            values = slot_values(plan, marking, old["nrefs"], new_by_row)
            k.store_words(slots.astype(np.uint64), values.astype(np.uint64))
            self._forward_roots(old["start"], new_by_row)
            new_top = base + plan.end_pages * ps
            self._commit_tables(old, plan, new_top)
            ev.update(slots=int(slots.size))
        with clock.phase("release") as ev:
            if plan.last_object_end:
                tail = round_up(plan.last_object_end - base, ps) + base - plan.last_object_end
                k.store(plan.last_object_end, bytes(tail))
            # with THP, the huge page under the old top may reach past it
            unit = self._alloc.hpage_pages * ps if self._thp else ps
            old_end = min(base + round_up(old_top - base, unit), self._alloc.end)
            if old_end > new_top:
                k.madvise(new_top, old_end - new_top, MADV_DONTNEED)
            ev.update(released_bytes=max(old_end - new_top, 0))

    # -- inspection ----------------------------------------------------------------------
    def _rss(self) -> int:
        """Resident bytes of the heap's mappings. Only the arena below its top
        (rounded up to a huge page, which may reach past it) can hold pages,
        and the from-space only while a collection is under way (verify()
        checks both), so only those ranges are read: reading the page tables
        of a whole large arena costs milliseconds."""
        k, a = self._kernel, self._alloc
        unit = a.hpage_pages * a.page_size if a.hpage_pages else a.page_size
        used = min(round_up(a.top - a.base, unit), a.size)
        rss = k.resident_bytes(a.base, used) if used else 0
        if self._from_space and (self._pending is not None or self._owed_release is not None):
            rss += k.resident_bytes(self._from_space, self._size)
        return rss

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
            settle_cycle(self)
            self._settle_release()
            from .verify import verify_heap

            verify_heap(self)
