"""Concurrent compaction: a short pause, then pages installed while mutators run.

``Heap.collect(concurrent=True)`` (or its two halves, ``begin_concurrent``
and ``end_concurrent``, for benchmarks and tests that act in between):

* **Pause** (``heap.pause.Pause.remap``: heap lock held, no mutator inside
  a memory access): mark, plan, flip (register the arena with the
  userfaultfd, ``mremap(MREMAP_DONTUNMAP)`` it whole to the from-space: the
  arena stays mapped, empty and registered), precompute the *install
  program* (``heap.program.InstallProgram``), forward the roots and commit
  the side tables. No copy, no fix-up store and no MOVE happens here.
* **Install** (after the pause; the threads start once the heap lock is
  dropped): a compactor thread walks the to-space in chunks
  (``CHUNK_PAGES``). For a chunk it claims the pages still unprocessed
  (``heap.program.PageStates``), builds them where mutators cannot see them
  and MOVEs all its runs in one batched call (``heap.builder``). An
  untouched chunk is served from ``ChunkPlan`` (the walk precomputed on first
  use): a few calls. When the uffd has an accelerator (heap.kernel.Accelerator:
  the Linux backend's) the whole walk is instead one C call without the GIL,
  reading the install program directly: it claims pages by compare-and-swap, goes
  around pages a fault handler holds, and hands a refused MOVE back to
  Python. A mutator touching a page not yet installed takes a userfault; the
  fault-handler thread (``heap.faults``) builds and installs that page first
  the same way and wakes it. With self-served faults (``Heap(faults="self")``,
  heap.faultmode) there is no handler thread: the uffd raises SIGBUS in the
  faulting thread, which installs the page itself (the accelerator's
  ``self_service``, or ``heap.faults.PythonSelfService``) and runs on.
* **Finish**: every page installed -> unregister the arena (wakes anything
  still blocked, which then faults normally), stop the threads, then end the
  collection as every compactor does (``Pause.end``: the from-space is
  released outside the heap lock, through the owed-release token).

Errors: an install the kernel refuses (ENOMEM, EINTR, EAGAIN that persists)
reverts the chunk's pages not yet installed to *unprocessed* (building is
idempotent: fix-ups store the same values, rebuilt pages are assembled again
from the from-space originals), stops the compactor, and ``collect`` raises
``CompactionAborted`` with the kernel's errno. The handler keeps serving
faults meanwhile, and the next heap operation installs the rest
(``on_heap_operation``) before it runs. Any other exception in a thread is
re-raised to the caller the same way. ``shutdown`` (``Heap.close``) joins
every thread with a timeout and dumps the threads' stacks instead of hanging.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import sys
import threading
import time
from typing import Callable

import numpy as np

from .access import AccessGate
from .builder import ChunkPlan, PageBuilder
from .errors import CompactionAborted, HeapCorrupted, Health
from .events import get_logger
from .background import start_background
from .faults import FaultHandler, settled_counts
from .install import InstallInterrupted
from .kernel import MADV_DONTNEED, UffdError
from .pause import Collection, Pause, kept_rows, split_plan
from .program import INSTALLED, PROCESSING, UNPROCESSED, Claim, InstallProgram, PageStates, make_program
from .spaces import Spaces
from .stats import ConcurrentGCStats, InstallCounters

log = get_logger("remapgc.heap")

# Pages the compactor claims, builds and MOVEs per step: batches of >= 64
# pages come within ~30 % of the whole-range MOVE floor (docs/design.md,
# "The install"), and a mutator faulting on a page of the chunk in flight
# waits for one chunk.
CHUNK_PAGES = 1024
JOIN_TIMEOUT_S = 10.0


class ConcurrentCycle:
    """One concurrent collection after its pause: the threads and their outcome.

    ``end_cycle(cycle)`` is the heap's: under the heap lock, if ``cycle`` is
    still the heap's running cycle, forget it and return the token of the
    from-space release it now owes (else None: another thread ended it).
    """

    def __init__(self, kernel, spaces: Spaces, gate: AccessGate, health: Health, pause: Pause,
                 end_cycle: Callable[["ConcurrentCycle"], object | None], program: InstallProgram,
                 collection: Collection, *, chunk_pages: int = CHUNK_PAGES, run_compactor: bool = True):
        self.kernel = kernel
        self.spaces = spaces
        self.gate = gate
        self.health = health
        self.pause = pause
        self._end_cycle = end_cycle
        self.uffd = spaces.uffd
        self.accelerator = self.uffd.accelerator  # what the backend does natively (heap.kernel.Accelerator), or None
        self.arena = spaces.base
        self.size = spaces.size
        self.from_space = spaces.from_space
        self.kept = spaces.kept  # the dense prefix the flip left in place: never registered, never installed
        self.program = program
        self.collection = collection
        self.stats = collection.stats
        self.chunk_pages = chunk_pages
        self.run_compactor = run_compactor
        self.states = PageStates(program.npages)
        self.states.keep(program.kept_pages)
        self.builder = PageBuilder(kernel, self.uffd, program, self.states, self.arena, self.from_space)
        self.scratch = 0  # the compactor's build space, mapped by start(): outside the pause
        self.counters = InstallCounters()  # the compactor's (and complete()'s)
        self.chunk_plan: ChunkPlan | None = None  # the Python walk's plan, built on its first use
        self._walk = None  # the uffd's native chunk walker (False: none)
        self._native_program = None  # the program as the accelerator reads it (False: none)
        self.stop_flag = np.zeros(1, dtype=np.int32)  # self.stop, as the native walk sees it
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.compactor_done = threading.Event()
        self.finished = False  # threads stopped, arena unregistered
        self.ended = threading.Event()  # the collection ended (its stats are final), or the heap closed
        # background collection (heap.background): run once the compactor is done, in a thread of its
        # own (it needs the heap lock, which whoever settles the cycle holds while it joins the compactor)
        self.then: Callable[[], None] | None = None
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
            self._map_scratch()
            self.handler.start()
            if self.run_compactor:
                self.compactor.start()
            else:
                self.compactor_done.set()

    def _map_scratch(self) -> int:
        if not self.scratch:
            self.scratch = self.kernel.mmap(self.chunk_pages * self.kernel.page_size)
        return self.scratch

    def _compact(self) -> None:
        try:
            self._install_all(self.scratch, self.counters)
        except BaseException as exc:  # reaches the caller of collect()
            if isinstance(exc, HeapCorrupted):
                self.corrupted(exc)
            self.error = exc
            log.error("gc_concurrent_compactor_stopped", error=repr(exc))
        finally:
            self.compactor_done.set()
            if self.then is not None:  # a background collection: end the cycle
                self.then()

    def corrupted(self, exc: BaseException) -> HeapCorrupted:
        """An installer found a broken invariant (or failed in a way it cannot
        retry): the heap refuses every further operation, the compactor stops,
        and collect() raises it. The fault handler then only lets faulters go."""
        broken = exc if isinstance(exc, HeapCorrupted) else HeapCorrupted(
            "install", f"the fault handler failed: {type(exc).__name__}: {exc}")
        self.health.mark_broken(broken)
        self.request_stop()
        if self.error is None:
            self.error = broken
        return broken

    def handler_stopped(self, exc: OSError) -> None:
        """The fault handler can no longer read faults (its uffd failed): the
        collection's caller gets the error; the compactor's MOVEs still wake
        the faulters of the pages it installs."""
        if self.error is None:
            self.error = exc

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
                # "faulted": a page of the chunk faulted while the walk built it
                fault = OSError(w.errno, f"building chunk {ci} faulted: {os.strerror(w.errno)}")
                raise InstallInterrupted(fault, 0)
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
        """The install program as the uffd's accelerator reads it, or None (no
        accelerator, as on the simulator; nor without compare-and-swap claims)."""
        if self._native_program is None:
            accel = self.accelerator
            ok = accel is not None and self.states.claims.atomic
            self._native_program = accel.load_program(self.program, self.arena, self.from_space) if ok else False
        return self._native_program or None

    def _native_walk(self, scratch: int):
        """The uffd's chunk walker over this cycle's program, or None."""
        if self._walk is None:
            program = self.native_program()
            # self-serving: refusals settled in C (no page held for Python while a faulter may hold the GIL)
            settle = {"settle_refusals": True} if self.uffd.self_serving else {}
            self._walk = False if program is None else self.accelerator.chunk_walker(
                program, state=self.states.state, installed=self.states.installed_natively, stop=self.stop_flag,
                chunk=self.chunk_pages, scratch=scratch, **settle)
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
            self._install_all(self._map_scratch(), self.counters)
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
                                     "installs it", stats=self.stats)
        return exc

    def raise_error(self) -> None:
        """Called by collect() once the compactor stopped: the error, if any."""
        if self.error is not None:
            raise self._aborted(self.error) from self.error

    def finish(self) -> None:
        """Every page is installed: end the cycle. Needs no heap lock: the
        from-space is released outside it (as the stop-the-world compactor
        does), through the owed-release token, so a pause that starts
        meanwhile releases it first and nothing releases a newer from-space."""
        self._end_threads()
        token = self._end_cycle(self)
        if token is None:
            return  # another thread finished it
        try:
            self._count_into_stats()
            self.pause.end(self.collection, token)
        finally:
            self.ended.set()

    def _end_threads(self) -> None:
        with self._finish_lock:
            if self.finished:
                return
            k = self.kernel
            # wakes any late faulter: it now faults normally
            self.uffd.unregister(self.arena + self.kept, self.size - self.kept)
            self._stop_threads()
            if self.scratch:
                k.munmap(self.scratch, self.chunk_pages * k.page_size)
            self.handler.release()
            self.finished = True

    def _count_into_stats(self) -> None:
        st = self.stats
        settled = getattr(self._walk, "settled", None) if self._walk else None
        if settled is not None:  # refusals the native walk settled itself (self-serving)
            settled_counts(settled).add_into(st, self.kernel.page_size)
        self.counters.add_into(st, self.kernel.page_size)
        self.handler.add_counts_into(st)
        st.install_ns = time.perf_counter_ns() - self.install_started
        corrupt = self.handler.corrupt_pages() + (settled.corrupt if settled is not None else 0)
        if corrupt:  # a self-served fault met a to-space page filled from outside the heap
            self.corrupted(HeapCorrupted("install", f"{corrupt} to-space page(s) were populated while their "
                                         "source still held a page (found by self-served faults)"))

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
        self.gate.drain(JOIN_TIMEOUT_S)
        with self._finish_lock:
            if not self.finished:
                self.finished = True
                self.request_stop()
                self._stop_threads()
                self.handler.release()
                if self.scratch and not self.compactor.is_alive():
                    self.kernel.munmap(self.scratch, self.chunk_pages * self.kernel.page_size)
        self.ended.set()


def concurrent_pause(pause: Pause, col: Collection) -> InstallProgram:
    """The concurrent compactor's pause (heap.pause.Pause.remap with the short
    flip, registered after): instead of fixing anything, the install program
    the compactor thread and the fault handler work from once the pause is
    over. RemapRefused: nothing changed."""
    spaces, ps = pause.spaces, pause.kernel.page_size

    def precompute(plan, marking, old, new_by_row, ev):
        # the prefix the flip left in place is never installed: its objects' slots are fixed
        # here, in the arena (one in-place pass, as the stop-the-world fixup), and the program
        # covers the objects after them only
        kept = kept_rows(plan, spaces.base, ps)
        head, rest = split_plan(plan, kept)
        try:
            values = pause.slot_values(rest, marking, old, new_by_row)
            program = make_program(rest, pause.model, old, values, spaces.base, spaces.from_space, ps,
                                   refs=pause.reference_slots(rest, marking, old))
        except BaseException:
            spaces.unflip()  # nothing else changed yet: the pages go back
            raise
        program.kept_pages = plan.in_place_pages
        kept_slots = pause.fixup(head, marking, old, new_by_row, head.new_starts) if kept else 0
        ev.update(pages=program.npages, slots=int(program.slot_page.size), copies=int(program.seg_page.size),
                  kept_pages=program.kept_pages, kept_slots=kept_slots)
        return program

    # registering after the flip: the shorter pause (Spaces.flip)
    _, program = pause.remap(col, register_first=False, prepare_phase="precompute", prepare=precompute)
    stats = col.stats
    for part in ("mark", "plan", "flip", "precompute", "roots"):
        setattr(stats, f"{part}_ns", col.clock.ns.get(part, 0))
    return program


# The two halves of Heap.collect(concurrent=True), for benchmarks and tests
# that act between them (Heap.begin_concurrent / Heap.end_concurrent).
def collect_concurrent(heap, *, chunk_pages: int = CHUNK_PAGES, run_compactor: bool = True, wait: bool = True):
    """``Heap.collect(concurrent=True)`` with the cycle's knobs: see the module doc.
    ``wait=False``: returns a ``heap.background.BackgroundCollection`` right
    after the pause; the compactor thread ends the cycle."""
    if not wait:
        return start_background(heap, chunk_pages=chunk_pages)
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
    return heap.begin_concurrent(chunk_pages=chunk_pages, run_compactor=run_compactor)


def end_concurrent(heap, cycle: ConcurrentCycle) -> None:
    """After the compactor stopped: raise its error, or install what is left; then finish."""
    heap.end_concurrent(cycle)


__all__ = ["ConcurrentCycle", "ConcurrentGCStats", "CHUNK_PAGES", "begin_concurrent", "collect_concurrent",
           "end_concurrent", "Claim", "InstallProgram", "PageStates", "UNPROCESSED",
           "PROCESSING", "INSTALLED"]
