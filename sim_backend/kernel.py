"""SimKernel: the Kernel protocol on a simulated Linux 6.18 address space.

See the package docstring (sim_backend/__init__.py) for the model and the
list of intentional deviations from Linux.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import threading
import weakref
from dataclasses import asdict, dataclass

import numpy as np

from heap.kernel import U64_MAX, ArgumentTypeError
from heap.kernel import as_c_int as _c_int
from heap.kernel import as_u64 as _u64
from heap.kernel import as_ranges
from heap.kernel import as_u64_array as _u64_array
from heap.kernel import (
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    UFFD_FEATURE_EVENT_REMAP,
    UFFD_FEATURE_EVENT_REMOVE,
    UFFD_FEATURE_EVENT_UNMAP,
    UFFD_FEATURE_MOVE,
    UFFD_FEATURE_SIGBUS,
    UFFDIO_REGISTER_MODE_MISSING,
    KernelBase,
    KernelUnsupported,
    PageInfo,
)

from . import native
from .faultplan import FaultPlan
from .frames import (
    FIRST_FRAME,
    HUGE_ZERO_BASE,
    NO_FRAME,
    PAGE_SIZE,
    PTRS_PER_PMD,
    ZERO_FRAME,
    Frames,
)
from .pagetable import HUGE_ZERO, PMD_SHIFT, PMD_SIZE, PUD_SHIFT, TABLE, THP, PageTables
from .vmas import PAGE_SHIFT, TASK_SIZE, AddressSpace, Vma

PAGE_MASK = ~(PAGE_SIZE - 1)
PMD_MASK = ~(PMD_SIZE - 1)
IDX_MASK = PTRS_PER_PMD - 1

# Everything UFFDIO_API offers on the reference kernel (features 0..16).
SIM_UFFD_FEATURES = (1 << 17) - 1

# madvise advice values Linux accepts; those the sim does not model are accepted as no-ops.
_VALID_ADVICE = frozenset({0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                           24, 25, 100, 101, 102, 103})
_PROT_SEM = 0x8
# The most one load may read: the Linux backend's limit (a buffer of that size), refused
# from the length alone, before any page is walked.
MAX_LOAD = 1 << 32
# A user-mode range longer than this many pages is first cut after the first page no VMA
# lets it touch: the access stops there (EFAULT), so the pages after it are never listed.
_LONG_RANGE_PAGES = 1 << 12


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)} ({what})")


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & PAGE_MASK


@dataclass
class Counters:
    """Cost counters of a SimKernel (cumulative; ``reset()`` zeroes them)."""

    ptes_moved: int = 0  # pages moved one PTE at a time by UFFDIO_MOVE (zero-page PTEs included)
    pmds_moved: int = 0  # whole PMDs (THP or huge zero page) moved by UFFDIO_MOVE
    tlb_flushes: int = 0  # TLB flushes by UFFDIO_MOVE: one per PTE batch, per zero page, per PMD
    pmds_split: int = 0  # huge PMDs split into PTE tables (by MOVE, munmap, madvise, mprotect...)
    pages_split: int = 0  # pages of large folios split into order-0 pages
    bytes_copied: int = 0  # bytes the kernel copied: UFFDIO_COPY and copy-on-write breaks
    user_bytes_copied: int = 0  # bytes copied by user-mode memmove/copy_ranges
    faults_raised: int = 0  # userfaults delivered to a uffd (a blocked thread each)
    faults_served: int = 0  # blocked faulting threads woken by MOVE/COPY/ZEROPAGE/WAKE/unregister
    sigbus_raised: int = 0  # missing faults in a UFFD_FEATURE_SIGBUS range: never queued, the thread's SIGBUS
    demand_faults: int = 0  # page faults resolved by the kernel itself (zero page, new page, COW, THP)

    def as_dict(self) -> dict:
        return asdict(self)

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)

    def __getitem__(self, name: str) -> int:
        return getattr(self, name)


try:  # the C functions behind signal.signal/getsignal, without the enum conversions
    import _signal as _raw_signal
except ImportError:
    _raw_signal = signal
# the asynchronous signals a Python program may handle
_HELD_SIGNALS = tuple(getattr(signal, name) for name in
                      ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD")
                      if hasattr(signal, name))


class _SignalsHeld:
    """While the main thread sleeps in the kernel (a simulated userfault, or
    waiting for a monitor to read an event), its Python signal handlers only
    record; they run once it wakes. On Linux the access is one C call: the
    signal interrupts the fault, the C-level handler runs, the fault is retried,
    and the Python handler runs only after the call returns. Here the sleep is
    Python code, and a handler raising inside Condition.wait could leave the
    kernel lock released under the caller's ``with`` ("release unlocked lock"
    in another thread, then a broken simulator). Handlers that are not Python
    callables (SIG_DFL, SIG_IGN) stay: a default SIGTERM still ends the process.

    Handlers run between bytecodes of the main thread, so a signal can land
    while the handlers are being swapped: the recorder then passes it straight
    to the program's handler, as if nothing were held."""

    __slots__ = ("_old", "_pending", "_holding")

    def __enter__(self) -> "_SignalsHeld":
        self._old = {}
        self._pending = []
        self._holding = False
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers run only in the main thread
        self._holding = True
        try:
            for signum in _HELD_SIGNALS:
                handler = _raw_signal.getsignal(signum)
                if callable(handler):
                    self._old[signum] = handler
                    _raw_signal.signal(signum, self._record)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _record(self, signum, frame) -> None:
        if self._holding:
            self._pending.append(signum)
        else:
            self._old[signum](signum, frame)

    def __exit__(self, *exc) -> None:
        self._holding = False
        for signum, handler in self._old.items():
            _raw_signal.signal(signum, handler)
        for signum in dict.fromkeys(self._pending):  # once per kind, in arrival order
            self._old[signum](signum, None)  # KeyboardInterrupt and the like reach the caller here


class Waiter:
    """A thread blocked in a userfault."""

    __slots__ = ("uffd", "address", "write", "woken", "reported")

    def __init__(self, uffd, address: int, write: bool):
        self.uffd = uffd
        self.address = address
        self.write = write
        self.woken = False
        self.reported = False


class NonCoopEvent:
    """A non-cooperative uffd event (REMOVE, UNMAP, REMAP): the thread that caused it
    waits until the monitor reads it, and the context's mmap_changing is raised meanwhile."""

    __slots__ = ("kind", "start", "end", "read")

    def __init__(self, kind: str, start: int, end: int):
        self.kind, self.start, self.end = kind, start, end
        self.read = False


class SimChild:
    """A forked child: it holds one reference to every private page it inherited."""

    def __init__(self, kernel: "SimKernel", pid: int, frames: np.ndarray):
        self.pid = pid
        self._kernel = kernel
        self._frames = frames
        self.alive = True

    def exit(self) -> None:
        with self._kernel._lock:
            if not self.alive:
                return
            self.alive = False
            self._kernel.frames.unmap(self._frames)
            self._frames = np.empty(0, dtype=np.int64)

    def __repr__(self) -> str:
        return f"SimChild(pid={self.pid}, {'alive' if self.alive else 'reaped'})"


class SimKernel(KernelBase):
    """A simulated Linux 6.18 kernel (x86-64, 4 KiB pages, 2 MiB THP)."""

    name = "sim"
    page_size = PAGE_SIZE
    hpage_size = PMD_SIZE
    memory_in_place = True  # frame_pointers: the host address of each page's contents
    simulated = True

    def __init__(self, seed: int = 0, thp: bool = True, fault_plan: FaultPlan | None = None,
                 compiled: bool | None = None):
        self.seed = seed
        # the compiled per-word loops when built (compiled=False forces the numpy paths)
        self.compiled = native.COMPILED if compiled is None else (compiled and native.COMPILED)
        self.thp = thp
        self.fault_plan = fault_plan if fault_plan is not None else FaultPlan(seed=seed)
        self.counters = Counters()
        self.mm = AddressSpace()
        self.pt = PageTables()
        self.frames = Frames()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters: list[Waiter] = []
        self._anon_vma_ids = itertools.count(1)
        self._pids = itertools.count(1000)
        self._uffd_ids = itertools.count(3)
        self._uffds: weakref.WeakSet = weakref.WeakSet()
        # the process's SIGBUS disposition: None is the default action (here: the access fails with EFAULT,
        # as the Linux backend's guarded accessors report it), else fn(address) in the faulting thread
        self.sigbus_handler = None

    def __repr__(self) -> str:
        return f"SimKernel(seed={self.seed}, thp={self.thp}, vmas={len(self.mm.vmas)})"

    # ------------------------------------------------------------------------------
    # small helpers
    # ------------------------------------------------------------------------------
    def _anon_vma(self, vma: Vma) -> int:
        """anon_vma_prepare: the VMA's anon_vma, created on first need."""
        if vma.anon_vma is None:
            vma.anon_vma = next(self._anon_vma_ids)
        return vma.anon_vma

    @staticmethod
    def _missing_registered(vma: Vma) -> bool:
        return vma.uffd is not None and bool(vma.uffd_mode & UFFDIO_REGISTER_MODE_MISSING)

    def _thp_eligible(self, vma: Vma, region: int) -> bool:
        start = region << PMD_SHIFT
        return (self.thp and not vma.shared and vma.hugepage == MADV_HUGEPAGE
                and vma.start <= start and start + PMD_SIZE <= vma.end)

    def _release_entries(self, entries: np.ndarray) -> None:
        """Drop the mappings held by a slice of PTEs (zero pages hold none)."""
        real = entries[entries >= FIRST_FRAME]
        self.frames.unmap(real)

    def _split_pmd(self, region: int) -> None:
        """Split a huge PMD into a PTE table mapping the same pages (the folio stays large)."""
        row = self.pt.row(region)
        kind = self.pt.kind[row]
        if kind == THP:
            self.pt.kind[row] = TABLE
        elif kind == HUGE_ZERO:
            self.pt.kind[row] = TABLE
            self.pt.pte[row] = ZERO_FRAME
        else:
            return
        self.counters.pmds_split += 1

    def _split_folio(self, frame: int) -> bool:
        """split_folio() of the large folio holding ``frame``.

        False (EBUSY) if it is pinned. On success, as 6.12+ does when it
        remaps an anonymous folio after splitting it, every zero-filled page
        is replaced by the shared zero page in *every* mapping of it (the
        rmap walk reaches parts mremapped elsewhere too), except where the
        mapping VMA is mlocked; its pages no longer mapped anywhere are freed.
        """
        fr = self.frames
        head = int(fr.head[frame])
        nr = int(fr.nr[head])
        if fr.pins[head:head + nr].any():
            return False
        self.counters.pages_split += nr
        rows, cols = self.pt.mapping(head, head + nr)
        if rows.size:
            frames = self.pt.pte[rows, cols]
            zero = ~fr.written(frames)
            addrs = (self.pt.region_of[rows] << PMD_SHIFT) + (cols << PAGE_SHIFT)
            for i in np.flatnonzero(zero).tolist():
                vma = self.mm.find(int(addrs[i]))
                zero[i] = vma is not None and not vma.locked
            if zero.any():
                self.pt.pte[rows[zero], cols[zero]] = ZERO_FRAME
                fr.mapcount[frames[zero]] -= 1
        fr.split_folio(head)
        return True

    def _split_boundary(self, addr: int) -> None:
        """A VMA boundary at ``addr`` splits a huge PMD that straddles it (vma_adjust_trans_huge)."""
        if addr & (PMD_SIZE - 1):
            self._split_pmd(addr >> PMD_SHIFT)

    def _isolate(self, start: int, end: int) -> list[Vma]:
        self._split_boundary(start)
        self._split_boundary(end)
        return self.mm.isolate(start, end)

    # ------------------------------------------------------------------------------
    # zapping and page-table freeing
    # ------------------------------------------------------------------------------
    def _zap(self, start: int, end: int, reclaim: bool) -> None:
        """Unmap every page in ``[start, end)`` (one VMA's range or part of it).

        ``reclaim``: CONFIG_PT_RECLAIM as MADV_DONTNEED uses it: a PTE table left
        empty in a 2 MiB region the range covers whole is freed.
        """
        addr = start
        while addr < end:
            region = addr >> PMD_SHIFT
            nxt = min((region + 1) << PMD_SHIFT, end)
            row = self.pt.row(region)
            if row >= 0:
                whole = addr & (PMD_SIZE - 1) == 0 and nxt - addr == PMD_SIZE
                kind = self.pt.kind[row]
                if kind in (THP, HUGE_ZERO) and whole:
                    self._release_entries(self.pt.pte[row])
                    self.pt.drop(region)
                else:
                    if kind != TABLE:
                        self._split_pmd(region)
                    lo, hi = (addr >> PAGE_SHIFT) & IDX_MASK, ((nxt - 1) >> PAGE_SHIFT & IDX_MASK) + 1
                    self._release_entries(self.pt.pte[row, lo:hi])
                    self.pt.pte[row, lo:hi] = NO_FRAME
                    if reclaim and whole and (self.pt.pte[row] == NO_FRAME).all():
                        self.pt.drop(region)
            addr = nxt

    def _free_pgtables(self, start: int, end: int) -> None:
        """free_pgtables: drop the page tables of regions around ``[start, end)`` no VMA touches."""
        for region in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1):
            lo = region << PMD_SHIFT
            if self.pt.row(region) >= 0 and not self.mm.any_in(lo, lo + PMD_SIZE):
                row = self.pt.row(region)
                self._release_entries(self.pt.pte[row])
                self.pt.drop(region)
        for pud in range(start >> PUD_SHIFT, ((end - 1) >> PUD_SHIFT) + 1):
            lo = pud << PUD_SHIFT
            if pud in self.pt.puds and not self.mm.any_in(lo, lo + (1 << PUD_SHIFT)):
                self.pt.drop_pud(pud)

    # ------------------------------------------------------------------------------
    # the mmap family
    # ------------------------------------------------------------------------------
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE, *,
             shared: bool = False, align: int = 0, at: int | None = None,
             noreserve: bool = False) -> int:
        length, align, prot = _u64(length, "length"), _u64(align, "align"), _c_int(prot, "prot")
        if align and (align & (align - 1) or align % PAGE_SIZE):
            raise ValueError(f"align={align:#x} must be a power of two and a multiple of the page size")
        with self._lock:
            if length == 0:
                raise _err(errno.EINVAL, "mmap of length 0")
            length = _page_align(length)
            if length == 0 or length > TASK_SIZE:
                raise _err(errno.ENOMEM, "mmap")
            if at is not None:
                at = _u64(at, "at")
                if align and at % align:
                    raise ValueError(f"at={at:#x} is not a multiple of align={align:#x}")
                if at & (PAGE_SIZE - 1):
                    raise _err(errno.EINVAL, f"mmap at {at:#x}")
                if at > TASK_SIZE - length:
                    raise _err(errno.ENOMEM, f"mmap at {at:#x}")
                if self.mm.any_in(at, at + length):
                    raise _err(errno.EEXIST, f"mmap at {at:#x}")
                addr = at
            else:
                want = max(align, PAGE_SIZE)
                if not shared and length % PMD_SIZE == 0:
                    want = max(want, PMD_SIZE)  # thp_get_unmapped_area for PMD-multiple anon maps
                addr = self.mm.free_area(length, want)
                if addr is None:
                    raise _err(errno.ENOMEM, "mmap: no room in the address space")
            vma = Vma(addr, addr + length, prot & 0xF, shared=shared, noreserve=noreserve, pgoff=addr >> PAGE_SHIFT)
            self.mm.insert(vma)
            self.mm.merge_at(addr)
            return addr

    def munmap(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        with self._lock:
            if addr & (PAGE_SIZE - 1) or length == 0:
                raise _err(errno.EINVAL, f"munmap {addr:#x}+{length:#x}")
            length = _page_align(length)
            if length == 0 or addr > TASK_SIZE or length > TASK_SIZE - addr:
                raise _err(errno.EINVAL, f"munmap {addr:#x}+{length:#x}")
            self._await_events(self._unmap_range(addr, addr + length))

    def _unmap_range(self, start: int, end: int) -> list:
        """Unmap ``[start, end)``; returns the UNMAP events queued for uffds that asked for them
        (the caller waits for them once the unmap is done, as userfaultfd_unmap_complete does)."""
        vmas = self._isolate(start, end)
        events = []
        for vma in vmas:
            uffd = vma.uffd
            if (uffd is not None and uffd.requested_features & UFFD_FEATURE_EVENT_UNMAP
                    and not any(u is uffd for u, _ in events)):
                events.append((uffd, self._queue_event(uffd, "unmap", start, end)))
            self._zap(vma.start, vma.end, reclaim=False)
            self.mm.remove(vma)
        if vmas:
            self._free_pgtables(start, end)
        return events

    def _await_events(self, events: list) -> None:
        for uffd, event in events:
            self._await_event(uffd, event)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        prot = _c_int(prot, "prot")
        with self._lock:
            if addr & (PAGE_SIZE - 1):
                raise _err(errno.EINVAL, f"mprotect {addr:#x}")
            if length == 0:
                return
            length = _page_align(length)
            if length == 0 or addr + length > U64_MAX:
                raise _err(errno.ENOMEM, f"mprotect {addr:#x}+{length:#x}")
            if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | _PROT_SEM):
                raise _err(errno.EINVAL, f"mprotect prot={prot:#x}")
            self._apply_to_range(addr, addr + length, {"prot": prot & 0x7}, "mprotect",
                                 then=self._populate_for_write)

    def _populate_for_write(self, was: Vma, lo: int, hi: int) -> None:
        """mprotect_fixup: a locked private VMA that gains write access is populated for
        writing at once (COW broken now, not at the first store); failures are ignored."""
        now = self.mm.find(lo)
        if (was.locked and not was.shared and not was.prot & PROT_WRITE
                and now is not None and now.prot & PROT_WRITE):
            try:
                self._populate(lo, hi)
            except OSError:
                pass

    def _modify(self, vma: Vma, lo: int, hi: int, updates: dict) -> None:
        """vma_modify: set ``updates`` on ``[lo, hi)`` of ``vma``, splitting it (and a huge PMD
        across the new boundary), then merging the changed piece with its neighbours. Only if
        something actually changes: Linux skips a VMA whose flags would stay the same."""
        if all(getattr(vma, name) == value for name, value in updates.items()):
            return
        for piece in self._isolate(lo, hi):
            self.mm.update(piece, updates)
        self.mm.merge_at(lo)

    def _apply_to_range(self, start: int, end: int, updates: dict, what: str, then=None) -> None:
        """Change the VMAs of ``[start, end)`` in order; ENOMEM at the first hole (earlier ones stay changed).

        ``then(old, lo, hi)`` runs after each VMA's change, with a copy of the VMA as it was.
        """
        first = self.mm.find(start)
        if first is None:
            raise _err(errno.ENOMEM, f"{what}: {start:#x} is not mapped")
        cursor = start
        hole = False
        for vma in list(self.mm.overlapping(start, end)):
            if vma.start > cursor:
                hole = True
                break
            lo, hi = max(vma.start, start), min(vma.end, end)
            was = vma.copy()
            self._modify(vma, lo, hi, updates)
            if then is not None:
                then(was, lo, hi)
            cursor = hi
        if hole or cursor < end:
            raise _err(errno.ENOMEM, f"{what}: {cursor:#x} is not mapped")

    def madvise(self, addr: int, length: int, advice: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        advice = _c_int(advice, "advice")
        with self._lock:
            if advice not in _VALID_ADVICE:
                raise _err(errno.EINVAL, f"madvise advice {advice}")
            if addr & (PAGE_SIZE - 1):
                raise _err(errno.EINVAL, f"madvise {addr:#x}")
            end = addr + _page_align(length)
            if length and end == addr or end > U64_MAX:
                raise _err(errno.EINVAL, f"madvise {addr:#x}+{length:#x}")
            if end == addr:
                return
            unmapped = False
            cursor = addr
            for vma in list(self.mm.overlapping(addr, end)):
                if vma.start > cursor:
                    unmapped = True
                lo, hi = max(vma.start, addr), min(vma.end, end)
                if self.mm.find(lo) is not vma:  # changed while we waited for a monitor
                    vma = self.mm.find(lo)
                    if vma is None:
                        raise _err(errno.ENOMEM, f"madvise {addr:#x}+{length:#x}: unmapped meanwhile")
                    hi = min(vma.end, hi)
                vma = self._userfaultfd_remove(vma, lo, hi, advice)
                if vma is None:
                    raise _err(errno.ENOMEM, f"madvise {addr:#x}+{length:#x}: unmapped meanwhile")
                self._madvise_vma(vma, lo, min(hi, vma.end), advice)
                cursor = hi
            if cursor < end:
                unmapped = True
            if unmapped:
                raise _err(errno.ENOMEM, f"madvise {addr:#x}+{length:#x}: part of the range is not mapped")

    def _userfaultfd_remove(self, vma: Vma, lo: int, hi: int, advice: int) -> Vma | None:
        """UFFD_EVENT_REMOVE before MADV_DONTNEED/FREE zaps a registered range (if the uffd asked
        for it): wait for the monitor to read it, then look the VMA up again."""
        uffd = vma.uffd
        if (advice not in (MADV_DONTNEED, MADV_FREE) or uffd is None
                or not uffd.requested_features & UFFD_FEATURE_EVENT_REMOVE or vma.locked):
            return vma
        self._await_event(uffd, self._queue_event(uffd, "remove", lo, hi))
        return self.mm.find(lo)

    def _madvise_vma(self, vma: Vma, lo: int, hi: int, advice: int) -> None:
        if advice == MADV_DONTNEED:
            if vma.locked:
                raise _err(errno.EINVAL, "madvise(MADV_DONTNEED) on locked memory")
            self._zap(lo, hi, reclaim=True)
        elif advice == MADV_FREE:
            if vma.locked or vma.shared:
                raise _err(errno.EINVAL, "madvise(MADV_FREE) on locked or shared memory")
            self._madv_free(lo, hi)
        elif advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            self._modify(vma, lo, hi, {"hugepage": advice})
        elif advice in (MADV_DONTFORK, MADV_DOFORK):
            self._modify(vma, lo, hi, {"dontfork": advice == MADV_DONTFORK})

    def _madv_free(self, lo: int, hi: int) -> None:
        """MADV_FREE: no memory pressure in the sim, so lazily freed pages are never
        reclaimed; only the splits are visible. A THP the range covers in part has its
        PMD split; then a large folio of which the range maps fewer pages than it has
        (in one run of consecutive pages) is split, unless another process maps it."""
        for region in range(lo >> PMD_SHIFT, ((hi - 1) >> PMD_SHIFT) + 1):
            start = region << PMD_SHIFT
            kind = self.pt.kind_of(region)
            if kind == THP and not (lo <= start and start + PMD_SIZE <= hi):
                row = self.pt.row(region)
                if self._maybe_mapped_shared(int(self.pt.pte[row, 0])):
                    continue  # madvise_free_huge_pmd leaves a THP a child maps too alone
                self._split_pmd(region)
                kind = TABLE
            if kind == TABLE:
                self._madv_free_ptes(region, max(lo, start), min(hi, start + PMD_SIZE))

    def _madv_free_ptes(self, region: int, lo: int, hi: int) -> None:
        """madvise_free_pte_range over one PTE table: split the large folios it covers in part."""
        row = self.pt.row(region)
        i, end = (lo >> PAGE_SHIFT) & IDX_MASK, ((hi - 1) >> PAGE_SHIFT & IDX_MASK) + 1
        fr = self.frames
        while i < end:
            frame = int(self.pt.pte[row, i])
            if frame < FIRST_FRAME or fr.nr[frame] == 1:
                i += 1
                continue
            head = int(fr.head[frame])
            nr = int(fr.nr[head])
            # the batch: consecutive PTEs mapping consecutive pages of this folio
            want = frame + np.arange(min(end - i, head + nr - frame))
            got = self.pt.pte[row, i:i + want.size]
            run = want.size if (got == want).all() else int(np.argmin(got == want))
            if run < nr and not self._maybe_mapped_shared(head):
                self._split_folio(frame)
                continue  # the same PTE again, now order-0 (or the zero page)
            i += run

    def _maybe_mapped_shared(self, head: int) -> bool:
        """folio_maybe_mapped_shared: another process (a forked child) maps a page of it."""
        return bool((self.frames.mapcount[head:head + int(self.frames.nr[head])] > 1).any())

    def mlock(self, addr: int, length: int, *, onfault: bool = False) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        with self._lock:
            start, end = self._lock_range(addr, length)
            if end == start:
                return
            self._apply_to_range(start, end, {"locked": True, "lockonfault": bool(onfault)}, "mlock")
            if not onfault:
                self._populate(start, end)

    def munlock(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        with self._lock:
            start, end = self._lock_range(addr, length)
            if end == start:
                return
            self._apply_to_range(start, end, {"locked": False, "lockonfault": False}, "munlock")

    @staticmethod
    def _lock_range(addr: int, length: int) -> tuple[int, int]:
        start = addr & PAGE_MASK
        end = start + _page_align(length + (addr - start))
        if end > U64_MAX + 1 or end < start:
            raise _err(errno.EINVAL, "mlock range wraps")
        return start, end

    def _populate(self, start: int, end: int) -> None:
        """__mm_populate for mlock: fault every page in, write faults for private writable VMAs.

        Stops at the first failure and reports it as mlock does (EFAULT -> ENOMEM).
        """
        addr = start
        while addr < end:
            vma = self.mm.find(addr)
            if vma is None:
                nxt = self.mm.overlapping(addr, end)
                if not nxt:
                    return
                addr = nxt[0].start
                continue
            stop = min(vma.end, end)
            if vma.lockonfault:
                addr = stop
                continue
            if not vma.prot & (PROT_READ | PROT_WRITE | PROT_EXEC):
                raise _err(errno.ENOMEM, f"mlock: cannot populate PROT_NONE memory at {addr:#x}")
            write = bool(vma.prot & PROT_WRITE) and not vma.shared
            for page in range(addr, stop, PAGE_SIZE):
                try:
                    self._fault(page, write, user=False)
                except OSError:
                    raise _err(errno.ENOMEM, f"mlock: cannot populate {page:#x}") from None
            addr = stop

    def mremap(self, old_addr: int, length: int, new_addr: int, *, dontunmap: bool = False) -> int:
        """mremap(MREMAP_MAYMOVE|MREMAP_FIXED[|MREMAP_DONTUNMAP]) with old_len == new_len.

        Since 6.17 such a pure move may span several VMAs (gaps between them
        are kept), unless one is registered with a userfaultfd.
        """
        old_addr, length, new_addr = _u64(old_addr, "old_addr"), _u64(length, "length"), _u64(new_addr, "new_addr")
        with self._lock:
            what = f"mremap {old_addr:#x}+{length:#x} -> {new_addr:#x}"
            if old_addr & (PAGE_SIZE - 1):
                raise _err(errno.EINVAL, what)
            length = _page_align(length)
            if length == 0 or length > TASK_SIZE or new_addr > TASK_SIZE - length or new_addr & (PAGE_SIZE - 1):
                raise _err(errno.EINVAL, what)
            if old_addr + length > new_addr and new_addr + length > old_addr:
                raise _err(errno.EINVAL, what + ": the ranges overlap")
            start, end = old_addr, old_addr + length
            pieces = [(v.start, v.end, v.uffd is not None) for v in self.mm.overlapping(start, end)]
            if not pieces or pieces[0][0] > start:
                raise _err(errno.EFAULT, what)
            result = None
            target = new_addr
            last_end = 0
            events = []
            for i, (vstart, vend, armed) in enumerate(pieces):
                lo, hi = max(vstart, start), min(vend, end)
                dst = target + (vstart - last_end if i else 0)
                last_end = vend
                if armed and (i > 0 or vend < end):
                    raise _err(errno.EFAULT, what + ": cannot move several VMAs when one is registered with a uffd")
                events += self._unmap_range(dst, dst + (hi - lo))
                if self.mm.find(lo) is None:
                    raise _err(errno.EFAULT, what)
                events += self._move_vma(lo, dst, hi - lo, dontunmap)
                if result is None:
                    result = dst
                target = dst + (hi - lo)
            self._await_events(events)
            return result

    def _move_vma(self, old: int, new: int, length: int, dontunmap: bool) -> list:
        if dontunmap:
            vma = self.mm.find(old)  # DONTUNMAP leaves the old VMA whole
            self._split_boundary(old)
            self._split_boundary(old + length)
        else:
            [vma] = self._isolate(old, old + length)
        # copy_vma: the new VMA keeps anon_vma, and pgoff unless it never had an anon_vma
        # (then pgoff follows the new address, so it may merge with its new neighbours).
        # It merges still carrying the uffd registration; the registration is then kept
        # only if the uffd asked for UFFD_FEATURE_EVENT_REMAP (which gets a REMAP event),
        # else dropped from the whole merged VMA (mremap_userfaultfd_prep).
        uffd = vma.uffd
        remap = uffd is not None and bool(uffd.requested_features & UFFD_FEATURE_EVENT_REMAP)
        pgoff = vma.pgoff + ((old - vma.start) >> PAGE_SHIFT) if vma.anon_vma is not None else new >> PAGE_SHIFT
        moved = vma.copy(start=new, end=new + length, pgoff=pgoff)
        events = [(uffd, self._queue_event(uffd, "remap", old, new))] if remap else []
        self.mm.insert(moved)
        self._move_page_tables(old, new, length, whole_tables=uffd is None or remap)
        if dontunmap:
            # VM_LOCKED cleared on the old VMA in place: Linux does not try to merge it
            self.mm.update(vma, {"locked": False, "lockonfault": False})
            if vma.start == old and vma.end == old + length:
                vma.anon_vma = None
        else:
            self.mm.remove(vma)
            self._free_pgtables(old, old + length)
        merged = self.mm.merge_at(new)
        if uffd is not None and not remap:
            self.mm.update(merged, {"uffd": None, "uffd_mode": 0})
        return events

    def _move_page_tables(self, old: int, new: int, length: int, whole_tables: bool) -> None:
        """move_page_tables: whole PMD entries where both sides allow it, else PTE by PTE.

        ``whole_tables``: a PTE table may move as one PMD entry (not when the
        old VMA is registered with a uffd lacking EVENT_REMAP).
        """
        done = 0
        while done < length:
            src, dst = old + done, new + done
            extent = min(PMD_SIZE - (src & (PMD_SIZE - 1)), PMD_SIZE - (dst & (PMD_SIZE - 1)), length - done)
            sreg, dreg = src >> PMD_SHIFT, dst >> PMD_SHIFT
            row = self.pt.row(sreg)
            if row >= 0:
                kind = self.pt.kind[row]
                huge = kind in (THP, HUGE_ZERO)
                if extent == PMD_SIZE and self.pt.row(dreg) < 0 and (huge or whole_tables):
                    self.pt.move_row(sreg, dreg)
                else:
                    if huge:
                        self._split_pmd(sreg)
                    drow = self.pt.table(dreg)
                    n = extent >> PAGE_SHIFT
                    si, di = (src >> PAGE_SHIFT) & IDX_MASK, (dst >> PAGE_SHIFT) & IDX_MASK
                    entries = self.pt.pte[row, si:si + n].copy()
                    self.pt.pte[row, si:si + n] = NO_FRAME
                    self.pt.pte[drow, di:di + n] = entries
            done += extent

    # ------------------------------------------------------------------------------
    # page faults
    # ------------------------------------------------------------------------------
    def _fault(self, addr: int, write: bool, *, user: bool = True, may_block: bool = True) -> bool:
        """Handle one page fault at ``addr``.

        Returns True when the page was made accessible (or the fault blocked and
        was woken: the caller retries the access either way), False when
        ``may_block`` is False and resolving it would block or fail. Raises
        OSError(EFAULT) for an access a real process would take SIGSEGV for.
        """
        vma = self.mm.find(addr)
        need = PROT_WRITE if write else (PROT_READ | PROT_WRITE | PROT_EXEC)
        if vma is None or not vma.prot & need:
            if not may_block:
                return False
            raise _err(errno.EFAULT, f"{'write' if write else 'read'} at {addr:#x}: "
                       f"{'not mapped' if vma is None else 'not permitted by the protection'} (SIGSEGV)")
        region = addr >> PMD_SHIFT
        idx = (addr >> PAGE_SHIFT) & IDX_MASK
        row = self.pt.row(region)
        if row < 0:
            if self._thp_eligible(vma, region):
                if self._missing_registered(vma):
                    return self._userfault(vma, addr, write, user, may_block)
                self._huge_fault(vma, region, write)
                return True
            row = self.pt.table(region)
        kind = self.pt.kind[row]
        if kind == HUGE_ZERO:
            if write:
                self._drop_row(region)
                self._huge_fault(vma, region, True)
            return True
        if kind == THP:
            if not write:
                return True
            head = int(self.pt.pte[row, 0])
            folio = slice(head, head + PTRS_PER_PMD)
            if self.frames.excl[head]:
                return True
            if (self.frames.mapcount[folio] == 1).all():
                self.frames.excl[folio] = True  # reuse: nobody else maps it any more
                return True
            self._split_pmd(region)  # COW of one page out of a shared THP
        frame = int(self.pt.pte[row, idx])
        if frame == NO_FRAME:
            if self._missing_registered(vma):
                return self._userfault(vma, addr, write, user, may_block)
            if vma.shared:
                self.pt.pte[row, idx] = self.frames.alloc_page(shmem=True)
            elif write:
                self.pt.pte[row, idx] = self.frames.alloc_page(anon_vma=self._anon_vma(vma))
            else:
                self.pt.pte[row, idx] = ZERO_FRAME
            self.counters.demand_faults += 1
            return True
        if not write:
            return True
        self._write_fault(vma, row, idx, frame)
        return True

    def _drop_row(self, region: int) -> None:
        row = self.pt.row(region)
        self._release_entries(self.pt.pte[row])
        self.pt.drop(region)

    def _huge_fault(self, vma: Vma, region: int, write: bool) -> None:
        if write:
            head = self.frames.alloc_thp(anon_vma=self._anon_vma(vma))
            row = self.pt.install(region, THP)
            self.pt.pte[row] = np.arange(head, head + PTRS_PER_PMD)
        else:
            row = self.pt.install(region, HUGE_ZERO)
            self.pt.pte[row] = np.arange(HUGE_ZERO_BASE, HUGE_ZERO_BASE + PTRS_PER_PMD)
        self.counters.demand_faults += 1

    def _write_fault(self, vma: Vma, row: int, idx: int, frame: int) -> None:
        """A write to a present page that is not writable: zero page, or COW-shared."""
        fr = self.frames
        if frame >= FIRST_FRAME and (fr.excl[frame] or fr.shmem[frame]):
            return
        self.counters.demand_faults += 1
        if frame >= FIRST_FRAME and fr.mapcount[frame] == 1 and fr.pins[frame] == 0:
            fr.excl[frame] = True  # wp_can_reuse_anon_folio: the other mappers are gone
            return
        new = fr.alloc_page(anon_vma=self._anon_vma(vma))
        if frame >= FIRST_FRAME:
            fr.copy_contents(np.array([new]), np.array([frame]))
            self.counters.bytes_copied += PAGE_SIZE
            fr.unmap(np.array([frame]))
        self.pt.pte[row, idx] = new

    def _userfault(self, vma: Vma, addr: int, write: bool, user: bool, may_block: bool) -> bool:
        if not may_block:
            return False
        uffd = vma.uffd
        if not user and uffd.user_mode_only:
            # handle_userfault refuses kernel-mode faults for UFFD_USER_MODE_ONLY contexts (SIGBUS).
            raise _err(errno.EFAULT, f"kernel-mode fault at {addr:#x} in a user-mode-only userfaultfd range")
        if uffd.requested_features & UFFD_FEATURE_SIGBUS:
            return self._sigbus(addr, user)
        with _SignalsHeld():  # before the waiter is queued: a signal while holding them ends nothing half done
            waiter = Waiter(uffd, addr & PAGE_MASK, write)
            self._waiters.append(waiter)
            self.counters.faults_raised += 1
            self._cond.notify_all()
            try:
                while not waiter.woken:
                    self._cond.wait()
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return True

    def _sigbus(self, addr: int, user: bool) -> bool:
        """UFFD_FEATURE_SIGBUS: handle_userfault never queues the fault (VM_FAULT_SIGBUS). A
        kernel-mode access fails with EFAULT; a user-mode one takes SIGBUS in the faulting
        thread: the handler runs there, kernel lock released, and the access is retried (the
        instruction runs again); with no handler, the default action (EFAULT here)."""
        handler = self.sigbus_handler
        self.counters.sigbus_raised += 1
        if not user or handler is None:
            raise _err(errno.EFAULT, f"{'kernel-mode fault' if not user else 'SIGBUS'} at {addr:#x}: a missing page "
                       "in a UFFD_FEATURE_SIGBUS userfaultfd range")
        self._lock.release()
        try:
            with _SignalsHeld():  # as on Linux: Python's handlers run once the access (one C call) returns
                handler(addr)
        finally:
            self._lock.acquire()
        return True

    def sigaction_sigbus(self, handler):
        """Install the process's SIGBUS handler (``fn(address)``, run in the faulting thread;
        None: the default action); returns the one installed before, as sigaction does."""
        with self._lock:
            before, self.sigbus_handler = self.sigbus_handler, handler
        return before

    def _queue_event(self, uffd, kind: str, start: int, end: int) -> NonCoopEvent:
        """Queue a non-cooperative event on ``uffd``: mmap_changing stays raised until it is read."""
        event = NonCoopEvent(kind, start, end)
        uffd.events.append(event)
        uffd.mmap_changing += 1
        self._cond.notify_all()
        return event

    def _await_event(self, uffd, event: NonCoopEvent) -> None:
        """userfaultfd_event_wait_completion: sleep (lock released) until the event is read or the uffd closed."""
        with _SignalsHeld():
            try:
                while not event.read and not uffd.closed:
                    self._cond.wait()
            finally:
                uffd.mmap_changing -= 1

    def _wake(self, uffd, start: int, length: int, served: bool = True) -> None:
        end = start + length
        hit = False
        for w in self._waiters:
            if w.uffd is uffd and not w.woken and start <= w.address < end:
                w.woken = True
                hit = True
                if served:
                    self.counters.faults_served += 1
        if hit:
            self._waiters = [w for w in self._waiters if not w.woken]
            self._cond.notify_all()

    # ------------------------------------------------------------------------------
    # user-mode memory access
    # ------------------------------------------------------------------------------
    def _accessible(self, pages: np.ndarray, write: bool) -> tuple[np.ndarray, np.ndarray]:
        """(frames, ok) for virtual page numbers: ok where the access needs no fault."""
        if self.mm.arrays()[0].size == 0:
            return np.full(pages.size, NO_FRAME, dtype=np.int64), np.zeros(pages.size, dtype=bool)
        pages = pages.astype(np.int64)
        frames = self.pt.frames_at(pages)
        return frames, self._prot_allows(pages, write) & self._frames_allow(frames, write)

    def _resolve(self, bad_pages: np.ndarray, write: bool, user: bool = True) -> None:
        """Fault in ``bad_pages`` (in order of first use); only the first may block or raise.

        The access would stop at the first of the others that cannot be resolved
        without blocking or failing, so none after it is touched.
        """
        if bad_pages.size == 0:
            return
        _, first = np.unique(bad_pages, return_index=True)
        order = bad_pages[np.sort(first)]
        self._fault(int(order[0]) << PAGE_SHIFT, write, user=user)
        rest = order[1:]
        if rest.size > 16:
            rest = rest[:self._resolvable_prefix(rest, write)]
            rest = rest[~self._bulk_fill(rest, write)]
        for page in rest.tolist():
            if not self._fault(page << PAGE_SHIFT, write, user=user, may_block=False):
                return

    def _resolvable_prefix(self, pages: np.ndarray, write: bool) -> int:
        """How many of ``pages`` come before the first whose fault would fail (no VMA,
        protection) or block (a missing page in a MISSING-registered VMA)."""
        stop = ~self._prot_allows(pages, write)
        missing = self.pt.frames_at(pages) == NO_FRAME
        if missing.any():
            starts = self.mm.arrays()[0]
            vi = np.maximum(np.searchsorted(starts, pages[missing] << PAGE_SHIFT, side="right") - 1, 0)
            armed = np.array([self._missing_registered(v) for v in self.mm.vmas], dtype=bool)
            stop[missing] |= armed[vi]
        return pages.size if not stop.any() else int(np.argmax(stop))

    def _bulk_fill(self, pages: np.ndarray, write: bool) -> np.ndarray:
        """Demand-fill, at once, the pages whose fault is the plain one: missing, at PTE level, in
        a private VMA that allows the access and is not registered MISSING. Returns which it filled
        (the others go through ``_fault`` one by one: THP first touch, COW, userfaults...)."""
        vmas = self.mm.vmas
        starts, ends, prots = self.mm.arrays()
        addrs = pages << PAGE_SHIFT
        vi = np.searchsorted(starts, addrs, side="right") - 1
        vic = np.maximum(vi, 0)
        need = PROT_WRITE if write else (PROT_READ | PROT_WRITE | PROT_EXEC)
        plain_vma = np.array([not v.shared and not self._missing_registered(v) for v in vmas], dtype=bool)
        simple = (vi >= 0) & (addrs < ends[vic]) & ((prots[vic] & need) != 0) & plain_vma[vic]
        regions = pages >> (PMD_SHIFT - PAGE_SHIFT)
        rows = self.pt.rows_for(regions)
        fresh = simple & (rows < 0)
        if fresh.any():
            uniq, at = np.unique(regions[fresh], return_index=True)
            for region, i in zip(uniq.tolist(), np.flatnonzero(fresh)[at].tolist()):
                if not self._thp_eligible(vmas[int(vi[i])], region):
                    self.pt.table(region)  # pte_alloc, as the first fault in the region would
        rows = self.pt.rows_for(regions)
        rc = np.maximum(rows, 0)
        idx = pages & IDX_MASK
        simple &= (rows >= 0) & (self.pt.kind[rc] == TABLE) & (self.pt.pte[rc, idx] == NO_FRAME)
        n = int(simple.sum())
        if n == 0:
            return simple
        if write:
            avs = np.zeros(len(vmas), dtype=np.int64)
            for i in np.unique(vic[simple]).tolist():  # anon_vma_prepare, only where a page lands
                avs[i] = self._anon_vma(vmas[i])
            new = self.frames.alloc_pages(n)
            self.frames.anon_vma[new] = avs[vic[simple]]
            self.pt.pte[rc[simple], idx[simple]] = new
        else:
            self.pt.pte[rc[simple], idx[simple]] = ZERO_FRAME
        self.counters.demand_faults += n
        return simple

    def _pool_ready(self) -> None:
        self.frames.content.ensure()

    def load(self, addr: int, length: int) -> bytes:
        """Read ``length`` bytes at ``addr``, page by page in address order: a fault that
        cannot be resolved raises EFAULT, with the pages before it faulted in (a read fault
        maps the zero page) and none after it touched, as LinuxKernel.load does."""
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        if addr + length > U64_MAX + 1:
            raise _err(errno.EFAULT, f"load {addr:#x}+{length:#x} wraps around")
        if length == 0:
            return b""
        if length > MAX_LOAD:
            raise ValueError(f"length={length:#x} is larger than one load may read ({MAX_LOAD:#x})")
        first, last = addr >> PAGE_SHIFT, (addr + length - 1) >> PAGE_SHIFT
        pages = np.arange(first, last + 1, dtype=np.int64)
        with self._lock:
            while True:
                frames, ok = self._accessible(pages, False)
                if ok.all():
                    break
                self._resolve(pages[~ok], False)
            self._pool_ready()
            slots = self.frames.slot[frames]
            data = self.frames.content.pages[slots].reshape(-1)
        off = addr - (first << PAGE_SHIFT)
        return data[off:off + length].tobytes()

    def store(self, addr: int, data) -> None:
        """Write ``data`` at ``addr``, page by page in address order: a fault that cannot be
        resolved raises EFAULT with exactly the pages before the faulting one written and
        none after it touched, as LinuxKernel.store does."""
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise ArgumentTypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
        addr, length = _u64(addr, "addr"), len(view)
        if addr + length > U64_MAX + 1:
            raise _err(errno.EFAULT, f"store {addr:#x}+{length:#x} wraps around")
        if length == 0:
            return
        src = np.frombuffer(view, dtype=np.uint8)
        first, last = addr >> PAGE_SHIFT, (addr + length - 1) >> PAGE_SHIFT
        pages = np.arange(first, last + 1, dtype=np.int64)
        done = 0  # pages fully handled so far (their bytes are written)
        with self._lock:
            while done < pages.size:
                frames, ok = self._accessible(pages[done:], True)
                stop = pages.size - done if ok.all() else int(np.argmin(ok))
                if stop:
                    self._write_pages(addr, first, src, done, done + stop, frames[:stop])
                    done += stop
                if done < pages.size:
                    self._resolve(pages[done:][~ok[stop:]], True)

    def _write_pages(self, addr: int, first_page: int, src: np.ndarray, lo: int, hi: int,
                     frames: np.ndarray) -> None:
        """Write the bytes of ``src`` that fall in pages [lo, hi) (indices from ``first_page``)."""
        slots = self.frames.writable_slots(frames)
        base = first_page << PAGE_SHIFT
        start = max(addr, base + (lo << PAGE_SHIFT))
        end = min(addr + src.size, base + (hi << PAGE_SHIFT))
        flat_lo = start - (base + (lo << PAGE_SHIFT))
        buf = self.frames.content.pages[slots].reshape(-1)
        buf[flat_lo:flat_lo + (end - start)] = src[start - addr:end - addr]
        self.frames.content.pages[slots] = buf.reshape(slots.size, PAGE_SIZE)

    def _span_pages(self, pmin: int, pmax: int, write: bool) -> tuple[np.ndarray, np.ndarray]:
        """(frames, ok) for every page in [pmin, pmax]: computed per page, not per address."""
        pages = np.arange(pmin, pmax + 1, dtype=np.int64)
        r0, r1 = pmin >> (PMD_SHIFT - PAGE_SHIFT), pmax >> (PMD_SHIFT - PAGE_SHIFT)
        rows = self.pt.rows_for(np.arange(r0, r1 + 1, dtype=np.int64))
        table = self.pt.pte[np.maximum(rows, 0)]
        table[rows < 0] = NO_FRAME
        off = pmin - (r0 << (PMD_SHIFT - PAGE_SHIFT))
        frames = table.reshape(-1)[off:off + pages.size]
        ok = self._vma_ok(pages, write)
        return frames, ok & self._frames_allow(frames, write)

    def _frames_allow(self, frames: np.ndarray, write: bool) -> np.ndarray:
        """Where the mapped frame serves the access without a fault: a read needs
        any frame (the zero page too), a write one this mm owns alone (or shmem)."""
        if not write:
            return frames != NO_FRAME
        real = frames >= FIRST_FRAME
        fc = np.where(real, frames, 0)
        return real & (self.frames.excl[fc] | self.frames.shmem[fc])

    def _vma_ok(self, pages: np.ndarray, write: bool) -> np.ndarray:
        """Where the VMA's protection allows the access (``pages`` ascending)."""
        if self.mm.arrays()[0].size == 0:
            return np.zeros(pages.size, dtype=bool)
        need = PROT_WRITE if write else (PROT_READ | PROT_WRITE | PROT_EXEC)
        lo, hi = int(pages[0]) << PAGE_SHIFT, (int(pages[-1]) + 1) << PAGE_SHIFT
        vma = self.mm.find(lo)
        if vma is not None and hi <= vma.end:  # the common case: one VMA covers them all
            return np.full(pages.size, bool(vma.prot & need))
        return self._prot_allows(pages, write)

    def _prot_allows(self, pages: np.ndarray, write: bool) -> np.ndarray:
        """Where a VMA covers the page and its protection allows the access (any order)."""
        starts, ends, prots = self.mm.arrays()
        need = PROT_WRITE if write else (PROT_READ | PROT_WRITE | PROT_EXEC)
        addrs = pages << PAGE_SHIFT
        vi = np.searchsorted(starts, addrs, side="right") - 1
        vic = np.maximum(vi, 0)
        return (vi >= 0) & (addrs < ends[vic]) & ((prots[vic] & need) != 0)

    def _word_index(self, words: np.ndarray, write: bool) -> tuple[np.ndarray, int, np.ndarray]:
        """Pool word index for each word number (addr >> 3) of ``words``, as far as no fault is needed.

        Returns (index for words[:stop], stop, the faulting page numbers of words[stop:]).
        """
        wpp = PAGE_SIZE // 8
        pages = words >> (PAGE_SHIFT - 3)
        pmin, pmax = int(pages.min()), int(pages.max())
        span = pmax - pmin + 1
        if span <= max(4 * words.size, 1 << 16):
            frames, ok = self._span_pages(pmin, pmax, write)
            rel = pages - pmin
            if ok.all():
                stop = words.size
            else:
                ok_w = ok[rel]
                stop = words.size if ok_w.all() else int(np.argmin(ok_w))
                frames_w_bad = pages[stop:][~ok_w[stop:]]
            fr_pref = frames[rel[:stop]] if stop < words.size else frames[rel]
        else:
            fr_all, ok_w = self._accessible(pages, write)
            stop = words.size if ok_w.all() else int(np.argmin(ok_w))
            frames_w_bad = pages[stop:][~ok_w[stop:]]
            fr_pref = fr_all[:stop]
        if write:
            slots = self.frames.writable_slots(fr_pref)
        else:
            self._pool_ready()
            slots = self.frames.slot[fr_pref]
        idx = slots * wpp + (words[:stop] & (wpp - 1))
        bad = frames_w_bad if stop < words.size else np.empty(0, dtype=np.int64)
        return idx, stop, bad

    def load_words(self, addrs) -> np.ndarray:
        addrs = _u64_array(addrs, "addrs")
        out = np.empty(addrs.size, dtype=np.uint64)
        if addrs.size == 0:
            return out
        if (addrs & np.uint64(7)).any():
            for i, a in enumerate(addrs.tolist()):
                out[i] = int.from_bytes(self.load(a, 8), "little")
            return out
        if self.compiled:
            return self._load_words_compiled(np.ascontiguousarray(addrs), out)
        words = (addrs >> np.uint64(3)).view(np.int64)
        with self._lock:
            for i, idx in self._word_runs(words, False):
                out[i:i + idx.size] = self.frames.content.flat_words[idx]
        return out

    def store_words(self, addrs, values) -> None:
        addrs = _u64_array(addrs, "addrs")
        values = _u64_array(values, "values")
        if addrs.size != values.size:
            raise ValueError(f"{addrs.size} addresses but {values.size} values")
        if addrs.size == 0:
            return
        if (addrs & np.uint64(7)).any():
            for a, v in zip(addrs.tolist(), values.tolist()):
                self.store(a, int(v).to_bytes(8, "little"))
            return
        if self.compiled:
            return self._store_words_compiled(np.ascontiguousarray(addrs), np.ascontiguousarray(values))
        words = (addrs >> np.uint64(3)).view(np.int64)
        with self._lock:
            for i, idx in self._word_runs(words, True):
                self.frames.content.flat_words[idx] = values[i:i + idx.size]

    def _word_runs(self, words: np.ndarray, write: bool):
        """(offset, pool word index) of each run of ``words`` reachable without a fault, in
        order; the fault before the next run is taken once the caller has used this one."""
        i = 0
        while i < words.size:
            idx, stop, bad = self._word_index(words[i:], write)
            if stop:
                yield i, idx
                i += stop
            if i < words.size:
                self._resolve(bad, write)

    def _span_of(self, addrs: np.ndarray) -> tuple[int, int] | None:
        """(first page, last page) of ``addrs`` when a per-page table over them is small enough."""
        pmin = int(addrs.min()) >> PAGE_SHIFT
        pmax = int(addrs.max()) >> PAGE_SHIFT
        if pmax - pmin + 1 <= max(4 * addrs.size, 1 << 16):
            return pmin, pmax
        return None

    def _word_bases(self, pmin: int, pmax: int, write: bool, hit: np.ndarray | None = None) -> np.ndarray:
        """Pool word index of each page in [pmin, pmax] (-1 where the access needs a fault).

        For a write, pages marked in ``hit`` get a content slot if they have none yet.
        """
        frames, ok = self._span_pages(pmin, pmax, write)
        if write and hit is not None:
            fresh = ok & hit.view(bool) & (self.frames.slot[np.where(ok, frames, 0)] == 0)
            if fresh.any():
                self.frames.writable_slots(frames[fresh])
        self._pool_ready()
        return np.where(ok, self.frames.slot[np.where(ok, frames, 0)] * (PAGE_SIZE // 8), -1)

    def _bad_word_pages(self, addrs: np.ndarray, pmin: int, wbase: np.ndarray) -> np.ndarray:
        pages = (addrs >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        return pages[wbase[pages - pmin] < 0]

    def _load_words_compiled(self, addrs: np.ndarray, out: np.ndarray) -> np.ndarray:
        span = self._span_of(addrs)
        with self._lock:
            i = 0
            while i < addrs.size:
                if span is None:  # too spread out for a page table: one page at a time
                    frames, ok = self._accessible(addrs[i:i + 1].astype(np.int64) >> PAGE_SHIFT, False)
                    if not ok[0]:
                        self._resolve(addrs[i:i + 1].astype(np.int64) >> PAGE_SHIFT, False)
                        continue
                    self._pool_ready()
                    out[i] = self.frames.content.flat_words[int(self.frames.slot[frames[0]]) * (PAGE_SIZE // 8)
                                                            + ((int(addrs[i]) & (PAGE_SIZE - 1)) >> 3)]
                    i += 1
                    continue
                pmin, pmax = span
                wbase = self._word_bases(pmin, pmax, False)
                i += native.load_words(self.frames.content.flat_words, wbase, pmin, addrs[i:], out[i:])
                if i < addrs.size:
                    self._resolve(self._bad_word_pages(addrs[i:], pmin, wbase), False)
        return out

    def _store_words_compiled(self, addrs: np.ndarray, values: np.ndarray) -> None:
        span = self._span_of(addrs)
        if span is None:
            for a, v in zip(addrs.tolist(), values.tolist()):
                self.store(a, int(v).to_bytes(8, "little"))
            return
        pmin, pmax = span
        with self._lock:
            hit = np.zeros(pmax - pmin + 1, dtype=np.uint8)
            native.mark_pages(addrs, pmin, hit)
            i = 0
            while i < addrs.size:
                wbase = self._word_bases(pmin, pmax, True, hit)
                i += native.store_words(self.frames.content.flat_words, wbase, pmin, addrs[i:], values[i:])
                if i < addrs.size:
                    self._resolve(self._bad_word_pages(addrs[i:], pmin, wbase), True)

    def _copy_compiled(self, dsts: np.ndarray, srcs: np.ndarray, lengths: np.ndarray) -> bool:
        """copy_ranges through the compiled loop; False when the spans are too spread out."""
        s_span = self._span_of(np.concatenate([srcs, srcs + lengths - 1]))
        d_span = self._span_of(np.concatenate([dsts, dsts + lengths - 1]))
        if s_span is None or d_span is None:
            return False
        (s_pmin, s_pmax), (d_pmin, d_pmax) = s_span, d_span
        hit = np.zeros(d_pmax - d_pmin + 1, dtype=np.uint8)
        first = dsts >> PAGE_SHIFT
        last = (dsts + lengths - 1) >> PAGE_SHIFT
        hit[first - d_pmin] = 1
        hit[last - d_pmin] = 1
        wide = (last - first) > 1
        if wide.any():
            hit[self._range_pages(dsts[wide], lengths[wide]) - d_pmin] = 1
        s_base = self._word_bases(s_pmin, s_pmax, False) * 8
        d_base = self._word_bases(d_pmin, d_pmax, True, hit) * 8
        s_base[s_base < 0] = -1
        d_base[d_base < 0] = -1
        done = native.copy_ranges(self.frames.content.bytes, s_base, s_pmin, d_base, d_pmin, dsts, srcs, lengths)
        if done < dsts.size:  # cannot happen after _ensure_ranges; finish the slow way if it does
            self._copy_in_blocks(dsts[done:], srcs[done:], lengths[done:])
        return True

    def memmove(self, dst: int, src: int, length: int) -> None:
        dst, src, length = _u64(dst, "dst"), _u64(src, "src"), _u64(length, "length")
        if length == 0:
            return
        if dst + length > U64_MAX + 1 or src + length > U64_MAX + 1:
            raise _err(errno.EFAULT, "memmove range wraps around")
        with self._lock:
            if dst == src:  # glibc's memmove reads but does not write a range onto itself
                self._ensure_ranges(np.array([src]), np.empty(0, np.int64), np.array([length]),
                                    np.empty(0, np.int64))
                return
            self._ensure_ranges(np.array([src]), np.array([dst]), np.array([length]))
            data = self._read_locked(src, length)
            self._write_locked(dst, data)
            self.counters.user_bytes_copied += length

    def copy_ranges(self, dsts, srcs, lengths) -> None:
        dsts, srcs, lengths = (a.astype(np.int64) for a in as_ranges(dsts, srcs, lengths))
        keep = lengths > 0
        dsts, srcs, lengths = dsts[keep], srcs[keep], lengths[keep]
        if dsts.size == 0:
            return
        with self._lock:
            moving = dsts != srcs  # a range onto itself is read, not written (glibc's memmove)
            self._ensure_ranges(srcs, dsts[moving], lengths, lengths[moving])
            if not moving.all():
                dsts, srcs, lengths = dsts[moving], srcs[moving], lengths[moving]
                if dsts.size == 0:
                    return
            if self.compiled and self._copy_compiled(dsts, srcs, lengths):
                pass
            elif not ((dsts | srcs | lengths) & 7).any() and self._in_order_safe(dsts, srcs, lengths):
                self._copy_words(dsts, srcs, lengths)
            else:
                self._copy_in_blocks(dsts, srcs, lengths)
            self.counters.user_bytes_copied += int(lengths.sum())

    def _copy_in_blocks(self, dsts: np.ndarray, srcs: np.ndarray, lengths: np.ndarray, block: int = 256) -> None:
        """The memmoves in order: blocks that can be done at once vectorised, the others one by one."""
        for lo in range(0, dsts.size, block):
            d, s, n = dsts[lo:lo + block], srcs[lo:lo + block], lengths[lo:lo + block]
            if not ((d | s | n) & 7).any() and self._in_order_safe(d, s, n):
                self._copy_words(d, s, n)
                continue
            for dd, ss, nn in zip(d.tolist(), s.tolist(), n.tolist()):
                self._write_locked(dd, self._read_locked(ss, nn))

    @staticmethod
    def _in_order_safe(dsts: np.ndarray, srcs: np.ndarray, lengths: np.ndarray) -> bool:
        """Can the memmoves be done as one gather of every source then one scatter?

        True when no range reads bytes an earlier range wrote (checked
        conservatively: all earlier destinations end at or before its source,
        or all start at or after its end) and no two destinations overlap.
        A range overlapping itself is fine: gathering first is memmove's rule.
        """
        d_end = dsts + lengths
        if dsts.size > 1:
            prev_max_end = np.maximum.accumulate(d_end)[:-1]
            prev_min_start = np.minimum.accumulate(dsts)[:-1]
            later_s, later_e = srcs[1:], srcs[1:] + lengths[1:]
            if not ((prev_max_end <= later_s) | (prev_min_start >= later_e)).all():
                return False
            if (np.diff(dsts) >= 0).all():
                return bool((d_end[:-1] <= dsts[1:]).all())
            order = np.argsort(dsts, kind="stable")
            return bool((d_end[order][:-1] <= dsts[order][1:]).all())
        return True

    def _copy_words(self, dsts: np.ndarray, srcs: np.ndarray, lengths: np.ndarray) -> None:
        """Copy 8-aligned ranges whose pages are all accessible: gather every source, then scatter."""
        # Cut every range where it crosses a page boundary on either side, so
        # each piece is a contiguous run of words in one content slot.
        s_parts, d_parts, n_parts = [], [], []
        s, d, n = srcs, dsts, lengths
        while s.size:
            cut = np.minimum(PAGE_SIZE - (s & (PAGE_SIZE - 1)), PAGE_SIZE - (d & (PAGE_SIZE - 1)))
            head = np.minimum(n, cut)
            s_parts.append(s)
            d_parts.append(d)
            n_parts.append(head)
            more = n > head
            if not more.any():
                break
            s, d, n = s[more] + head[more], d[more] + head[more], n[more] - head[more]
        s = np.concatenate(s_parts) if len(s_parts) > 1 else s_parts[0]
        d = np.concatenate(d_parts) if len(d_parts) > 1 else d_parts[0]
        n = np.concatenate(n_parts) if len(n_parts) > 1 else n_parts[0]
        s_idx, _, _ = self._word_index(s >> 3, False)
        d_idx, _, _ = self._word_index(d >> 3, True)
        flat = self.frames.content.flat_words
        wpp = PAGE_SIZE // 8
        nw = (n >> 3).astype(np.uint16)
        groups = []
        whole = (nw == wpp) & (s_idx % wpp == 0) & (d_idx % wpp == 0)
        if whole.any():  # whole pages: copy slot rows
            rows = self.frames.content.words
            groups.append((rows, d_idx[whole] // wpp, rows[s_idx[whole] // wpp]))
            keep = ~whole
            s_idx, d_idx, nw = s_idx[keep], d_idx[keep], nw[keep]
        order = np.argsort(nw, kind="stable")
        counts = np.bincount(nw, minlength=PAGE_SIZE // 8 + 1)
        steps = np.arange(PAGE_SIZE // 8, dtype=np.int64)
        pos = int(counts[0])
        for width in np.flatnonzero(counts[1:]) + 1:  # every source is read before anything is written
            sel = order[pos:pos + counts[width]]
            pos += int(counts[width])
            cols = steps[:width]
            groups.append((flat, d_idx[sel][:, None] + cols, flat[s_idx[sel][:, None] + cols]))
        for target, where, words in groups:
            target[where] = words

    def _range_pages(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Every virtual page number the ranges touch, in range order."""
        first = starts >> PAGE_SHIFT
        last = (starts + lengths - 1) >> PAGE_SHIFT
        counts = last - first + 1
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(first, counts) + offsets

    def _accessible_end(self, start: int, end: int, write: bool) -> int:
        """The first page from ``start`` (below ``end``) that no VMA lets the access touch, or ``end``."""
        starts, ends, prots = self.mm.arrays()
        need = PROT_WRITE if write else (PROT_READ | PROT_WRITE | PROT_EXEC)
        i = int(np.searchsorted(starts, start, side="right")) - 1
        at = start & PAGE_MASK
        while at < end:
            if not (0 <= i < starts.size and starts[i] <= at < ends[i] and prots[i] & need):
                return at
            at, i = int(ends[i]), i + 1
        return end

    def _cut_at_first_denied_page(self, starts: np.ndarray, lengths: np.ndarray, write: bool) -> np.ndarray:
        """``lengths`` with each long range ending after its first page no VMA allows (where it faults)."""
        long = np.flatnonzero(lengths >> PAGE_SHIFT > _LONG_RANGE_PAGES)
        if long.size == 0:
            return lengths
        lengths = lengths.copy()
        for j in long.tolist():
            start, end = int(starts[j]), int(starts[j] + lengths[j])
            denied = self._accessible_end(start, end, write)
            lengths[j] = min(end, denied + PAGE_SIZE) - start
        return lengths

    def _bad_pages(self, starts: np.ndarray, lengths: np.ndarray, write: bool) -> np.ndarray:
        """Pages the ranges touch that need a fault first, in range order."""
        lengths = self._cut_at_first_denied_page(starts, lengths, write)
        first = starts >> PAGE_SHIFT
        last = (starts + lengths - 1) >> PAGE_SHIFT
        pmin, pmax = int(first.min()), int(last.max())
        if pmax - pmin + 1 <= max(4 * starts.size, 1 << 16):
            _, ok = self._span_pages(pmin, pmax, write)
            if ok.all():
                return np.empty(0, dtype=np.int64)
            wide = (last - first) > 1
            if not wide.any():
                okf, okl = ok[first - pmin], ok[last - pmin]
                bad = ~(okf & okl)
                pairs = np.stack([np.where(okf[bad], -1, first[bad]), np.where(okl[bad], -1, last[bad])], axis=1)
                pages = pairs.reshape(-1)
                return pages[pages >= 0]
        pages = self._range_pages(starts, lengths)
        _, ok = self._accessible(pages, write)
        return pages[~ok]

    def _ensure_ranges(self, srcs: np.ndarray, dsts: np.ndarray, lengths: np.ndarray,
                       dst_lengths: np.ndarray | None = None) -> None:
        """Fault in every source page for reading and every destination page for writing."""
        dst_lengths = lengths if dst_lengths is None else dst_lengths
        while True:
            bad = self._bad_pages(srcs, lengths, False)
            if bad.size:
                self._resolve(bad, False)
                continue
            bad = self._bad_pages(dsts, dst_lengths, True) if dsts.size else bad
            if bad.size:
                self._resolve(bad, True)
                continue
            return

    def _read_locked(self, addr: int, length: int, user: bool = True) -> np.ndarray:
        """Read memory; ``user=False`` is a kernel-mode access (copy_from_user in an ioctl)."""
        first, last = addr >> PAGE_SHIFT, (addr + length - 1) >> PAGE_SHIFT
        pages = np.arange(first, last + 1, dtype=np.int64)
        while True:
            frames, ok = self._accessible(pages, False)
            if ok.all():
                break
            self._resolve(pages[~ok], False, user=user)
        self._pool_ready()
        data = self.frames.content.pages[self.frames.slot[frames]].reshape(-1)
        off = addr - (first << PAGE_SHIFT)
        return data[off:off + length].copy()

    def _write_locked(self, addr: int, data: np.ndarray) -> None:
        first, last = addr >> PAGE_SHIFT, (addr + data.size - 1) >> PAGE_SHIFT
        pages = np.arange(first, last + 1, dtype=np.int64)
        while True:
            frames, ok = self._accessible(pages, True)
            if ok.all():
                break
            self._resolve(pages[~ok], True)
        self._write_pages(addr, first, data, 0, pages.size, frames)

    # ------------------------------------------------------------------------------
    # introspection
    # ------------------------------------------------------------------------------
    def page_info(self, addr: int) -> PageInfo:
        addr = _u64(addr, "addr")
        with self._lock:
            region = addr >> PMD_SHIFT
            row = self.pt.row(region)
            if row < 0 or self.mm.find(addr) is None:
                return PageInfo(state="none", frame=None, exclusive=False, huge=False)
            frame = int(self.pt.pte[row, (addr >> PAGE_SHIFT) & IDX_MASK])
            if frame == NO_FRAME:
                return PageInfo(state="none", frame=None, exclusive=False, huge=False)
            kind = self.pt.kind[row]
            huge = kind in (THP, HUGE_ZERO)
            if frame < FIRST_FRAME:
                return PageInfo(state="zero", frame=frame, exclusive=False, huge=huge)
            state = "thp" if self.frames.nr[frame] > 1 else "present"
            return PageInfo(state=state, frame=frame, exclusive=bool(self.frames.mapcount[frame] == 1), huge=huge)

    def page_frames(self, addr: int, npages: int) -> np.ndarray:
        addr, npages = _u64(addr, "addr"), _u64(npages, "npages")
        if npages > (1 << 36):
            raise ValueError(f"npages={npages} is too many")
        first = addr >> PAGE_SHIFT
        with self._lock:
            return self.pt.frames_at(np.arange(first, first + npages, dtype=np.int64))

    def frame_pointers(self, addr: int, npages: int, write: bool = False) -> np.ndarray:
        """Host addresses of the contents of the ``npages`` pages from ``addr``
        (page-aligned), as uint64, for compiled code that reads (or, with
        ``write``, writes) simulated memory in place (heap.core). 0 where a
        user-mode access of that kind would fault: no frame, a protection that
        forbids it, and for a write the zero page or a frame not exclusive to
        this mm (copy-on-write). The caller faults such a page in through
        load/store and asks again. A pointer stays valid until the page's
        mapping changes (the caller holds the heap still meanwhile)."""
        addr, npages = _u64(addr, "addr"), _u64(npages, "npages")
        if npages > (1 << 36):
            raise ValueError(f"npages={npages} is too many")
        if npages == 0:
            return np.zeros(0, dtype=np.uint64)
        first = addr >> PAGE_SHIFT
        with self._lock:
            frames, ok = self._span_pages(first, first + npages - 1, write)
            if write and ok.any():
                self.frames.writable_slots(frames[ok])  # a first write gives the frame its content slot
            self._pool_ready()
            slots = self.frames.slot[np.where(ok, frames, 0)]
            pool = self.frames.content.bytes.ctypes.data
            return np.where(ok, pool + slots * PAGE_SIZE, 0).astype(np.uint64)

    def resident_bytes(self, addr: int, length: int) -> int:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        first = addr >> PAGE_SHIFT
        last = (addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        with self._lock:
            frames = self.pt.frames_at(np.arange(first, last, dtype=np.int64))
            return int((frames >= FIRST_FRAME).sum()) * PAGE_SIZE

    # -- sim-only introspection and control ------------------------------------------
    def vma_list(self) -> list[dict]:
        """The VMAs as dicts (start, end, prot, shared, locked, hugepage, uffd, ...)."""
        with self._lock:
            return [dict(start=v.start, end=v.end, prot=v.prot, shared=v.shared, locked=v.locked,
                         lockonfault=v.lockonfault, hugepage=v.hugepage, dontfork=v.dontfork,
                         uffd=v.uffd.fd if v.uffd is not None else None, uffd_mode=v.uffd_mode)
                    for v in self.mm.vmas]

    def pmd_kind(self, addr: int) -> str:
        """"none", "table", "thp" or "huge_zero": the PMD entry covering ``addr``."""
        from .pagetable import KIND_NAMES

        with self._lock:
            return KIND_NAMES[self.pt.kind_of(addr >> PMD_SHIFT)]

    def pin(self, addr: int, npages: int = 1) -> None:
        """Pin present pages long-term (FOLL_PIN, as io_uring fixed buffers do). Sim only."""
        self._adjust_pins(addr, npages, +1)

    def unpin(self, addr: int, npages: int = 1) -> None:
        self._adjust_pins(addr, npages, -1)

    def _adjust_pins(self, addr: int, npages: int, delta: int) -> None:
        first = _u64(addr, "addr") >> PAGE_SHIFT
        with self._lock:
            frames = self.pt.frames_at(np.arange(first, first + npages, dtype=np.int64))
            if (frames < FIRST_FRAME).any():
                raise _err(errno.EFAULT, "pin: a page is not present")
            if delta < 0 and (self.frames.pins[frames] <= 0).any():
                raise ValueError("unpin of a page that is not pinned")
            np.add.at(self.frames.pins, frames, delta)

    def host_bytes(self) -> int:
        """Host memory the simulated page contents occupy (slots in use x 4 KiB)."""
        return self.frames.content.slots_in_use * PAGE_SIZE

    # ------------------------------------------------------------------------------
    # processes and userfaultfd
    # ------------------------------------------------------------------------------
    def fork(self) -> SimChild:
        with self._lock:
            inherited = []
            fr = self.frames
            for vma in self.mm.vmas:
                if vma.dontfork:
                    continue
                frames = self.pt.frames_at(np.arange(vma.start >> PAGE_SHIFT, vma.end >> PAGE_SHIFT, dtype=np.int64))
                real = frames[frames >= FIRST_FRAME]
                if real.size == 0:
                    continue
                if not vma.shared:
                    pinned = real[fr.pins[real] > 0]
                    if pinned.size:
                        # A pinned exclusive page is copied for the child at fork time.
                        copies = fr.alloc_pages(pinned.size, anon_vma=self._anon_vma(vma))
                        fr.copy_contents(copies, pinned)
                        self.counters.bytes_copied += PAGE_SIZE * pinned.size
                        inherited.append(copies)
                        real = real[fr.pins[real] == 0]
                    fr.excl[real] = False
                fr.mapcount[real] += 1
                inherited.append(real)
            child_frames = np.concatenate(inherited) if inherited else np.empty(0, dtype=np.int64)
            return SimChild(self, next(self._pids), child_frames)

    def userfaultfd(self, features: int = UFFD_FEATURE_MOVE, *, user_mode_only: bool = True):
        from .uffd import SimUffd

        features = _u64(features, "features")
        if features & ~SIM_UFFD_FEATURES:
            missing = features & ~SIM_UFFD_FEATURES
            raise KernelUnsupported(f"the kernel does not offer the userfaultfd features {missing:#x} "
                                    f"(it offers {SIM_UFFD_FEATURES:#x})")
        uffd = SimUffd(self, next(self._uffd_ids), features, user_mode_only)
        uffd.self_serving = bool(features & UFFD_FEATURE_SIGBUS)  # its missing faults are SIGBUS (_userfault)
        with self._lock:
            self._uffds.add(uffd)
        return uffd

    def close(self) -> None:
        """Shut down: close every userfaultfd, so blocked faults retry with normal fault
        handling and threads waiting for an event to be read go on."""
        for uffd in list(self._uffds):
            uffd.close()

