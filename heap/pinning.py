"""Pinning: objects that never move (docs/embedding.md, "Pinning").

``Heap.pin(ref)`` keeps an object at its address, with its bytes, until
``Heap.unpin(ref)``; a pinned object is also a root (pinning a dead object
would mean nothing). Pins nest: an object pinned twice needs two unpins.

How compaction works around pinned objects: the units (pages; with THP,
2 MiB regions) a pinned object touches stay where they are, with every live
object in them; the stretches of the arena between them are each compacted
towards their own start, as the whole arena is when nothing is pinned
(``plan_around_pins``). So the objects below a pinned object move too; what
a pin costs is the room between the end of a compacted stretch and the
pinned unit above it: below the heap top, so nothing is placed there, and
its pages stay resident (old bytes, or zero pages after a concurrent
install) until a collection after the pin goes. The remap compactors move a pinned unit's pages out
with the flip and back in with the install, whole, zero-copy: the same
physical pages, at the same addresses, with the same bytes; a stop-the-world
collection does it inside the pause, a concurrent one during its install (a
touch of such a page in between waits for the fault handler, as for any
page not yet installed). The copying compactor leaves pinned units alone.
"""

from __future__ import annotations

import numpy as np

from .errors import HeapCorrupted
from .plan import Plan

_EMPTY = np.zeros(0, dtype=np.int64)


def round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


class PinTable:
    """Pinned object addresses with their pin counts; a root scanner (pinned
    objects are roots) whose forwarding must leave every address unchanged."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}  # address -> pins

    def pin(self, addr: int) -> None:
        self.count[addr] = self.count.get(addr, 0) + 1

    def unpin(self, addr: int) -> None:
        n = self.count.get(addr, 0)
        if n == 0:
            raise ValueError(f"the object at 0x{addr:x} is not pinned")
        if n == 1:
            del self.count[addr]
        else:
            self.count[addr] = n - 1

    def pinned(self, addr: int) -> bool:
        return addr in self.count

    def addresses(self) -> np.ndarray:
        return np.fromiter(self.count.keys(), dtype=np.int64, count=len(self.count)) if self.count else _EMPTY

    # -- the RootScanner protocol ------------------------------------------------------------
    def scan_roots(self) -> np.ndarray:
        return self.addresses()

    def update_roots(self, forward) -> None:
        held = self.addresses()
        if not held.size:
            return
        moved = forward(held) != held
        if moved.any():
            raise HeapCorrupted("pinning", f"the pinned object at 0x{int(held[np.flatnonzero(moved)[0]]):x} "
                                "was planned to move")


def pinned_units(pinned_starts: np.ndarray, pinned_ends: np.ndarray, starts: np.ndarray, totals: np.ndarray,
                 base: int, page_size: int, unit_pages: int) -> np.ndarray:
    """The page runs that stay in place: the units (pages; with THP 2 MiB
    regions) each pinned object touches, merged, as rows ``[lo, hi)`` of arena
    page numbers in address order; widened where an object straddles an end
    (the placement rules make that impossible; checked all the same)."""
    up = unit_pages
    lo = (pinned_starts - base) // page_size // up * up
    hi = -(-(pinned_ends - base) // (up * page_size)) * up
    order = np.argsort(lo, kind="stable")
    runs: list[list[int]] = []
    for a, b in zip(lo[order].tolist(), hi[order].tolist()):
        if runs and a <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b])
    ends = starts + totals
    for run in runs:
        while True:  # an object starting before a run but reaching into it, or starting in it and reaching out
            a_addr, b_addr = base + run[0] * page_size, base + run[1] * page_size
            k0, k1 = np.searchsorted(starts, (a_addr, b_addr))
            before_reach = int(ends[k0 - 1]) if k0 else base
            inside_reach = int(ends[k0:k1].max()) if k1 > k0 else b_addr
            if before_reach <= a_addr and inside_reach <= b_addr:
                break
            if before_reach > a_addr:
                run[0] = (int(starts[k0 - 1]) - base) // page_size // up * up
            if inside_reach > b_addr:
                run[1] = -(-(inside_reach - base) // (up * page_size)) * up
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.array(merged, dtype=np.int64).reshape(-1, 2)


def plan_around_pins(planner, starts, totals, live, base: int, page_size: int, hpage_pages: int,
                     used_pages: int, units: np.ndarray, *args) -> Plan:
    """``planner`` (heap.plan.plan_remap or plan_slide) over each stretch of
    the arena between the pinned ``units`` (``pinned_units``), which stay where
    they are: a stretch is compacted towards its own start, as the whole arena
    would be. ``args``: the planner's own trailing arguments (plan_remap's
    ``dense``; none for plan_slide).

    Remap plans keep one contiguous to-space (the install program and the
    installers need a source for every page below the top): the pages a
    stretch no longer fills, up to the next pinned unit, are given as sources
    the stretch's from-space pages its plan did not use, marked rebuilt -- the
    stop-the-world install moves them in as they are (garbage nobody reads:
    no object starts there), a concurrent install assembles them from no
    evacuee (zero pages) and never reads the from-space for them."""
    remap = len(args) > 0
    ps, up = page_size, hpage_pages or 1
    rows, new, evac, efrom, eto = [], [], [], [], []
    pdst, psrc, pn, prebuilt = [], [], [], []
    rebuilt_pages = whole_pages = 0
    cursor = 0  # first page of the current stretch
    bounds = units.tolist() + [[used_pages, used_pages]]
    for n_unit, (lo, hi) in enumerate(bounds):
        last = n_unit == len(bounds) - 1
        a, b = np.searchsorted(starts, (base + cursor * ps, base + lo * ps))
        seg = base + cursor * ps
        if remap:
            sub = planner(starts[a:b], totals[a:b], live[a:b], seg, ps, hpage_pages, lo - cursor, *args)
        else:
            sub = planner(starts[a:b], totals[a:b], live[a:b], seg, ps, hpage_pages)
        rows.append(sub.live_rows + a)
        new.append(sub.new_starts)
        if remap:
            evac.append(sub.evacuated)
            efrom.append(sub.evac_from + cursor * ps)
            eto.append(sub.evac_to + cursor * ps)
            pdst.append(sub.piece_dst + cursor)
            psrc.append(sub.piece_src + cursor)
            pn.append(sub.piece_n)
            prebuilt.append(sub.piece_rebuilt)
            rebuilt_pages += sub.rebuilt_pages
            whole_pages += sub.whole_pages
        if last:
            end_pages = cursor + sub.end_pages
            break
        if remap and cursor + sub.end_pages < lo:  # the stretch's gap: sources its plan left unused
            used = np.zeros(lo - cursor, dtype=bool)
            for s, n in zip(sub.piece_src.tolist(), sub.piece_n.tolist()):
                used[s:s + n] = True
            free = np.flatnonzero(~used)[::up] + cursor
            gap = np.arange(cursor + sub.end_pages, lo, up, dtype=np.int64)
            if free.size != gap.size:
                raise HeapCorrupted("pinning", f"the stretch of pages [{cursor}, {lo}) plans {gap.size} units "
                                    f"below the pinned unit but leaves {free.size} from-space units unused")
            pdst.append(gap)
            psrc.append(free)
            pn.append(np.full(gap.size, up, dtype=np.int64))
            prebuilt.append(np.ones(gap.size, dtype=bool))
            rebuilt_pages += gap.size * up
        # the pinned unit: its live objects where they are, its pages back at their own place
        c, d = np.searchsorted(starts, (base + lo * ps, base + hi * ps))
        kept = np.flatnonzero(live[c:d]) + c
        rows.append(kept)
        new.append(starts[kept])
        if remap:
            evac.append(np.zeros(kept.size, dtype=bool))
            pdst.append(np.array([lo], dtype=np.int64))
            psrc.append(np.array([lo], dtype=np.int64))
            pn.append(np.array([hi - lo], dtype=np.int64))
            prebuilt.append(np.zeros(1, dtype=bool))
            whole_pages += hi - lo
        cursor = hi
    # bump allocation resumes on a fresh page after a collection around pins: no page's
    # tail has to be cleared for it, whichever way a compactor finds the last object's page
    plan = Plan(live_rows=np.concatenate(rows), new_starts=np.concatenate(new), end_pages=end_pages,
                last_object_end=0)
    if remap:
        plan.evacuated = np.concatenate(evac)
        plan.evac_from, plan.evac_to = np.concatenate(efrom), np.concatenate(eto)
        plan.piece_dst, plan.piece_src = np.concatenate(pdst), np.concatenate(psrc)
        plan.piece_n, plan.piece_rebuilt = np.concatenate(pn), np.concatenate(prebuilt)
        plan.rebuilt_pages, plan.whole_pages = rebuilt_pages, whole_pages
    return plan
