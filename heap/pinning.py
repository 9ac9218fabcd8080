"""Pinning: objects that never move (docs/embedding.md, "Pinning").

``Heap.pin(ref)`` keeps an object at its address, with its bytes, until
``Heap.unpin(ref)``; a pinned object is also a root (pinning a dead object
would mean nothing). Pins nest: an object pinned twice needs two unpins.

How compaction works around pinned objects: every unit (page; with THP,
2 MiB region) from the arena base up to the end of the last pinned object
stays where it is -- the *pinned prefix* -- and the compactors plan the rest
of the arena as usual, from the end of the prefix (``plan_around_pins``).
In the prefix the live objects keep their addresses and the dead ones leave
holes, reclaimed by the first collection after the pins above them go. The
remap compactors move the prefix's pages out with the flip and back in with
the install, whole, zero-copy: the same physical pages, at the same
addresses, with the same bytes; a stop-the-world collection does it inside
the pause, a concurrent one early in its install (a touch of such a page in
between waits for the fault handler, as for any page not yet installed). The
copying compactor leaves the prefix alone.

The trade-off is deliberate: no gap ever opens in the to-space (the install
program and the allocator keep their one-contiguous-to-space shape), at the
price of fragmentation below a pinned object while it is pinned. Pin
long-lived objects early (they then sit low in the arena), or unpin soon.
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


def prefix_pages(pinned_ends: np.ndarray, starts: np.ndarray, totals: np.ndarray, base: int, page_size: int,
                 unit_pages: int) -> int:
    """Pages of the pinned prefix: whole units from the arena base up to the
    end of the last pinned object (``pinned_ends``: where each pinned object
    ends; 0 pages when there is none), extended so that no object straddles
    its end."""
    if not pinned_ends.size:
        return 0
    unit = unit_pages * page_size
    end = base + round_up(int(pinned_ends.max()) - base, unit)
    while True:
        k = int(np.searchsorted(starts, end, side="left"))
        reach = int((starts[:k] + totals[:k]).max()) if k else base
        if reach <= end:
            return (end - base) // page_size
        end = base + round_up(reach - base, unit)


def plan_around_pins(planner, starts, totals, live, base: int, page_size: int, hpage_pages: int,
                     used_pages: int, prefix: int, *args) -> Plan:
    """``planner`` (heap.plan.plan_remap or plan_slide) over the arena above a
    pinned prefix of ``prefix`` pages, the prefix kept in place: one identity
    piece in front of the planner's pieces, its live objects at their own
    addresses. ``args``: the planner's own trailing arguments (after
    ``hpage_pages``, and for plan_remap after ``used_pages``)."""
    remap = len(args) > 0  # plan_remap takes (used_pages, dense); plan_slide stops at hpage_pages
    cut = base + prefix * page_size
    k = int(np.searchsorted(starts, cut, side="left"))
    if remap:
        sub = planner(starts[k:], totals[k:], live[k:], cut, page_size, hpage_pages, used_pages - prefix, *args)
    else:
        sub = planner(starts[k:], totals[k:], live[k:], cut, page_size, hpage_pages)
    kept = np.flatnonzero(live[:k])
    nkept = kept.size
    plan = Plan(
        live_rows=np.concatenate([kept, sub.live_rows + k]),
        new_starts=np.concatenate([starts[kept], sub.new_starts]),
        end_pages=prefix + sub.end_pages,
        # bump allocation resumes on a fresh page after a collection around pins: no page's
        # tail (in the prefix, or the sub-plan's last one) has to be cleared for it
        last_object_end=0,
    )
    if remap:
        off = prefix * page_size
        lead = [np.array([0], dtype=np.int64)] if prefix else []
        plan.evacuated = np.concatenate([np.zeros(nkept, dtype=bool), sub.evacuated])
        plan.evac_from = sub.evac_from + off
        plan.evac_to = sub.evac_to + off
        plan.piece_dst = np.concatenate(lead + [sub.piece_dst + prefix])
        plan.piece_src = np.concatenate(lead + [sub.piece_src + prefix])
        plan.piece_n = np.concatenate(([np.array([prefix], dtype=np.int64)] if prefix else []) + [sub.piece_n])
        plan.piece_rebuilt = np.concatenate(([np.zeros(1, dtype=bool)] if prefix else []) + [sub.piece_rebuilt])
        plan.rebuilt_pages = sub.rebuilt_pages
        plan.whole_pages = prefix + sub.whole_pages
    return plan
