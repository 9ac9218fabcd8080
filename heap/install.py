"""Install: putting to-space pages in place with UFFDIO_MOVE, every outcome handled.

``install_page_range`` is the one routine that installs pages; the
stop-the-world compactor calls it once per run of the plan, the concurrent
compactor and its fault handler call it per page. What the kernel can answer
(docs/design.md, "Installing a page") and what it does:

======================  ==============================================================
EAGAIN, moved > 0       partial move: count it, resume at dst + moved
EAGAIN, moved == 0      a non-cooperative event is pending: bounded back-off, retry
EEXIST                  dst already populated. If the source page is gone the page was
                        installed (by a concurrent installer, or by a 6.18 retry that
                        moved pages without reporting them): count a race, go on.
                        Otherwise it is a real conflict: HeapCorrupted
EBUSY                   the page is shared with a forked child (or pinned): UFFDIO_COPY
                        that one page instead, counted in ebusy_fallbacks
ENOENT                  source hole (only possible without ALLOW_SRC_HOLES):
                        UFFDIO_ZEROPAGE that page
anything else           (ENOMEM, EINTR, EFAULT ...) ``InstallInterrupted``: the caller
                        keeps the rest of the plan pending; the heap stays consistent
======================  ==============================================================
"""

from __future__ import annotations

import errno
import time

import numpy as np

from .errors import HeapCorrupted
from .kernel import UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UffdError
from .stats import InstallCounters

EAGAIN_RETRIES = 64  # back-off attempts before giving up on a pending event
BACKOFF_FIRST_S = 1e-6
BACKOFF_MAX_S = 1e-3


class InstallInterrupted(Exception):
    """The kernel refused with ``error``; ``done`` bytes of the range were installed."""

    error: OSError
    done: int

    def __init__(self, error: OSError, done: int):
        super().__init__(str(error))
        self.error = error
        self.done = done


def _already_installed(kernel, dst: int, src: int) -> bool:
    return kernel.page_info(src).state == "none" and kernel.page_info(dst).state != "none"


def install_page_range(kernel, uffd, dst: int, src: int, length: int, counters: InstallCounters,
                       mode: int = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, refused: UffdError | None = None) -> None:
    """Install ``[src, src+length)`` at ``[dst, dst+length)`` by MOVE; see the module doc.

    ``refused``: the kernel's answer to a MOVE of this range already made (by
    a batched call), handled as if this routine had received it."""
    ps = kernel.page_size
    done = 0
    backoff = 0
    while done < length:
        if refused is None:
            counters.ioctls += 1
        try:
            if refused is not None:
                refused, pending = None, refused
                raise pending
            uffd.move(dst + done, src + done, length - done, mode)
            counters.pages_moved += (length - done) // ps
            done = length
            continue
        except UffdError as exc:
            error, err, moved = exc, exc.errno, exc.moved
        if err == errno.EAGAIN and moved > 0:
            counters.partial_moves += 1
            counters.pages_moved += moved // ps
            done += moved
            backoff = 0
        elif err == errno.EAGAIN:
            counters.eagain_retries += 1
            backoff += 1
            if backoff > EAGAIN_RETRIES:
                raise InstallInterrupted(UffdError(err, "EAGAIN persisted through back-off", 0), done)
            time.sleep(min(BACKOFF_FIRST_S * (1 << min(backoff, 20)), BACKOFF_MAX_S))
        elif err == errno.EEXIST:
            if not _already_installed(kernel, dst + done, src + done):
                raise HeapCorrupted("install", f"to-space page 0x{dst + done:x} is populated and its source "
                                    f"0x{src + done:x} still holds a page")
            counters.eexist_races += 1
            done += ps
        elif err == errno.EBUSY:
            try:
                _copy_page(kernel, uffd, dst + done, src + done, counters)
            except InstallInterrupted as exc:
                # the pages before it are in (a copied one keeps its source): say so
                raise InstallInterrupted(exc.error, done) from exc.error
            done += ps
        elif err == errno.ENOENT:
            try:
                uffd.zeropage(dst + done, ps)
            except UffdError as zexc:
                if zexc.errno != errno.EEXIST:
                    raise InstallInterrupted(zexc, done) from zexc
            counters.zero_filled += 1
            done += ps
        else:
            raise InstallInterrupted(error, done)


def _copy_page(kernel, uffd, dst: int, src: int, counters: InstallCounters) -> None:
    ps = kernel.page_size
    for attempt in range(EAGAIN_RETRIES + 1):
        try:
            uffd.copy(dst, src, ps)
            break
        except UffdError as exc:
            if exc.errno == errno.EEXIST and kernel.page_info(dst).state != "none":
                counters.eexist_races += 1
                return
            if exc.errno != errno.EAGAIN or attempt == EAGAIN_RETRIES:
                raise InstallInterrupted(exc, 0) from exc
            counters.eagain_retries += 1  # as for MOVE: a pending event or contention, back off and retry
            time.sleep(min(BACKOFF_FIRST_S * (1 << min(attempt + 1, 20)), BACKOFF_MAX_S))
    counters.ebusy_fallbacks += 1
    counters.bytes_copied += ps


class PageInstaller:
    """Installs a plan's to-space pages run by run, remembering progress so an
    interrupted install can be resumed later (``pending``)."""

    def __init__(self, kernel, uffd, plan, arena: int, from_space: int):
        self.kernel = kernel
        self.uffd = uffd
        self.plan = plan
        self.arena = arena
        self.from_space = from_space
        self.run_dst, self.run_src, self.run_rebuilt, self.run_count = plan.runs()
        self.next_run = 0
        self.run_done = 0  # bytes of run ``next_run`` already installed

    @property
    def pending(self) -> bool:
        return self.next_run < self.run_count.size

    def run_addresses(self, k: int) -> tuple[int, int, int]:
        ps = self.kernel.page_size
        return (self.arena + int(self.run_dst[k]) * ps, self.from_space + int(self.run_src[k]) * ps,
                int(self.run_count[k]) * ps)

    def install(self, counters: InstallCounters) -> None:
        """Install every remaining run: all of them in one batched call while
        the kernel says yes, ``install_page_range`` for a run it refuses."""
        ps = self.kernel.page_size
        while self.pending:
            if self.run_done:  # finish a run an earlier attempt left half done
                self._install_run(self.next_run, counters)
                continue
            k = self.next_run
            dsts = (self.arena + self.run_dst[k:] * ps).astype(np.uint64)
            srcs = (self.from_space + self.run_src[k:] * ps).astype(np.uint64)
            lengths = (self.run_count[k:] * ps).astype(np.uint64)
            counters.ioctls += lengths.size
            try:
                self.uffd.move_ranges(dsts, srcs, lengths, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)
            except UffdError as exc:
                failed = k + exc.index
                counters.pages_moved += int(self.run_count[k:failed].sum())
                counters.ioctls -= lengths.size - exc.index
                self.next_run = failed
                if exc.errno == errno.EAGAIN and exc.moved > 0:
                    counters.partial_moves += 1
                    counters.pages_moved += exc.moved // ps
                    self.run_done = exc.moved
                elif exc.errno == errno.EAGAIN:
                    counters.eagain_retries += 1
                self._install_run(failed, counters)
                continue
            counters.pages_moved += int(self.run_count[k:].sum())
            self.next_run = self.run_count.size

    def _install_run(self, k: int, counters: InstallCounters) -> None:
        dst, src, length = self.run_addresses(k)
        off = self.run_done
        try:
            install_page_range(self.kernel, self.uffd, dst + off, src + off, length - off, counters)
        except InstallInterrupted as exc:
            self.run_done += exc.done
            raise
        self.next_run = k + 1
        self.run_done = 0


def evacuate(kernel, plan, totals_old, from_space: int) -> int:
    """Slide the evacuated objects down into the rebuilt units, inside the
    from-space (ordered: no object lands on one not yet moved)."""
    ev = plan.evacuated
    if not ev.any():
        return 0
    lengths = totals_old[plan.live_rows[ev]]
    moving = plan.evac_to != plan.evac_from
    kernel.copy_ranges((from_space + plan.evac_to[moving]).astype(np.uint64),
                       (from_space + plan.evac_from[moving]).astype(np.uint64), lengths[moving].astype(np.uint64))
    return int(lengths[moving].sum())
