"""Building and installing to-space pages during a concurrent cycle.

``PageBuilder`` builds claimed pages where mutators cannot see them (slot
fix-ups in place in the from-space for pages that move whole; rebuilt pages
assembled in a scratch mapping from the untouched from-space originals, so
pages can be built in any order) and MOVEs them in, run by run; a run the
kernel refuses goes through ``install_page_range`` (heap.install), which
handles every outcome. ``ChunkPlan`` is the compactor's walk precomputed
once, so that a chunk nobody touched costs a few calls.
"""

from __future__ import annotations

import numpy as np

from .install import InstallInterrupted, install_page_range
from .kernel import MADV_DONTNEED, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UffdError
from .program import Claim, InstallProgram, PageStates, moved_unreported
from .stats import InstallCounters


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
                        self.uffd.move_ranges(dsts[k0:], srcs[k0:], lengths[k0:], UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)
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
