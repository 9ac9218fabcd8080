"""The fault-handler thread of a concurrent cycle (and self-served faults).

With ``Heap(faults="self")`` (heap.faultmode) nothing is queued on the uffd
and this thread does not run: each faulting thread takes SIGBUS and installs
its page itself -- natively (the accelerator's ``self_service``: the Linux
backend's csrc/sigbus.c, the same C as its fault server) or, without an
accelerator, in Python through the kernel's SIGBUS hook
(``PythonSelfService``, with this module's own install routines). The rest
of this docstring is the handler-thread mode.

When the uffd has an accelerator (heap.kernel.Accelerator: the Linux
backend's), its fault server, a C thread, reads the faults first and
resolves the common ones without the GIL, with the same rules as the table below: an unprocessed page (MOVE, or a rebuilt page
assembled and COPYed), a page past the plan or an installed hole (ZEROPAGE
or WAKE). It forwards the rest over a pipe -- a page someone holds, and any
refusal (a refused MOVE arrives with the page still claimed) -- and this
Python thread serves those. Without it (the simulator) this thread reads
``uffd.read_events(timeout=...)`` itself. For a fault on arena page p:

==========================  ==============================================================
p outside the plan          a fresh page (new allocation past the to-space top): UFFDIO_ZEROPAGE;
                            EEXIST (someone filled it) -> UFFDIO_WAKE
p unprocessed               claim it, build it (fix-ups in the from-space, or a rebuilt page
                            assembled in the handler's scratch page) and install it: a page that
                            moves whole by MOVE (zero-copy; a source hole -> ENOENT -> ZEROPAGE),
                            which wakes the faulter: the handler's books after it are a few
                            attribute writes, and a separate WAKE costs ~13 us of ioctl (mutator
                            p50 31 -> 28.5 us, measured; with the older, heavier books DONTWAKE +
                            WAKE was the better order);
                            a rebuilt page by COPY (one 4 KiB page: 3 us against 6.5 us for MOVE
                            here, measured), which wakes the faulter
p processing (compactor)    deferred: the compactor's MOVE wakes the faulter; the handler checks
                            back after its next read and wakes again if needed
p installed                 ZEROPAGE (an installed page can still be a hole: a never-touched page
                            moved with ALLOW_SRC_HOLES) -> EEXIST -> WAKE
==========================  ==============================================================

A refused install (ENOMEM, EINTR...) puts the page back to unprocessed and
defers it: the handler retries after a back-off, so the faulter is never left
blocked while the handler runs. Any other failure (a to-space page filled
from outside the heap: EEXIST with the source still there, HeapCorrupted; or
a bug) cannot be cured by retrying: the handler marks the heap broken
(``ConcurrentCycle.corrupted``) and from then on only lets faulters go, over
a zero page or the page already there; their accesses then raise
HeapCorrupted instead of returning those bytes. The handler never takes the
heap lock nor the access gate; on Linux its Python code can run only because
mutators touch heap memory through cffi calls that release the GIL.
"""

from __future__ import annotations

import errno
import threading
import time
from bisect import bisect_right

import numpy as np

from .events import get_logger
from .install import InstallInterrupted, install_page_range
from .kernel import UffdError
from .program import PROCESSING, UNPROCESSED, moved_unreported
from .stats import GCStats, InstallCounters

log = get_logger("remapgc.heap")

IDLE_WAIT_S = 0.002  # read_events timeout with nothing deferred: how soon stop() is noticed
# With the native fault server, stop() wakes the reader itself (an empty message on the
# forward pipe), so with nothing deferred this thread sleeps until a fault is forwarded.
# Waking every IDLE_WAIT_S instead kept it waiting for the GIL for most of a cycle: every
# mutator access then released the GIL to a waiter (a futex wake, the waiter woken on the
# other CPU to find it taken again) and a forced switch came every switch interval.
FORWARDED_IDLE_WAIT_S = 0.5  # a safety net only: a lost wake costs at most this
DEFERRED_WAIT_S = 0.0002  # with deferred faults: how soon they are looked at again
# With the native server a deferred fault is one on a page the native walk holds: its MOVE
# wakes the faulter, and the look again only catches a page given back uninstalled (a build
# that faulted). Polling every DEFERRED_WAIT_S made these the handler's most GIL acquisitions.
FORWARDED_DEFERRED_WAIT_S = 0.002
BACKOFF_S = 0.001  # after a refused install
MAX_LATENCIES = 1 << 20
_ONE = np.ones(1, dtype=bool)


class FaultHandler:
    """The fault-handler thread of one concurrent cycle (see the module doc)."""

    def __init__(self, cycle):
        k = cycle.kernel
        self.cycle = cycle
        self.kernel = k
        self.uffd = cycle.uffd
        self.ps = k.page_size
        self.arena = cycle.arena
        self.from_space = cycle.from_space
        self.program = cycle.program
        self.states = cycle.states
        self._npages = cycle.program.npages
        self.builder = cycle.builder
        self.scratch = k.mmap(self.ps)
        self._zero = bytes(self.ps)
        self.counters = InstallCounters()  # with faults_served, pages_installed_by_faults, fresh_pages, install_retries
        self.latencies: list[int] = []
        self.broken = False  # a fault service found a broken invariant: faulters are only let go
        self._deferred: dict[int, int] = {}  # page -> when its fault was read (ns)
        self._stop = threading.Event()
        self._released = False
        self.server = None  # the uffd's native fault server, when it has one (Linux)
        self.thread = threading.Thread(target=self._run, name="remapgc-faults", daemon=True)
        # self-served faults (heap.faultmode): the faulting thread installs its page (SIGBUS);
        # in the SIGBUS table from now on, so that no access of the cycle finds it missing
        self.self_service = self._start_self_service() if self.uffd.self_serving else None

    def _start_self_service(self):
        program = self.cycle.native_program()
        if program is not None:
            service = self.cycle.accelerator.self_service(program, state=self.states.state,
                                                          installed=self.states.installed_natively)
        else:  # no native handler (the simulator): the SIGBUS callback serves the page in Python
            service = PythonSelfService(self)
        service.cover(self.cycle.size)
        service.start()
        return service

    def start(self) -> None:
        if self.self_service is not None:
            return  # no thread: nothing is ever queued on a SIGBUS userfaultfd
        program = self.cycle.native_program()
        if program is not None:
            self.server = self.cycle.accelerator.fault_server(program, state=self.states.state,
                                                 installed=self.states.installed_natively)
            self.server.start()
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.request_stop()
        if self.self_service is not None:  # after the arena's unregister: no SIGBUS comes any more
            self.self_service.stop()

    def release(self) -> None:
        if not self._released and not self.thread.is_alive():
            self._released = True
            if self.server is not None:
                self.server.close()
            if self.self_service is not None:
                self.self_service.stop()
            self.kernel.munmap(self.scratch, self.ps)

    # -- what it did (the native server serves the common fault; this thread the rest) -------
    @property
    def faults_served(self) -> int:
        """Faults this thread resolved."""
        return self.counters.faults_served

    def _native(self):
        """The native side serving faults: the fault server, the native self-service, or None."""
        if self.server is not None:
            return self.server
        return None if isinstance(self.self_service, PythonSelfService) else self.self_service

    def served_natively(self) -> int:
        """Faults the native server (or the faulting threads themselves, natively) resolved."""
        native = self._native()
        return native.served if native is not None else 0

    def native_counters(self) -> InstallCounters:
        """What the native server, or the self-served faults, did, as counters (empty without either)."""
        srv, own = self.server, self._native()
        if srv is not None:
            return InstallCounters(pages_moved=srv.pages_moved, bytes_copied=srv.bytes_copied,
                                   faults_served=srv.served, pages_installed_by_faults=srv.pages_moved + srv.pages_copied,
                                   fresh_pages=srv.fresh_pages)
        if own is None:
            return InstallCounters()
        c = settled_counts(own)
        c.faults_served, c.fresh_pages = own.served, own.fresh_pages
        c.pages_installed_by_faults = own.pages_moved + own.pages_copied + own.ebusy_copies + own.holes
        return c

    def corrupt_pages(self) -> int:
        """Pages a self-served fault found filled from outside the heap (EEXIST, source still there)."""
        native = self._native()
        return getattr(native, "corrupt", 0) if native is not None else 0

    def all_latencies(self) -> np.ndarray:
        lat = np.asarray(self.latencies, dtype=np.int64)
        native = self._native()
        return lat if native is None else np.concatenate([lat, native.served_latencies()])

    def add_counts_into(self, st: GCStats) -> None:
        """Everything the handler and its native server did, into a cycle's stats."""
        self.counters.add_into(st, self.ps)
        self.native_counters().add_into(st, self.ps)
        lat = self.all_latencies()
        if lat.size:  # one sort, nearest ranks: a fifth of two np.percentile calls, run holding the GIL
            lat.sort()
            last = lat.size - 1
            st.fault_p50_ns = int(lat[last // 2])
            st.fault_p99_ns = int(lat[-(-last * 99 // 100)])
            st.fault_max_ns = int(lat[last])

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        p = self.program  # piece lookups as Python lists: bisect on them is the fastest scalar path
        self._piece_dst, self._piece_src = p.piece_dst.tolist(), p.piece_src.tolist()
        self._piece_rebuilt = p.piece_rebuilt.tolist()
        backoff = False
        server = self.server
        while not self._stop.is_set():
            try:
                if server is None:
                    idle, deferred = IDLE_WAIT_S, DEFERRED_WAIT_S
                else:
                    idle, deferred = FORWARDED_IDLE_WAIT_S, FORWARDED_DEFERRED_WAIT_S
                wait = BACKOFF_S if backoff else (deferred if self._deferred else idle)
                if server is not None:  # the faults the native server left to Python
                    events = server.read_forwarded(wait)
                else:
                    events = [(ev.address, None) for ev in self.uffd.read_events(timeout=wait)]
            except OSError as exc:  # the uffd was closed under us (Heap.close)
                if not self._stop.is_set():  # nobody serves faults now: collect() must say so
                    log.error("gc_fault_handler_stopped", error=repr(exc))
                    self.cycle.handler_stopped(exc)
                return
            now = time.perf_counter_ns()
            backoff = False
            for addr, refused in events:
                backoff |= not self._serve(addr, now, refused)
            if self._deferred:
                backoff |= not self._retry_deferred()

    def serve_for_faulter(self, addr: int, t_fault: int) -> bool:
        """A self-served fault (``PythonSelfService``: in the faulting thread,
        installs serialised by the caller); False when refused (given back:
        the access faults again). A page found held is left to its holder."""
        if not hasattr(self, "_piece_dst"):
            p = self.program
            self._piece_dst, self._piece_src = p.piece_dst.tolist(), p.piece_src.tolist()
            self._piece_rebuilt = p.piece_rebuilt.tolist()
        try:
            return self._serve(addr, t_fault)
        finally:
            self._deferred.clear()  # nothing is deferred: the faulter itself retries

    def _retry_deferred(self) -> bool:
        ok = True
        for page, t_read in list(self._deferred.items()):
            if self.states.state_of(page) == PROCESSING:
                continue
            del self._deferred[page]
            ok &= self._serve(self.arena + page * self.ps, t_read)
        return ok

    def _serve(self, addr: int, t_read: int, refused: UffdError | None = None) -> bool:
        """Resolve one fault; False when it was deferred after a refusal (back off).
        ``refused``: the page is already claimed, and the kernel refused its MOVE so."""
        c = self.counters
        page = (addr - self.arena) // self.ps
        in_plan = 0 <= page < self._npages
        wake = 0
        if self.broken:
            self._let_go(addr)
            return True
        try:
            if not in_plan:
                c.fresh_pages += self._zero_or_wake(addr)
            elif refused is not None:
                wake = self._install(page, refused)
                c.pages_installed_by_faults += 1
            else:
                before = self.states.claim(page)
                if before == PROCESSING:
                    self._deferred[page] = -1  # the compactor's MOVE wakes it; not timed as a service
                    return True
                if before == UNPROCESSED:
                    wake = self._install(page)
                    c.pages_installed_by_faults += 1
                else:
                    self._zero_or_wake(addr)
        except Exception as exc:  # refused (ENOMEM, EINTR...): retry later, never drop the fault
            if not isinstance(exc, InstallInterrupted):  # a broken invariant, or a bug: retrying cannot help
                self.broken = True
                log.error("gc_fault_service_failed", address=hex(addr), error=repr(exc))
                self.cycle.corrupted(exc)
                self._let_go(addr)
                return True
            c.install_retries += 1
            if in_plan:
                self._deferred[page] = t_read
            else:
                self._deferred_fresh(addr, t_read)
            return False
        c.faults_served += 1
        if t_read >= 0 and len(self.latencies) < MAX_LATENCIES:
            self.latencies.append(time.perf_counter_ns() - t_read)
        if wake:  # last: the woken mutator wants the GIL, and the handler then only returns to read_events
            try:
                self.uffd.wake(wake, self.ps)
            except OSError as exc:  # cannot happen on a registered range; else the unregister at the end wakes it
                log.error("gc_fault_wake_failed", address=hex(wake), error=repr(exc))
        return True

    def _let_go(self, addr: int) -> None:
        """The heap is broken: let the faulter run on (its access then raises
        HeapCorrupted) over a zero page, or the page already there; never block it."""
        try:
            self._zero_or_wake(addr)
        except Exception:
            try:
                self.uffd.wake(addr, self.ps)
            except OSError:
                pass

    def _deferred_fresh(self, addr: int, t_read: int) -> None:
        # out-of-plan pages are retried through a fresh read: the faulter faults
        # again once woken, so wake it (it re-faults and is served then)
        try:
            self.uffd.wake(addr, self.ps)
        except OSError:
            pass

    # -- resolving ----------------------------------------------------------------------------
    def _zero_or_wake(self, addr: int) -> int:
        """ZEROPAGE (wakes), or WAKE if the page is already there. 1 if a zero page went in."""
        try:
            self.uffd.zeropage(addr, self.ps)
            return 1
        except UffdError as exc:
            if exc.errno != errno.EEXIST:
                raise InstallInterrupted(exc, 0) from exc
        self.uffd.wake(addr, self.ps)
        return 0

    def _install(self, page: int, refused: UffdError | None = None) -> int:
        """Install one page; the address still to wake (0: the kernel woke the faulter).
        ``refused``: the first MOVE of it was already made and refused so."""
        piece = bisect_right(self._piece_dst, page) - 1
        if self._piece_rebuilt[piece]:
            self._install_rebuilt(page)
            return 0
        # a page that moves whole, the common case: scalar code, it is on the faulter's clock
        k, ps, c, p = self.kernel, self.ps, self.counters, self.program
        dst = self.arena + page * ps
        src = self.from_space + (self._piece_src[piece] + page - self._piece_dst[piece]) * ps
        try:
            # one searchsorted per fault (0.6 us); a per-page index built up front costs
            # ~13 ms for 2M slots, delaying the handler's first service
            t0, t1 = p.slot_page.searchsorted((page, page + 1)).tolist()
            if t1 > t0:
                k.store_words((src + p.slot_off[t0:t1]).astype(np.uint64), p.slot_val[t0:t1])
            c.ioctls += 1
            wake = 0
            try:
                if refused is not None:
                    raise refused
                self.uffd.move(dst, src, ps, 0)  # wakes the faulter: the books left are a few attribute writes
                c.pages_moved += 1
            except UffdError as exc:  # every other outcome: the shared routine (a hole: ENOENT -> ZEROPAGE)
                if exc.errno not in (errno.EAGAIN, errno.EEXIST, errno.EBUSY, errno.ENOENT):
                    raise InstallInterrupted(exc, 0) from exc  # refused: back off, retry (counted)
                if exc.errno == errno.EAGAIN:
                    c.eagain_retries += 1
                wake = dst  # whatever put the page there, the faulter is woken once the books are done
                install_page_range(k, self.uffd, dst, src, ps, c, mode=0)
        except BaseException:
            if self._settle_failed(page, dst, src):
                return 0  # it went in anyway, and its faulter is woken
            raise
        self.states.settle_one(page, True)
        return wake

    def _install_rebuilt(self, page: int) -> None:
        k, ps, c = self.kernel, self.ps, self.counters
        dst = self.arena + page * ps
        _, rebuilt = self.program.sources(np.array([page], dtype=np.int64))
        src = np.array([self.scratch])
        try:
            if rebuilt[0]:
                k.store(self.scratch, self._zero)
            src, _ = self.builder.build(page, _ONE, self.scratch, c)
            races = c.eexist_races
            if rebuilt[0]:
                self._copy(dst, self.scratch)
            else:
                install_page_range(k, self.uffd, dst, int(src[0]), ps, c, mode=0)
            if c.eexist_races != races:
                self.uffd.wake(dst, ps)
        except BaseException:
            if self._settle_failed(page, dst, self.scratch if rebuilt[0] else int(src[0])):
                return
            raise
        self.states.settle_one(page, True)

    def _settle_failed(self, page: int, dst: int, src: int) -> bool:
        """After a failed install of ``page`` from ``src``: did it go in anyway
        (a MOVE reported as EINTR after its step)? Settles the page either way
        and wakes its faulter if it did."""
        done = moved_unreported(self.kernel, dst, src)
        self.states.settle_one(page, done)
        if done:
            self.uffd.wake(dst, self.ps)
        return done

    def _copy(self, dst: int, src: int) -> None:
        c = self.counters
        c.ioctls += 1
        try:
            self.uffd.copy(dst, src, self.ps)
        except UffdError as exc:
            if exc.errno == errno.EEXIST and self.kernel.page_info(dst).state != "none":
                c.eexist_races += 1
                return
            raise InstallInterrupted(exc, 0) from exc
        c.bytes_copied += self.ps


def settled_counts(own) -> InstallCounters:
    """What a native side that settles refusals itself did (a self-service, or a
    self-serving walk's ``settled``: same counter names), as install counters."""
    return InstallCounters(pages_moved=own.pages_moved, bytes_copied=own.bytes_copied,
                           ebusy_fallbacks=own.ebusy_copies, eagain_retries=own.eagain_retries,
                           eexist_races=own.eexist_races, zero_filled=own.holes, install_retries=own.install_retries)


class PythonSelfService:
    """Self-served faults without a native handler (the simulator): the
    kernel's SIGBUS handler (``sigaction_sigbus``) runs in the faulting thread
    and installs the page here with the fault handler's own routines (claim,
    build, MOVE or COPY, every refusal as ``install_page_range`` settles it);
    a page another installer holds is waited for. Installs are serialised
    (one scratch page, one set of counters); waiting is not. A SIGBUS outside
    the arena goes to the handler installed before (none: the access fails
    with EFAULT, as the default action would end the process)."""

    WAIT_S = 0.0002

    def __init__(self, handler: FaultHandler):
        self.handler = handler
        self.kernel = handler.kernel
        self.lo, self.hi = handler.arena, handler.arena + handler.program.npages * handler.ps
        self._lock = threading.Lock()
        self._prev = None
        self._active = False
        self._late = threading.local()

    def cover(self, length: int) -> None:
        self.hi = self.lo + length

    def _late_retry(self, addr: int) -> bool:
        """Whether to run an access again that faulted as the cycle ended; bounded per thread and page."""
        late = self._late.__dict__
        page = addr // self.handler.ps
        late["n"] = late.get("n", 0) + 1 if late.get("page") == page else 1
        late["page"] = page
        return late["n"] <= self.LATE_RETRIES

    def start(self) -> None:
        self._active = True
        self._prev = self.kernel.sigaction_sigbus(self._on_sigbus)

    def stop(self) -> None:
        if not self._active:
            return
        self._active = False
        if self.kernel.sigbus_handler == self._on_sigbus:  # else one went in over ours: ours passes everything on
            self.kernel.sigaction_sigbus(self._prev)

    LATE_RETRIES = 64

    def _on_sigbus(self, addr: int) -> None:
        if not self._active and self.lo <= addr < self.hi and self._late_retry(addr):
            return  # taken just before the cycle ended: the access runs again (as sigbus.c's lately-served ranges)
        if not (self._active and self.lo <= addr < self.hi):
            if self._prev is None:
                raise OSError(errno.EFAULT, f"SIGBUS at 0x{addr:x}, outside the heaps this handler serves")
            self._prev(addr)
            return
        fh = self.handler
        page = (addr - self.lo) // fh.ps
        t0 = time.perf_counter_ns()
        while 0 <= page < fh.program.npages and fh.states.state_of(page) == PROCESSING:
            time.sleep(self.WAIT_S)  # another installer holds it: its install is what this access waits for
        with self._lock:
            refused = not fh.serve_for_faulter(addr, t0)
        if refused:  # given back: the access faults again and retries
            time.sleep(BACKOFF_S)
