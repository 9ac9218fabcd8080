"""Concurrent compaction: a short pause, then pages installed while mutators run.

``collect_concurrent(heap)`` (``Heap.collect(concurrent=True)``):

* **Pause** (heap lock held, no mutator inside a memory access: the
  ``AccessGate`` is drained): mark, plan, flip (register the arena with the
  userfaultfd, ``mremap(MREMAP_DONTUNMAP)`` it whole to the from-space: the
  arena stays mapped, empty and registered), forward the roots and commit the
  side tables, and precompute the *install program* (``InstallProgram``):
  every slot fix-up and every evacuation copy as sorted numpy arrays keyed by
  to-space page, so the work of any page range is a contiguous slice found by
  ``np.searchsorted``. No copy, no fix-up store and no MOVE happens here.
* **Install** (after the pause; the threads start once the heap lock is
  dropped): a compactor thread walks the to-space in chunks
  (``CHUNK_PAGES``). For a chunk it claims the pages still unprocessed
  (per-page state unprocessed -> processing -> installed, one shared int8
  array guarded by a small condition that no mutator ever holds while
  touching heap memory), builds them where mutators cannot see them (slot
  fix-ups in place in the from-space for pages that move whole; rebuilt
  pages assembled in a scratch mapping from the untouched from-space
  originals, so pages can be built in any order), then MOVEs all its runs in
  one batched call; a run the kernel refuses goes through
  ``install_page_range`` (the stop-the-world compactor's routine), which
  handles every outcome. An untouched chunk is served from ``ChunkPlan``
  (the walk precomputed on first use): a few calls. When the uffd offers
  ``chunk_walker`` (the Linux backend) the whole walk is instead one C call
  without the GIL, reading the install program directly: it claims pages by
  compare-and-swap (``heap.native.PageClaims``), goes around pages a fault
  handler holds, and hands a refused MOVE back to Python. A
  mutator touching a page not yet installed takes a userfault; the
  fault-handler thread (``heap.faults``) builds and installs that page first
  the same way and wakes it.
* **Finish**: every page installed -> unregister the arena (wakes anything
  still blocked, which then faults normally), stop the threads, then release
  the from-space (MADV_DONTNEED) outside the heap lock, through the heap's
  owed-release token as the stop-the-world compactor does.

Errors: an install the kernel refuses (ENOMEM, EINTR, EAGAIN that persists)
reverts the chunk's pages not yet installed to *unprocessed* (building is
idempotent: fix-ups store the same values, rebuilt pages are assembled again
from the from-space originals), stops the compactor, and ``collect`` raises
``CompactionAborted`` with the kernel's errno. The handler keeps serving
faults meanwhile, and the next heap operation installs the rest
(``on_heap_operation``) before it runs. Any other exception in a thread is
re-raised to the caller the same way. ``shutdown`` (``Heap.close``) joins
every thread with a timeout and dumps the threads' stacks instead of hanging.

Mutator accesses (``Ref.read/write/get_ref/set_ref``) compute their address
under the heap lock, enter the ``AccessGate``, drop the lock and touch memory
through the kernel's compiled accessors (on Linux, cffi calls that release
the GIL, so a Python fault handler can run while the mutator is blocked in
the fault: ARCHITECTURE.md, "The hazard ... the GIL"). A pause drains the
gate under the heap lock; the compactor and the handler never take it.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import structlog

from .errors import CompactionAborted, HeapCorrupted, RemapRefused
from .install import InstallCounters, InstallInterrupted, install_page_range, slot_values
from .kernel import (MADV_DONTNEED, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UffdError,
                     move_ranges)
from .native import PageClaims
from .stats import GCStats, PhaseClock

log = structlog.get_logger("remapgc.heap")

UNPROCESSED, PROCESSING, INSTALLED = 0, 1, 2
# Pages the compactor claims, builds and MOVEs per step: batches of >= 64
# pages come within ~30 % of the whole-range MOVE floor (kernel_floors.md),
# and a mutator faulting on a page of the chunk in flight waits for one chunk.
CHUNK_PAGES = 1024
JOIN_TIMEOUT_S = 10.0


@dataclass
class ConcurrentGCStats(GCStats):
    """``GCStats`` of a concurrent collection, with what only it has."""

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


class AccessGate:
    """Mutator memory accesses in flight, so that a pause starts only when none is.

    ``enter`` is called with the heap lock held (so no pause can be waiting
    for the gate at that moment), ``leave`` without it; ``drain`` is called by
    the pause with the heap lock held: no new access can enter, and the ones
    in flight finish without needing the heap lock (the fault handler serves
    their faults).
    """

    def __init__(self) -> None:
        # enter/leave take the bare lock (a C-level context manager: the
        # Condition's Python-level __enter__ doubled their cost) and notify
        # only when a drain waits
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._draining = 0

    def enter(self) -> None:
        with self._lock:
            self._inflight += 1

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._draining and not self._inflight:
                self._cond.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def drain(self, timeout: float | None = None) -> bool:
        with self._cond:
            self._draining += 1
            try:
                return self._cond.wait_for(lambda: not self._inflight, timeout)
            finally:
                self._draining -= 1


@dataclass
class InstallProgram:
    """What installing any to-space page takes, precomputed in the pause.

    Pages are arena page indices ``[0, npages)``. Pieces (from the plan) give
    each page's source; slots and copy segments are sorted by to-space page.
    """

    npages: int
    piece_dst: np.ndarray
    piece_src: np.ndarray
    piece_rebuilt: np.ndarray
    slot_page: np.ndarray  # to-space page of every live slot (ascending)
    slot_off: np.ndarray  # its offset in that page
    slot_val: np.ndarray  # the value it must hold (uint64)
    seg_page: np.ndarray  # evacuation copies, cut at page boundaries: to-space page (ascending)
    seg_off: np.ndarray  # offset in that page
    seg_src: np.ndarray  # source address in the from-space (the untouched original)
    seg_len: np.ndarray

    def sources(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(from-space page, rebuilt?) of each to-space page."""
        piece = np.searchsorted(self.piece_dst, pages, side="right") - 1
        return self.piece_src[piece] + pages - self.piece_dst[piece], self.piece_rebuilt[piece]

    def in_plan(self, page: int) -> bool:
        return 0 <= page < self.npages


def make_program(plan, model, old, marking, new_by_row, base: int, from_space: int, ps: int) -> InstallProgram:
    """The install program of a remap plan (vectorised: a few passes over slots and evacuees)."""
    rows = plan.live_rows
    slot_rel = model.slot_addresses(plan.new_starts, old["nrefs"][rows]) - base
    values = slot_values(plan, marking, old["nrefs"], new_by_row)
    ev = plan.evacuated
    dst = plan.new_starts[ev] - base
    src = from_space + plan.evac_from
    length = old["total"][rows[ev]]
    first = dst // ps
    count = (dst + length - 1) // ps - first + 1
    if count.size and count.max() > 1:  # an evacuee spanning pages (THP units): cut it at page boundaries
        rank = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        page = np.repeat(first, count) + rank
        d, s, n = np.repeat(dst, count), np.repeat(src, count), np.repeat(length, count)
        lo = np.maximum(d, page * ps)
        hi = np.minimum(d + n, (page + 1) * ps)
        seg = (page, lo - page * ps, s + (lo - d), hi - lo)
    else:
        seg = (first, dst - first * ps, src, length)
    return InstallProgram(
        npages=int(plan.end_pages),
        piece_dst=plan.piece_dst.copy(), piece_src=plan.piece_src.copy(), piece_rebuilt=plan.piece_rebuilt.copy(),
        slot_page=slot_rel // ps, slot_off=slot_rel % ps, slot_val=np.asarray(values).view(np.uint64),
        seg_page=seg[0], seg_off=seg[1], seg_src=seg[2], seg_len=seg[3])


class Claim:
    """Pages of ``[lo, lo + held.size)`` one installer claimed (``held``).

    Only the claimer settles them, each once, and settling drops the page
    from ``held``; giving the claim up (``PageStates.release``) returns what
    is still held. A page settled back to unprocessed can be claimed by
    another installer at once, so a claimer must never act on a page it no
    longer holds: returning such a page stole the fault handler's claim on
    it, and both then installed it (the threaded soak's HeapCorrupted).
    """

    __slots__ = ("lo", "held")

    def __init__(self, lo: int, held: np.ndarray):
        self.lo = lo
        self.held = held


class PageStates:
    """unprocessed -> processing -> installed, per to-space page; exactly one claimer per page."""

    def __init__(self, npages: int):
        # one buffer, two views: numpy for the compactor's ranges, the bytearray
        # for the fault handler's single pages (an index, not a numpy scalar)
        self._bytes = bytearray(npages)
        self.state = np.frombuffer(self._bytes, dtype=np.int8)
        self.claims = PageClaims(self.state)  # compare-and-swap when compiled
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._waiting = 0  # wait_all callers: only then does a settle notify
        self.installed = 0
        # pages a native compactor (uffd.install_chunks) installed: it adds here without the GIL
        self.installed_natively = np.zeros(1, dtype=np.int64)

    def claim_range(self, lo: int, hi: int) -> Claim:
        """Claim every unprocessed page of [lo, hi)."""
        with self.lock:
            return Claim(lo, self.claims.claim_range(lo, hi))

    def claim(self, page: int) -> int:
        """Claim one page: its state before (UNPROCESSED means it is now ours)."""
        with self.lock:
            return self.claims.claim_page(page)

    def state_of(self, page: int) -> int:
        return self._bytes[page]

    def settle(self, claim: Claim, rel: np.ndarray, installed: np.ndarray) -> None:
        """Held pages ``claim.lo + rel`` become installed, or unprocessed again (the install failed)."""
        with self.lock:
            if not claim.held[rel].all():
                raise AssertionError(f"settling pages not held by this claim (from page {claim.lo})")
            claim.held[rel] = False
            self.state[rel + claim.lo] = np.where(installed, INSTALLED, UNPROCESSED)
            self.installed += int(np.count_nonzero(installed))
            if self._waiting:
                self.cond.notify_all()

    def settle_one(self, page: int, installed: bool) -> None:
        """A page taken with ``claim`` becomes installed, or unprocessed again."""
        with self.lock:
            self._bytes[page] = INSTALLED if installed else UNPROCESSED
            self.installed += installed
            if self._waiting:
                self.cond.notify_all()

    def release(self, claim: Claim) -> None:
        """Give up a claim: the pages it still holds go back to unprocessed."""
        with self.lock:
            held = np.flatnonzero(claim.held)
            if held.size:
                claim.held[held] = False
                self.state[held + claim.lo] = UNPROCESSED
                if self._waiting:
                    self.cond.notify_all()

    def all_installed(self) -> bool:
        return self.installed + int(self.installed_natively[0]) == self.state.size

    def notify(self) -> None:
        """After pages were settled outside these methods (by a native compactor)."""
        with self.lock:
            if self._waiting:
                self.cond.notify_all()

    def wait_all(self, timeout: float) -> bool:
        with self.cond:
            self._waiting += 1
            try:
                return self.cond.wait_for(self.all_installed, timeout)
            finally:
                self._waiting -= 1


def moved_unreported(kernel, dst: int, src: int) -> bool:
    """After a refused MOVE: did this page go in anyway? (Linux checks for a
    fatal signal after a step and then reports EINTR without counting it.)"""
    return kernel.page_info(dst).state != "none" and kernel.page_info(src).state == "none"


class PageBuilder:
    """Builds to-space pages where mutators cannot see them and installs them."""

    def __init__(self, kernel, uffd, program: InstallProgram, states: PageStates, arena: int, from_space: int):
        self.kernel = kernel
        self.uffd = uffd
        self.program = program
        self.states = states
        self.arena = arena
        self.from_space = from_space
        self.ps = kernel.page_size

    def build(self, lo: int, mine: np.ndarray, scratch: int, counters: InstallCounters) -> tuple[np.ndarray, np.ndarray]:
        """Build the claimed pages (``mine``) of [lo, lo + mine.size): returns
        each page's source address (in the from-space, or the scratch slot of
        a rebuilt page) and whether it is rebuilt. The scratch must be empty
        or zero (a rebuilt page's gaps read zero)."""
        k, p, ps = self.kernel, self.program, self.ps
        hi = lo + mine.size
        src, rebuilt = self.sources(lo, hi, scratch)
        if (rebuilt & mine).any():
            s0, s1 = np.searchsorted(p.seg_page, (lo, hi))
            rel = p.seg_page[s0:s1] - lo
            keep = mine[rel]
            if keep.any():
                lengths = p.seg_len[s0:s1][keep]
                k.copy_ranges((scratch + rel[keep] * ps + p.seg_off[s0:s1][keep]).astype(np.uint64),
                              p.seg_src[s0:s1][keep].astype(np.uint64), lengths.astype(np.uint64))
                counters.bytes_copied += int(lengths.sum())
        t0, t1 = np.searchsorted(p.slot_page, (lo, hi))
        if t1 > t0:
            rel = p.slot_page[t0:t1] - lo
            keep = mine[rel]
            if keep.any():
                where = src[rel[keep]] + p.slot_off[t0:t1][keep]
                k.store_words(where.astype(np.uint64), p.slot_val[t0:t1][keep])
        return src, rebuilt

    def sources(self, lo: int, hi: int, scratch: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each page of [lo, hi) is built: its from-space page, or for a
        rebuilt page its slot in the scratch; and whether it is rebuilt."""
        pages = np.arange(lo, hi, dtype=np.int64)
        src_page, rebuilt = self.program.sources(pages)
        return np.where(rebuilt, scratch + (pages - lo) * self.ps, self.from_space + src_page * self.ps), rebuilt

    def install_chunk(self, claim: Claim, scratch: int, counters: InstallCounters) -> None:
        """Build and MOVE in the claimed pages of a chunk, run by run; settles
        them (a page refused goes back to unprocessed). If building fails the
        claim is left whole, for the caller to release."""
        ps, lo, mine = self.ps, claim.lo, claim.held
        n = mine.size
        if not mine.any():
            return
        if scratch:
            self.kernel.madvise(scratch, n * ps, MADV_DONTNEED)  # rebuilt pages start from zero
        src, _ = self.build(lo, mine, scratch, counters)
        self.move_claimed(claim, src, counters)

    def move_claimed(self, claim: Claim, src: np.ndarray, counters: InstallCounters,
                     refused: UffdError | None = None) -> None:
        """MOVE the built pages the claim holds, run by run (runs: held pages
        contiguous at dst and at ``src``, each page's source); settles them.
        ``refused``: the kernel already refused the first run so."""
        ps, lo, mine = self.ps, claim.lo, claim.held
        idx = np.flatnonzero(mine)
        brk = np.ones(idx.size, dtype=bool)
        brk[1:] = (np.diff(idx) != 1) | (np.diff(src[idx]) != ps)
        firsts = np.flatnonzero(brk)
        self.move_runs(claim, idx, src[idx], firsts, (self.arena + (lo + idx[firsts]) * ps).astype(np.uint64),
                       src[idx[firsts]].astype(np.uint64),
                       (np.diff(np.append(firsts, idx.size)) * ps).astype(np.uint64), counters, refused)

    def move_runs(self, claim: Claim, idx: np.ndarray, src: np.ndarray, firsts: np.ndarray, dsts: np.ndarray,
                  srcs: np.ndarray, lengths: np.ndarray, counters: InstallCounters,
                  refused: UffdError | None = None) -> None:
        """MOVE the runs of built, claimed pages (``idx``: their offsets from
        ``claim.lo``, ``src``: each one's source address; run k starts at
        ``idx[firsts[k]]``); settles them. ``refused``: the kernel already
        refused the first run so (a native walk's MOVE)."""
        ps, lo = self.ps, claim.lo
        ends = np.append(firsts[1:], idx.size)
        installed = np.zeros(idx.size, dtype=bool)
        k0 = 0
        try:
            while k0 < firsts.size:  # all runs in one batched call (one GIL release) while the kernel says yes
                if refused is not None:  # handed over with the first run refused: no batched call
                    f = k0
                else:
                    try:
                        move_ranges(self.uffd, dsts[k0:], srcs[k0:], lengths[k0:], UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)
                    except UffdError as exc:
                        f = k0 + exc.index
                        refused = exc
                    else:
                        f = firsts.size
                counters.ioctls += f - k0
                counters.pages_moved += int(lengths[k0:f].sum()) // ps
                installed[firsts[k0]:firsts[f] if f < firsts.size else idx.size] = True
                if refused is None:
                    break
                a, b = int(firsts[f]), int(ends[f])
                races = counters.eexist_races
                try:  # the refused run: every outcome handled by the shared routine
                    install_page_range(self.kernel, self.uffd, int(dsts[f]), int(srcs[f]), int(lengths[f]),
                                       counters, refused=refused)
                except InstallInterrupted as exc:
                    installed[a:a + exc.done // ps] = True
                    for i in range(a + exc.done // ps, b):  # moved but not reported (EINTR after a step)?
                        installed[i] = moved_unreported(self.kernel, self.arena + (lo + int(idx[i])) * ps,
                                                        int(src[i]))
                    raise
                installed[a:b] = True
                if counters.eexist_races != races:  # a page someone else filled: its faulter needs a wake
                    self.uffd.wake(int(dsts[f]), int(lengths[f]))
                k0, refused = f + 1, None
        finally:
            self.states.settle(claim, idx, installed)


class ChunkPlan:
    """The compactor's walk, precomputed once in its thread (after the pause):
    for each chunk, slices of its runs, slot stores and copies, so a chunk
    whose pages are all still unprocessed (the common case) costs a few calls
    and holds the GIL briefly."""

    def __init__(self, program: InstallProgram, arena: int, from_space: int, scratch: int, chunk: int, ps: int):
        n = program.npages
        pages = np.arange(n, dtype=np.int64)
        starts = np.arange(0, n, chunk, dtype=np.int64)
        src_page, rebuilt = program.sources(pages)
        self.src = np.where(rebuilt, scratch + (pages % chunk) * ps, from_space + src_page * ps)
        self.rebuilt = np.add.reduceat(rebuilt.astype(np.int64), starts) > 0 if n else np.zeros(0, dtype=bool)
        brk = np.ones(n, dtype=bool)
        brk[1:] = np.diff(self.src) != ps
        brk[starts] = True
        first = np.flatnonzero(brk)
        self.run_first = first
        self.run_dst = (arena + first * ps).astype(np.uint64)
        self.run_src = self.src[first].astype(np.uint64)
        self.run_len = (np.diff(np.append(first, n)) * ps).astype(np.uint64)
        self.run_at = np.append(np.searchsorted(first, starts), first.size)
        p = program
        self.slot_where = (self.src[p.slot_page] + p.slot_off).astype(np.uint64)
        self.slot_at = np.append(np.searchsorted(p.slot_page, starts), p.slot_page.size)
        self.seg_dst = (scratch + (p.seg_page % chunk) * ps + p.seg_off).astype(np.uint64)
        self.seg_src = p.seg_src.astype(np.uint64)
        self.seg_len = p.seg_len.astype(np.uint64)
        self.seg_at = np.append(np.searchsorted(p.seg_page, starts), p.seg_page.size)


class ConcurrentCycle:
    """One concurrent collection after its pause: the threads and their outcome."""

    def __init__(self, heap, program: InstallProgram, stats: GCStats, clock: PhaseClock, t0: int, *,
                 chunk_pages: int = CHUNK_PAGES, run_compactor: bool = True):
        from .faults import FaultHandler

        k = heap._kernel
        self.heap = heap
        self.kernel = k
        self.uffd = heap._uffd
        self.arena = heap._base
        self.size = heap._size
        self.from_space = heap._from_space
        self.program = program
        self.stats = stats
        self.clock = clock
        self.t0 = t0
        self.chunk_pages = chunk_pages
        self.run_compactor = run_compactor
        self.states = PageStates(program.npages)
        self.builder = PageBuilder(k, self.uffd, program, self.states, self.arena, self.from_space)
        self.scratch = k.mmap(chunk_pages * k.page_size)
        self.counters = InstallCounters()  # the compactor's (and complete()'s)
        self.chunk_plan: ChunkPlan | None = None  # the Python walk's plan, built on its first use
        self._walk = None  # the uffd's native chunk walker (False: none)
        self._native_program = None  # the program as the uffd's native parts read it (False: none)
        self.stop_flag = np.zeros(1, dtype=np.int32)  # self.stop, as the native walk sees it
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.compactor_done = threading.Event()
        self.finished = False  # threads stopped, arena unregistered
        self._finish_lock = threading.Lock()
        self.install_started = 0
        self.handler = FaultHandler(self)
        self.compactor = threading.Thread(target=self._compact, name="remapgc-compactor", daemon=True)

    # -- threads --------------------------------------------------------------------------
    def request_stop(self) -> None:
        """The compactor stops after its current chunk (in Python or in the native walk)."""
        self.stop_flag[0] = 1
        self.stop.set()

    def start(self) -> None:
        with self._finish_lock:
            if self.finished:  # closed before it could start
                self.compactor_done.set()
                return
            self.install_started = time.perf_counter_ns()
            self.handler.start()
            if self.run_compactor:
                self.compactor.start()
            else:
                self.compactor_done.set()

    def _compact(self) -> None:
        try:
            self._install_all(self.scratch, self.counters)
        except BaseException as exc:  # reaches the caller of collect()
            if isinstance(exc, HeapCorrupted):
                self.corrupted(exc)
            self.error = exc
            log.warning("gc_concurrent_compactor_stopped", error=repr(exc))
        finally:
            self.compactor_done.set()

    def corrupted(self, exc: BaseException) -> HeapCorrupted:
        """An installer found a broken invariant (or failed in a way it cannot
        retry): the heap refuses every further operation, the compactor stops,
        and collect() raises it. The fault handler then only lets faulters go."""
        broken = exc if isinstance(exc, HeapCorrupted) else HeapCorrupted(
            "install", f"the fault handler failed: {type(exc).__name__}: {exc}")
        self.heap._mark_broken(broken)
        self.request_stop()
        if self.error is None:
            self.error = broken
        return broken

    def _install_all(self, scratch: int, counters: InstallCounters) -> None:
        """Install every page still unprocessed, chunk by chunk: in C without
        the GIL when the uffd offers a chunk walker (mutators then run freely
        meanwhile; Python only finishes a chunk whose MOVE was refused), else
        here."""
        n, c = self.program.npages, self.chunk_pages
        walk = self._native_walk(scratch)
        ci, nchunks = 0, -(-n // c)
        while ci < nchunks:
            if self.stop.is_set():
                return
            if walk is not None:
                w = walk(ci)
                counters.pages_moved += w.pages
                counters.bytes_copied += w.bytes_copied
                counters.ioctls += w.ioctls
                if w.pages:
                    self.states.notify()
                if w.status in ("done", "stopped"):
                    return
                ci = w.chunk
                if w.status == "refused":
                    self._finish_refused_chunk(ci, w, scratch, counters)
                    ci += 1
                    continue
                raise OSError(w.errno, f"building chunk {ci} faulted: {os.strerror(w.errno)}")  # "faulted"
            self._install_chunk(ci, scratch, counters)
            ci += 1

    def _install_chunk(self, ci: int, scratch: int, counters: InstallCounters) -> None:
        lo = ci * self.chunk_pages
        claim = self.states.claim_range(lo, min(self.program.npages, lo + self.chunk_pages))
        try:
            if claim.held.all():
                self._install_whole_chunk(ci, claim, scratch, counters)
            else:
                self.builder.install_chunk(claim, scratch, counters)
        finally:
            self.states.release(claim)  # whatever failed, no page stays claimed

    def native_program(self):
        """The install program as the uffd's native parts read it, or None (the
        simulator has none; nor without compare-and-swap claims)."""
        if self._native_program is None:
            make = getattr(self.uffd, "native_program", None)
            ok = make is not None and self.states.claims.atomic
            self._native_program = make(self.program, self.arena, self.from_space) if ok else False
        return self._native_program or None

    def _native_walk(self, scratch: int):
        """The uffd's chunk walker over this cycle's program, or None."""
        if self._walk is None:
            program = self.native_program()
            self._walk = False if program is None else self.uffd.chunk_walker(
                program, state=self.states.state, installed=self.states.installed_natively, stop=self.stop_flag,
                chunk=self.chunk_pages, scratch=scratch)
        return self._walk or None

    def _chunks(self, scratch: int) -> "ChunkPlan":
        """The Python walk's plan, built the first time a chunk goes the Python way."""
        if self.chunk_plan is None:
            self.chunk_plan = ChunkPlan(self.program, self.arena, self.from_space, scratch, self.chunk_pages,
                                        self.kernel.page_size)
        return self.chunk_plan

    def _finish_refused_chunk(self, ci: int, w, scratch: int, counters: InstallCounters) -> None:
        """The native walk met a refusal at the run starting at page
        ``w.run_page`` of chunk ``ci``. The pages it claimed before that run
        are in; the rest it claimed (``walk.mine``) are built and still
        claimed, and go through ``move_claimed`` with the kernel's answer
        (not built again: part of the refused run may be in already)."""
        lo = ci * self.chunk_pages
        hi = min(self.program.npages, lo + self.chunk_pages)
        held = self._walk.mine[: hi - lo].astype(bool)
        held[: w.run_page - lo] = False
        claim = Claim(lo, held)
        src, _ = self.builder.sources(lo, hi, scratch)
        dst = self.arena + w.run_page * self.kernel.page_size
        refused = UffdError(w.errno, f"{os.strerror(w.errno)} (UFFDIO_MOVE to 0x{dst:x}, native walk)",
                            moved=max(w.moved, 0))
        try:
            self.builder.move_claimed(claim, src, counters, refused)
        finally:
            self.states.release(claim)

    def _install_whole_chunk(self, ci: int, claim: Claim, scratch: int, counters: InstallCounters) -> None:
        """A chunk nobody touched: build and MOVE it from the chunk plan's slices."""
        k, cp = self.kernel, self._chunks(scratch)
        lo, n = claim.lo, claim.held.size
        if cp.rebuilt[ci]:
            k.madvise(scratch, n * k.page_size, MADV_DONTNEED)  # rebuilt pages start from zero
            s0, s1 = int(cp.seg_at[ci]), int(cp.seg_at[ci + 1])
            if s1 > s0:
                k.copy_ranges(cp.seg_dst[s0:s1], cp.seg_src[s0:s1], cp.seg_len[s0:s1])
                counters.bytes_copied += int(cp.seg_len[s0:s1].sum())
        t0, t1 = int(cp.slot_at[ci]), int(cp.slot_at[ci + 1])
        if t1 > t0:
            k.store_words(cp.slot_where[t0:t1], self.program.slot_val[t0:t1])
        r0, r1 = int(cp.run_at[ci]), int(cp.run_at[ci + 1])
        self.builder.move_runs(claim, np.arange(n), cp.src[lo:lo + n], cp.run_first[r0:r1] - lo, cp.run_dst[r0:r1],
                               cp.run_src[r0:r1], cp.run_len[r0:r1], counters)

    # -- ending ---------------------------------------------------------------------------
    def wait_compactor(self, timeout: float | None = None) -> bool:
        return self.compactor_done.wait(timeout)

    def complete(self) -> None:
        """In the calling thread: install whatever is left, then wait for the
        pages the handler is installing. Raises CompactionAborted if the kernel
        still refuses (everything stays pending)."""
        if not self.wait_compactor(JOIN_TIMEOUT_S):  # two walks would build in the one scratch
            raise CompactionAborted(errno.ETIMEDOUT, f"the compactor thread is still installing after "
                                    f"{JOIN_TIMEOUT_S} s; the rest stays pending")
        try:
            self._install_all(self.scratch, self.counters)
        except InstallInterrupted as exc:
            raise self._aborted(exc) from exc
        except HeapCorrupted as exc:
            self.corrupted(exc)
            raise
        if not self.states.wait_all(JOIN_TIMEOUT_S):
            raise CompactionAborted(errno.ETIMEDOUT, "pages claimed by the fault handler were not installed in "
                                    f"{JOIN_TIMEOUT_S} s; they stay pending")
        self.error = None

    def _aborted(self, exc: BaseException) -> BaseException:
        if isinstance(exc, InstallInterrupted):
            err = exc.error
            self.stats.install_aborts += 1
            return CompactionAborted(err.errno or 0, f"installing to-space pages failed ({err}); the rest stays "
                                     "pending: the fault handler serves faults and the next heap operation "
                                     "installs it")
        return exc

    def raise_error(self) -> None:
        """Called by collect() once the compactor stopped: the error, if any."""
        if self.error is not None:
            err = self._aborted(self.error)
            err.stats = self.stats  # what the cycle did before it stopped
            raise err from self.error

    def finish(self) -> None:
        """Every page is installed: end the cycle. Needs no heap lock: the
        from-space is released outside it (as the stop-the-world compactor
        does), through the heap's owed-release token, so a pause that starts
        meanwhile releases it first and nothing releases a newer from-space."""
        heap = self.heap
        self._end_threads()
        with heap._lock:
            if heap._cycle is not self:
                return  # another thread finished it
            heap._cycle = None
            token = heap._owed_release = object()
        with self.clock.phase("release") as ev:
            with heap._release_lock:
                if heap._owed_release is token:
                    ev.update(**heap._release_from_space())
                    heap._owed_release = None
        self._fill_stats()

    def _end_threads(self) -> None:
        with self._finish_lock:
            if self.finished:
                return
            k = self.kernel
            self.uffd.unregister(self.arena, self.size)  # wakes any late faulter: it now faults normally
            self._stop_threads()
            k.munmap(self.scratch, self.chunk_pages * k.page_size)
            self.handler.release()
            self.finished = True

    def _fill_stats(self) -> None:
        st = self.stats
        for c in (self.counters, self.handler.counters):
            st.pages_moved += c.pages_moved
            st.bytes_moved_zero_copy += c.pages_moved * self.kernel.page_size
            st.bytes_copied += c.bytes_copied
            st.eagain_retries += c.eagain_retries
            st.partial_moves += c.partial_moves
            st.eexist_races += c.eexist_races
            st.ebusy_fallbacks += c.ebusy_fallbacks
            st.zero_filled += c.zero_filled
        h = self.handler
        st.faults_served = h.faults_served
        st.pages_installed_by_faults = h.pages_installed
        st.fresh_pages = h.fresh_pages
        h.add_native_stats(st)
        st.install_retries += h.retries
        lat = h.all_latencies()
        if lat.size:
            st.fault_p50_ns = int(np.percentile(lat, 50))
            st.fault_p99_ns = int(np.percentile(lat, 99))
            st.fault_max_ns = int(lat.max())
        st.install_ns = time.perf_counter_ns() - self.install_started
        st.total_ns = time.perf_counter_ns() - self.t0
        st.rss_after = self.heap._rss()
        self.heap.last_phase_ns = dict(self.clock.ns)
        self.heap.last_events = list(self.clock.events)
        log.info("gc_done", compactor="concurrent", **st.as_dict())

    def _stop_threads(self) -> None:
        self.request_stop()
        self.handler.stop()
        for t in (self.compactor, self.handler.thread):
            if t.is_alive() and t is not threading.current_thread():
                t.join(JOIN_TIMEOUT_S)
                if t.is_alive():
                    log.error("gc_thread_stuck", thread=t.name, timeout_s=JOIN_TIMEOUT_S)
                    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

    # -- hooks called by the heap (heap lock held) ----------------------------------------------------
    def on_heap_operation(self) -> None:
        """Entry of every heap operation: a cycle whose compactor stopped on an
        error is completed now (raising again if the kernel still refuses)."""
        if self.compactor_done.is_set() and self.error is not None:
            self.settle()

    def settle(self) -> None:
        """Finish the cycle now (before a new pause, verify(), ...)."""
        self.wait_compactor(JOIN_TIMEOUT_S)
        if self.error is not None or not self.states.all_installed():
            self.complete()
        self.finish()

    def shutdown(self) -> None:
        """Heap.close(): in-flight accesses finish (their faults are served),
        then every thread stops. Pages not installed are dropped with the arena."""
        self.heap._gate.drain(JOIN_TIMEOUT_S)
        with self._finish_lock:
            if not self.finished:
                self.finished = True
                self.request_stop()
                self._stop_threads()
                self.handler.release()
                if not self.compactor.is_alive():
                    self.kernel.munmap(self.scratch, self.chunk_pages * self.kernel.page_size)
        self.heap._cycle = None


def settle_cycle(heap) -> None:
    """Before a pause or an inspection: the running cycle ends, and no access is in flight."""
    if heap._cycle is not None:
        heap._cycle.settle()
    heap._gate.drain()


def collect_concurrent(heap, *, chunk_pages: int = CHUNK_PAGES, run_compactor: bool = True) -> GCStats:
    """``Heap.collect(concurrent=True)``: see the module doc."""
    cycle, stats, finish = begin_concurrent(heap, chunk_pages=chunk_pages, run_compactor=run_compactor)
    if cycle is None:
        finish()
        return stats
    cycle.wait_compactor()
    end_concurrent(heap, cycle)
    return stats


def begin_concurrent(heap, *, chunk_pages: int = CHUNK_PAGES, run_compactor: bool = True):
    """The pause; returns (the running cycle, its stats, None), or (None, stats,
    finish) when the heap has no userfaultfd and collected stop-the-world.
    ``run_compactor=False`` leaves every page to the fault handler until
    ``end_concurrent`` (benchmarks measure fault latency so)."""
    # RSS before, read outside the lock: reading the page tables of a large arena
    # takes milliseconds (15 ms for 1 GiB here) that mutators need not wait for
    rss_before = heap._rss() if heap._cycle is None and not heap._closed else None
    with heap._lock:
        heap._ready()
        settle_cycle(heap)
        if heap._compactor != "remap":  # no userfaultfd: the copying compactor, stop-the-world
            stats, finish = heap._collect_pause()
            return None, stats, finish
        cycle = _pause(heap, chunk_pages, run_compactor, rss_before)
    # the threads start once the pause is over: a fault taken meanwhile just waits in the uffd
    # queue, and a starting thread that takes the GIL cannot stretch the pause
    cycle.start()
    return cycle, cycle.stats, None


def end_concurrent(heap, cycle: "ConcurrentCycle") -> None:
    """After the compactor stopped: raise its error, or install what is left; then finish."""
    if cycle.error is not None or not cycle.states.all_installed():
        with heap._lock:
            if heap._cycle is not cycle:
                return
            cycle.raise_error()
            cycle.complete()
    cycle.finish()


def _pause(heap, chunk_pages: int, run_compactor: bool, rss_before: int | None) -> ConcurrentCycle:
    heap._settle_release()
    ps, base, fs = heap._ps, heap._base, heap._from_space
    stats = ConcurrentGCStats(rss_before=heap._rss() if rss_before is None else rss_before)
    t0 = time.perf_counter_ns()
    clock = PhaseClock("concurrent")
    old, marking = heap._mark(stats, clock)
    plan, new_by_row = heap._plan_remap(old, marking, clock)
    with clock.phase("flip") as ev:
        try:
            heap._flip(register_first=False)  # the short flip: this is the pause
        except RemapRefused as exc:
            raise exc.error
        ev.update(bytes=heap._alloc.used_pages * ps)
    with clock.phase("precompute") as ev:
        try:
            program = make_program(plan, heap._model, old, marking, new_by_row, base, fs, ps)
        except BaseException:
            heap._unflip()  # nothing else changed yet: the pages go back
            raise
        ev.update(pages=program.npages, slots=int(program.slot_page.size), copies=int(program.seg_page.size))
    with clock.phase("roots"):
        heap._forward_roots(old["start"], new_by_row)
        heap._commit_tables(old, plan, base + plan.end_pages * ps)
    heap._since_collect = 0
    heap.collections += 1
    cycle = ConcurrentCycle(heap, program, stats, clock, t0, chunk_pages=chunk_pages,
                            run_compactor=run_compactor)
    heap._cycle = cycle
    stats.pause_ns = time.perf_counter_ns() - t0
    for part in ("mark", "plan", "flip", "precompute", "roots"):
        setattr(stats, f"{part}_ns", clock.ns.get(part, 0))
    return cycle


__all__ = ["AccessGate", "Claim", "ConcurrentCycle", "ConcurrentGCStats", "InstallProgram", "PageStates", "begin_concurrent",
           "collect_concurrent", "end_concurrent", "settle_cycle", "make_program", "UNPROCESSED", "PROCESSING",
           "INSTALLED"]
