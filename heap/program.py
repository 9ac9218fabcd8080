"""The to-space install program of a concurrent cycle, and its page states.

``InstallProgram`` is what installing any to-space page takes, computed in
the pause (``make_program``): every slot fix-up and every evacuation copy as
sorted numpy arrays keyed by to-space page, so the work of any page range is
a contiguous slice found by ``np.searchsorted``. Its array fields are read by
name by the Linux backend's native walk and fault server (through the
backend's accelerator): their names and dtypes are part of that protocol.

``PageStates`` holds one int8 state per to-space page, unprocessed ->
processing -> installed (docs/design.md, "The page-state machine"). A page
is claimed by compare-and-swap (``heap.native.PageClaims``), so the Python
compactor, the fault handler and a native walk without the GIL never
install one page twice; only the claimer settles a page it holds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .kernel import PAGE_INSTALLED, PAGE_PROCESSING, PAGE_UNPROCESSED
from .native import PageClaims

# declared once, in heap.kernel (the accelerators' C reads the same values)
UNPROCESSED, PROCESSING, INSTALLED = PAGE_UNPROCESSED, PAGE_PROCESSING, PAGE_INSTALLED

# wait_all re-checks the page states this often: a native installer (the C
# fault server, a self-served SIGBUS) settles pages without the GIL and so
# cannot notify the condition, after its install already woke the faulter
WAIT_SLICE_S = 0.001


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
    # pages [0, kept_pages) are the dense prefix the flip left in place: installed from the
    # start, their objects' slots fixed in the pause (heap.concurrent.concurrent_pause), none of
    # them in the arrays above; not part of the native layout
    kept_pages: int = 0

    def sources(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(from-space page, rebuilt?) of each to-space page."""
        piece = np.searchsorted(self.piece_dst, pages, side="right") - 1
        return self.piece_src[piece] + pages - self.piece_dst[piece], self.piece_rebuilt[piece]


def make_program(plan, model, old, values: np.ndarray, base: int, from_space: int, ps: int,
                 refs: np.ndarray | None = None) -> InstallProgram:
    """The install program of a remap plan (vectorised: a few passes over slots and
    evacuees); ``values``: the new value of every live slot (``Pause.slot_values``);
    ``refs``: which of them to write (``Pause.reference_slots``: an immediate's
    word arrives with its page and stays; None: all)."""
    rows = plan.live_rows
    slot_rel = model.slot_addresses(plan.new_starts, old["nrefs"][rows]) - base
    if refs is not None:
        slot_rel, values = slot_rel[refs], np.asarray(values)[refs]
    shift = ps.bit_length() - 1  # page sizes are powers of two: shifts and masks, not divisions
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
        slot_page=slot_rel >> shift, slot_off=slot_rel & (ps - 1), slot_val=np.asarray(values).view(np.uint64),
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

    def keep(self, npages: int) -> None:
        """Pages [0, npages) stay where they are (the kept prefix): installed from the start."""
        with self.lock:
            self.state[:npages] = INSTALLED
            self.installed += npages

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
        """Until every page is installed (True) or ``timeout`` s passed (False).
        Waits in short slices: the Python installers notify, the native ones cannot."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self._waiting += 1
            try:
                while not self.all_installed():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(min(left, WAIT_SLICE_S))
                return True
            finally:
                self._waiting -= 1


def moved_unreported(kernel, dst: int, src: int) -> bool:
    """After a refused MOVE: did this page go in anyway? (Linux checks for a
    fatal signal after a step and then reports EINTR without counting it.)"""
    return kernel.page_info(dst).state != "none" and kernel.page_info(src).state == "none"

