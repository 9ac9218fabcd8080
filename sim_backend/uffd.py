"""The simulated userfaultfd context and its ioctls (REGISTER .. MOVE).

The checks and their order follow fs/userfaultfd.c and mm/userfaultfd.c of
Linux 6.18 as pinned down in shared/design/uffdio_move_semantics.md; the
labels V0..V7 and M1..M8 in comments are that document's.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np

from heap.kernel import ArgumentTypeError, as_ranges
from heap.kernel import (
    UFFDIO_COPY_MODE_DONTWAKE,
    UFFDIO_COPY_MODE_WP,
    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
    UFFDIO_MOVE_MODE_DONTWAKE,
    UFFDIO_REGISTER_MODE_MINOR,
    UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP,
    UFFDIO_ZEROPAGE_MODE_DONTWAKE,
    _UFFDIO_CONTINUE,
    _UFFDIO_COPY,
    _UFFDIO_MOVE,
    _UFFDIO_POISON,
    _UFFDIO_WAKE,
    _UFFDIO_WRITEPROTECT,
    _UFFDIO_ZEROPAGE,
    PROT_WRITE,
    FaultEvent,
    UffdBase,
    UffdError,
)

from .faultplan import Trigger
from .frames import FIRST_FRAME, NO_FRAME, PAGE_SIZE, PTRS_PER_PMD, ZERO_FRAME, OutOfMemory
from .kernel import IDX_MASK, SIM_UFFD_FEATURES, U64_MAX, _err, _u64
from .pagetable import HUGE_ZERO, NONE, PMD_SHIFT, PMD_SIZE, TABLE, THP
from .vmas import PAGE_SHIFT, TASK_SIZE

# ioctls REGISTER advertises for a non-hugetlb range (UFFD_API_RANGE_IOCTLS)
RANGE_IOCTLS = ((1 << _UFFDIO_WAKE) | (1 << _UFFDIO_COPY) | (1 << _UFFDIO_ZEROPAGE) | (1 << _UFFDIO_MOVE)
                | (1 << _UFFDIO_WRITEPROTECT) | (1 << _UFFDIO_CONTINUE) | (1 << _UFFDIO_POISON))
REGISTER_MODES = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR
MOVE_MODES = UFFDIO_MOVE_MODE_DONTWAKE | UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES

# "race" in the fault plan is reported as this internal code, then as EAGAIN
_RACE = -1


def _fail(code: int, what: str, moved: int = 0) -> UffdError:
    return UffdError(code, f"{os.strerror(code)} ({what})", moved=moved)


_YIELD_EVERY_S = 0.0005
_last_yield = [0.0]


def _leave_syscall() -> None:
    """Let other Python threads run, as a real ioctl does by releasing the GIL.

    Without it a thread issuing many simulated ioctls keeps the GIL for a
    whole switch interval (5 ms), so concurrent threads interleave far less
    than with the Linux backend, whose ioctls run in C without the GIL. A
    yield costs ~0.1 ms on a busy machine, so it is done at most every 0.5 ms.
    """
    if threading.active_count() > 1:
        now = time.perf_counter()
        if now - _last_yield[0] >= _YIELD_EVERY_S:
            time.sleep(0)
            _last_yield[0] = time.perf_counter()


def _check_range(start: int, length: int, *, aligned: bool = True) -> int:
    """validate_range / validate_unaligned_range: 0 or EINVAL."""
    if aligned and start & (PAGE_SIZE - 1):
        return errno.EINVAL
    if length & (PAGE_SIZE - 1) or length == 0 or start >= TASK_SIZE or length > TASK_SIZE - start:
        return errno.EINVAL
    if start + length > U64_MAX:
        return errno.EINVAL
    return 0


class SimUffd(UffdBase):
    """One simulated userfaultfd context of a SimKernel."""

    def __init__(self, kernel, fd: int, features: int, user_mode_only: bool):
        self.kernel = kernel
        self.fd = fd
        self.requested_features = features
        self.features = SIM_UFFD_FEATURES  # UFFDIO_API reports everything the kernel offers
        self.user_mode_only = user_mode_only
        self.closed = False
        self.mmap_changing = 0  # non-cooperative events not yet completed (UFFDIO_* then say EAGAIN)
        self.events: list = []  # non-cooperative events queued and not yet read

    def __repr__(self) -> str:
        return f"SimUffd({'closed' if self.closed else f'fd={self.fd}'}, features={self.features:#x})"

    def __enter__(self) -> "SimUffd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "the userfaultfd is closed")

    # ------------------------------------------------------------------------------
    # registration
    # ------------------------------------------------------------------------------
    def register(self, addr: int, length: int, mode: int = UFFDIO_REGISTER_MODE_MISSING) -> int:
        addr, length, mode = _u64(addr, "addr"), _u64(length, "length"), _u64(mode, "mode")
        k = self.kernel
        with k._lock:
            self._open()
            what = f"UFFDIO_REGISTER {addr:#x}+{length:#x}"
            if not mode or mode & ~REGISTER_MODES:
                raise _err(errno.EINVAL, f"{what}: mode {mode:#x}")
            end, vmas = self._vmas_of_range(addr, length, what)
            for vma in vmas:
                if mode & UFFDIO_REGISTER_MODE_MINOR and not vma.shared:
                    raise _err(errno.EINVAL, f"{what}: MINOR needs shmem")
                if vma.uffd is not None and vma.uffd is not self:
                    raise _err(errno.EBUSY, f"{what}: registered elsewhere")
            for vma in vmas:
                lo, hi = max(vma.start, addr), min(vma.end, end)
                if vma.uffd is self and not mode & ~vma.uffd_mode:
                    continue  # already registered here with these modes: left as it is
                k._modify(vma, lo, hi, {"uffd": self, "uffd_mode": mode})
            ioctls = RANGE_IOCTLS
            if not mode & UFFDIO_REGISTER_MODE_WP:
                ioctls &= ~(1 << _UFFDIO_WRITEPROTECT)
            if not mode & UFFDIO_REGISTER_MODE_MINOR:
                ioctls &= ~(1 << _UFFDIO_CONTINUE)
            return ioctls

    def _vmas_of_range(self, addr: int, length: int, what: str):
        """REGISTER/UNREGISTER's range checks: (end, the VMAs it overlaps), or the kernel's errno."""
        err = _check_range(addr, length)
        if err:
            raise _err(err, what)
        end = addr + length
        vmas = self.kernel.mm.overlapping(addr, end)
        if not vmas:
            raise _err(errno.EINVAL, f"{what}: nothing mapped")
        return end, vmas

    def unregister(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        k = self.kernel
        with k._lock:
            self._open()
            what = f"UFFDIO_UNREGISTER {addr:#x}+{length:#x}"
            end, vmas = self._vmas_of_range(addr, length, what)
            if any(v.uffd is not None and v.uffd is not self for v in vmas):
                raise _err(errno.EINVAL, f"{what}: registered with another uffd")
            for vma in vmas:
                if vma.uffd is None:
                    continue
                lo, hi = max(vma.start, addr), min(vma.end, end)
                if vma.uffd_mode & UFFDIO_REGISTER_MODE_MISSING:
                    # wake pending faults so they retry with normal fault handling
                    k._wake(self, lo, hi - lo)
                k._modify(vma, lo, hi, {"uffd": None, "uffd_mode": 0})

    # ------------------------------------------------------------------------------
    # events
    # ------------------------------------------------------------------------------
    def wake(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        k = self.kernel
        with k._lock:
            self._open()
            err = _check_range(addr, length)
            if err:
                raise OSError(err, f"{os.strerror(err)} (UFFDIO_WAKE {addr:#x}+{length:#x})")
            k._wake(self, addr, length)

    def _pending(self) -> list:
        return [w for w in self.kernel._waiters if w.uffd is self and not w.reported and not w.woken]

    def read_events(self, timeout: float | None = 0) -> list[FaultEvent]:
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise ArgumentTypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
            if not timeout >= 0:
                raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        k = self.kernel
        deadline = None if timeout is None else time.monotonic() + timeout
        with k._lock:
            while True:
                self._open()
                pending = self._pending()
                if pending or self.events:
                    for w in pending:
                        w.reported = True
                    # Non-cooperative events are read (completing them, which releases the
                    # thread that caused them) but, like the Linux backend, not returned.
                    for event in self.events:
                        event.read = True
                    self.events.clear()
                    k._cond.notify_all()
                    return [FaultEvent(address=w.address, write=w.write) for w in pending]
                if deadline is None:
                    k._cond.wait(1.0)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    k._cond.wait(left)

    def close(self) -> None:
        """userfaultfd_release: unregister every range and wake every blocked fault."""
        k = self.kernel
        with k._lock:
            if self.closed:
                return
            self.closed = True
            self.events.clear()  # threads waiting for them see the uffd closed and go on
            for vma in list(k.mm.vmas):
                if vma.uffd is self:
                    k._modify(vma, vma.start, vma.end, {"uffd": None, "uffd_mode": 0})
            k._wake(self, 0, U64_MAX + 1, served=False)
            k._cond.notify_all()

    # ------------------------------------------------------------------------------
    # UFFDIO_MOVE
    # ------------------------------------------------------------------------------
    def move(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        dst, src, length, mode = _u64(dst, "dst"), _u64(src, "src"), _u64(length, "length"), _u64(mode, "mode")
        try:
            with self.kernel._lock:
                return self._move_locked(dst, src, length, mode)
        finally:
            _leave_syscall()

    def move_ranges(self, dsts, srcs, lengths, mode: int = 0) -> int:
        """One UFFDIO_MOVE per range, in order (the batched form the Linux backend also offers).

        Returns the total bytes moved. On the first range that fails, raises
        UffdError as ``move`` would for it, with ``index`` set to that range's
        position (earlier ranges are done) and ``moved`` to its own progress.
        """
        dsts, srcs, lengths = as_ranges(dsts, srcs, lengths)
        mode = _u64(mode, "mode")
        total = 0
        lock = self.kernel._lock
        for i, (dst, src, length) in enumerate(zip(dsts.tolist(), srcs.tolist(), lengths.tolist())):
            try:
                with lock:  # per range, as each ioctl is: other threads may run between them
                    total += self._move_locked(dst, src, length, mode)
            except UffdError as exc:
                exc.index = i
                raise
            finally:
                _leave_syscall()
        return total

    def _move_locked(self, dst: int, src: int, length: int, mode: int) -> int:
        k = self.kernel
        what = f"UFFDIO_MOVE {src:#x} -> {dst:#x} +{length:#x}"
        self._open()  # V0 cannot happen: the context is created with UFFDIO_API done
        npages = length >> PAGE_SHIFT if length < (1 << 50) else 0
        call, triggers = k.fault_plan.arm("move", npages)
        changing = self._take_mmap_changing(triggers, "move", call)
        if changing:  # V1
            raise _fail(errno.EAGAIN, what + ": a non-cooperative event is pending")
        for err in (_check_range(dst, length), _check_range(src, length)):  # V4, V5
            if err:
                raise _fail(err, what)
        if mode & ~MOVE_MODES:  # V6
            raise _fail(errno.EINVAL, what + f": mode {mode:#x}")
        result, err = self._move_pages(dst, src, length, mode, call, triggers)
        if result <= 0:
            raise _fail(err, what)
        if not mode & UFFDIO_MOVE_MODE_DONTWAKE:
            k._wake(self, dst, result)
        if result == length:
            return length
        raise _fail(errno.EAGAIN, what + f": partial, {result:#x} bytes moved", moved=result)

    def _take_mmap_changing(self, triggers: list[Trigger], op: str, call: int) -> bool:
        for t in list(triggers):
            if t.outcome == "mmap_changing":
                self.kernel.fault_plan.record(t, op, call)
                triggers.remove(t)
                return True
        return self.mmap_changing > 0

    def _move_pages(self, dst: int, src: int, length: int, mode: int, call: int,
                    triggers: list[Trigger]) -> tuple[int, int]:
        """move_pages(): (bytes moved, 0) or (0, errno); bytes > 0 may come with a stop."""
        k = self.kernel
        pt, fr, counters = k.pt, k.frames, k.counters
        holes = bool(mode & UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)
        # M1, M2: the VMAs containing dst and src
        dst_vma = k.mm.find(dst)
        if dst_vma is None:
            return 0, errno.ENOENT
        if not dst_vma.shared:
            k._anon_vma(dst_vma)
        src_vma = k.mm.find(src)
        if src_vma is None:
            return 0, errno.ENOENT
        if self.mmap_changing:  # M3
            return 0, errno.EAGAIN
        if src_vma.shared or src + length > src_vma.end:  # M4, M5
            return 0, errno.EINVAL
        if dst_vma.shared or dst + length > dst_vma.end:  # M6, M7
            return 0, errno.EINVAL
        # M8: validate_move_areas
        if (src_vma.prot != dst_vma.prot or src_vma.locked != dst_vma.locked
                or not src_vma.prot & PROT_WRITE or dst_vma.uffd is not self):
            return 0, errno.EINVAL
        dst_av = dst_vma.anon_vma

        moved = 0
        err = 0
        unreported = False  # an armed "unreported_move" waits for the next PTE batch
        signal_pending = False  # a fatal signal, seen after the next step (not after a split)
        src_end = src + length
        s, d = src, dst
        while s < src_end:
            page_no = (s - src) >> PAGE_SHIFT
            while triggers and triggers[0].page <= page_no:
                t = triggers.pop(0)
                k.fault_plan.record(t, "move", call)
                if t.outcome == "race":
                    err = _RACE
                elif t.outcome == "enomem":
                    err = errno.ENOMEM
                elif t.outcome == "pinned":
                    err = errno.EBUSY
                elif t.outcome == "fatal_signal":
                    signal_pending = True
                elif t.outcome == "dst_populated":
                    self._populate_dst(d)
                elif t.outcome == "unreported_move":
                    unreported = True
                if err:
                    break
            if err:
                break
            cap = (triggers[0].page - page_no) if triggers else None  # stop a batch where a rule fires
            rem = src_end - s
            sreg, dreg = s >> PMD_SHIFT, d >> PMD_SHIFT
            step = 0
            split_retry = False
            unreported_retry = False
            if not pt.has_pud(sreg):
                if not holes:
                    err = errno.ENOENT
                    break
                pt.alloc_pud(sreg)
            pt.alloc_pud(dreg)
            dkind = pt.kind_of(dreg)
            skind = pt.kind_of(sreg)
            if dkind in (THP, HUGE_ZERO):
                err = errno.EEXIST
            elif skind in (THP, HUGE_ZERO):
                srow = pt.row(sreg)
                head = int(pt.pte[srow, 0])
                if s & (PMD_SIZE - 1) or d & (PMD_SIZE - 1) or rem < PMD_SIZE or dkind != NONE:
                    if skind == THP and not fr.excl[head]:
                        err = errno.EBUSY
                    else:
                        k._split_pmd(sreg)
                        split_retry = True
                elif skind == THP and (not fr.excl[head] or fr.pins[head:head + PTRS_PER_PMD].any()):
                    err = errno.EBUSY
                else:
                    pt.move_row(sreg, dreg)
                    if skind == THP:
                        fr.anon_vma[head:head + PTRS_PER_PMD] = dst_av
                    counters.pmds_moved += 1
                    counters.tlb_flushes += 1
                    step = PMD_SIZE
            else:
                if skind == NONE:
                    if not holes:
                        err = errno.ENOENT
                        break
                    pt.table(sreg)
                pt.table(dreg)
                step, err = self._move_ptes(s, d, rem, holes, cap, dst_av)
                if unreported and step and err == 0:
                    # 6.18: a stale -EAGAIN makes the loop redo this address without counting
                    unreported = False
                    step = 0
                    unreported_retry = True
            if split_retry:
                continue  # Linux retries the address at once, before its signal check
            if signal_pending and (err == 0 or unreported_retry):
                err = errno.EINTR  # the step just done is not counted
            if err:
                break
            if unreported_retry:
                continue
            s += step
            d += step
            moved += step
        if moved:
            return moved, err
        if err == _RACE:
            err = errno.EAGAIN
        return 0, err

    def _populate_dst(self, d: int) -> None:
        """Fault plan: another thread installs a fresh zero-filled page at ``d``."""
        k = self.kernel
        region = d >> PMD_SHIFT
        if k.pt.kind_of(region) in (THP, HUGE_ZERO):
            return
        row = k.pt.table(region)
        idx = (d >> PAGE_SHIFT) & IDX_MASK
        if k.pt.pte[row, idx] == NO_FRAME:
            vma = k.mm.find(d)
            k.pt.pte[row, idx] = k.frames.alloc_page(anon_vma=k._anon_vma(vma) if vma else 0)

    def _move_ptes(self, s: int, d: int, rem: int, holes: bool, cap: int | None, dst_av) -> tuple[int, int]:
        """move_pages_ptes(): (bytes, 0) on progress, else (0, errno)."""
        k = self.kernel
        pt, fr, counters = k.pt, k.frames, k.counters
        srow, drow = pt.row(s >> PMD_SHIFT), pt.row(d >> PMD_SHIFT)
        si, di = (s >> PAGE_SHIFT) & IDX_MASK, (d >> PAGE_SHIFT) & IDX_MASK
        if pt.pte[drow, di] != NO_FRAME:
            return 0, errno.EEXIST
        limit = min(rem >> PAGE_SHIFT, PTRS_PER_PMD - si, PTRS_PER_PMD - di)
        if cap is not None:
            limit = max(1, min(limit, cap))
        frame = int(pt.pte[srow, si])
        if frame == NO_FRAME:
            if not holes:
                return 0, errno.ENOENT
            # Linux takes holes one page per step; a run of holes facing empty dst
            # PTEs is the same sequence of steps, done at once.
            sp = pt.pte[srow, si:si + limit]
            dp = pt.pte[drow, di:di + limit]
            run = (sp == NO_FRAME) & (dp == NO_FRAME)
            n = limit if run.all() else int(np.argmin(run))
            return n << PAGE_SHIFT, 0
        # A large folio is split if its *first* page is AnonExclusive (6.18 reads the bit
        # on &folio->page); the page itself is checked again once it is order-0.
        if frame >= FIRST_FRAME and fr.nr[frame] > 1 and fr.excl[fr.head[frame]]:
            if not k._split_folio(frame):
                return 0, errno.EBUSY
            frame = int(pt.pte[srow, si])  # re-examined: it may have become the zero page
        if frame == ZERO_FRAME:
            pt.pte[drow, di] = ZERO_FRAME
            pt.pte[srow, si] = NO_FRAME
            counters.ptes_moved += 1
            counters.tlb_flushes += 1
            return PAGE_SIZE, 0
        if frame < FIRST_FRAME or not fr.excl[frame] or fr.pins[frame]:
            return 0, errno.EBUSY
        first_av = fr.anon_vma[frame]
        if limit == 1:
            pt.pte[drow, di] = frame
            pt.pte[srow, si] = NO_FRAME
            fr.anon_vma[frame] = dst_av
            n = 1
        elif limit <= 8 or (srow == drow and si < di + limit and di < si + limit):
            n = self._move_sequential(srow, drow, si, di, limit, first_av, dst_av)
        else:
            sp = pt.pte[srow, si:si + limit]
            dp = pt.pte[drow, di:di + limit]
            spc = np.maximum(sp, 0)
            ok = ((dp == NO_FRAME) & (sp >= FIRST_FRAME) & (fr.nr[spc] == 1) & fr.excl[spc]
                  & (fr.pins[spc] == 0) & (fr.anon_vma[spc] == first_av))
            ok[0] = True
            n = limit if ok.all() else int(np.argmin(ok))
            moving = sp[:n].copy()
            pt.pte[drow, di:di + n] = moving
            pt.pte[srow, si:si + n] = NO_FRAME
            fr.anon_vma[moving] = dst_av
        counters.ptes_moved += n
        counters.tlb_flushes += 1
        return n << PAGE_SHIFT, 0

    def _move_sequential(self, srow: int, drow: int, si: int, di: int, limit: int, first_av, dst_av) -> int:
        """The batch page by page: short batches, and src and dst overlapping inside one table.

        The first page is already validated; each next one is checked as
        check_ptes_for_batched_move does, after the previous one moved.
        """
        pt, fr = self.kernel.pt, self.kernel.frames
        pte = pt.pte
        n = 0
        while n < limit:
            f = int(pte[srow, si + n])
            if n and (pte[drow, di + n] != NO_FRAME or f < FIRST_FRAME or fr.nr[f] != 1 or not fr.excl[f]
                      or fr.pins[f] or fr.anon_vma[f] != first_av):
                break
            pte[drow, di + n] = f
            pte[srow, si + n] = NO_FRAME
            fr.anon_vma[f] = dst_av
            n += 1
        return n

    # ------------------------------------------------------------------------------
    # UFFDIO_COPY and UFFDIO_ZEROPAGE (mfill_atomic)
    # ------------------------------------------------------------------------------
    def copy(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        dst, src, length, mode = _u64(dst, "dst"), _u64(src, "src"), _u64(length, "length"), _u64(mode, "mode")
        what = f"UFFDIO_COPY {src:#x} -> {dst:#x} +{length:#x}"
        return self._mfill("copy", dst, src, length, mode, what)

    def zeropage(self, dst: int, length: int, mode: int = 0) -> int:
        dst, length, mode = _u64(dst, "dst"), _u64(length, "length"), _u64(mode, "mode")
        what = f"UFFDIO_ZEROPAGE {dst:#x} +{length:#x}"
        return self._mfill("zeropage", dst, None, length, mode, what)

    def _mfill(self, op: str, dst: int, src: int | None, length: int, mode: int, what: str) -> int:
        try:
            return self._mfill_locked(op, dst, src, length, mode, what)
        finally:
            _leave_syscall()

    def _mfill_locked(self, op: str, dst: int, src: int | None, length: int, mode: int, what: str) -> int:
        k = self.kernel
        with k._lock:
            self._open()
            npages = length >> PAGE_SHIFT if length < (1 << 50) else 0
            call, triggers = k.fault_plan.arm(op, npages)
            if self._take_mmap_changing(triggers, op, call):
                raise _fail(errno.EAGAIN, what + ": a non-cooperative event is pending")
            if src is not None:
                err = _check_range(src, length, aligned=False) or _check_range(dst, length)
                allowed = UFFDIO_COPY_MODE_DONTWAKE | UFFDIO_COPY_MODE_WP
            else:
                err = _check_range(dst, length)
                allowed = UFFDIO_ZEROPAGE_MODE_DONTWAKE
            if err:
                raise _fail(err, what)
            if mode & ~allowed:
                raise _fail(errno.EINVAL, what + f": mode {mode:#x}")
            done, err = self._mfill_pages(op, dst, src, length, mode, call, triggers)
            if done <= 0:
                raise _fail(err, what)
            if not mode & 1:  # *_MODE_DONTWAKE
                k._wake(self, dst, done)
            if done == length:
                return length
            raise _fail(errno.EAGAIN, what + f": partial, {done:#x} bytes done", moved=done)

    def _mfill_pages(self, op: str, dst: int, src: int | None, length: int, mode: int, call: int,
                     triggers: list[Trigger]) -> tuple[int, int]:
        k = self.kernel
        pt, fr = k.pt, k.frames
        done = 0
        while done < length:
            # uffd_mfill_lock: the dst VMA must contain the range and be registered (any uffd)
            vma = k.mm.find(dst)
            if vma is None or dst + length > vma.end or vma.uffd is None:
                return done, errno.ENOENT
            av = None if vma.shared else k._anon_vma(vma)
            if self.mmap_changing:
                return done, errno.EAGAIN
            if mode & UFFDIO_COPY_MODE_WP and src is not None and not vma.uffd_mode & UFFDIO_REGISTER_MODE_WP:
                return done, errno.EINVAL
            d = dst + done
            page_no = done >> PAGE_SHIFT
            signal = False
            while triggers and triggers[0].page <= page_no:
                t = triggers.pop(0)
                k.fault_plan.record(t, op, call)
                if t.outcome == "race":
                    return done, errno.EAGAIN
                if t.outcome == "enomem":
                    return done, errno.ENOMEM
                if t.outcome == "dst_populated":
                    self._populate_dst(d)
                if t.outcome == "fatal_signal":
                    signal = True
            region = d >> PMD_SHIFT
            pt.alloc_pud(region)
            row = pt.table(region) if pt.kind_of(region) == NONE else pt.row(region)
            if pt.kind[row] != TABLE:
                return done, errno.EEXIST
            idx = (d >> PAGE_SHIFT) & IDX_MASK
            if src is None and pt.pte[row, idx] != NO_FRAME:
                return done, errno.EEXIST
            if src is not None:
                try:
                    data = k._read_locked(src + done, PAGE_SIZE, user=False)  # may fault, and block
                except OSError:
                    return done, errno.EFAULT
                if pt.row(region) != row or k.mm.find(dst) is not vma:
                    continue  # the world changed while we slept: start this page over
                if pt.pte[row, idx] != NO_FRAME:  # the source is read before dst is checked
                    return done, errno.EEXIST
                try:
                    frame = fr.alloc_page(anon_vma=av or 0, shmem=vma.shared)
                    if data.any():
                        slot = fr.writable_slots(np.array([frame]))
                        fr.content.pages[slot[0]] = data
                except OutOfMemory:
                    return done, errno.ENOMEM
                k.counters.bytes_copied += PAGE_SIZE
                pt.pte[row, idx] = frame
            elif vma.shared:
                pt.pte[row, idx] = fr.alloc_page(shmem=True)
            else:
                pt.pte[row, idx] = ZERO_FRAME
            done += PAGE_SIZE
            if signal:
                return done, errno.EINTR
        return done, 0
