"""Planning: the new address of every live object, and where every to-space
page comes from.

Remap plan (ARCHITECTURE.md step 2). The arena's used pages are classified:

* a large live object's page run moves whole (zero-copy);
* a small-object page whose live bytes are at least ``dense`` x page size
  moves whole, holes and all (zero-copy);
* the live objects of the other (sparse) small pages are evacuated: copied
  into rebuilt pages, packed.

To-space layout, from the arena base: the whole-moving units in address
order (huge objects re-aligned to 2 MiB), then the rebuilt pages. Both parts
keep address order, so the new side tables are the concatenation of two
ordered selections, never a sort.

The per-page plan is two arrays over to-space pages, in address order:
``page_dst`` (page index in the arena) and ``page_src`` (page index in the
from-space when ``page_rebuilt`` is False, else in the rebuilt scratch area).
The concurrent compactor and the fault handler install from the same arrays.

Copy plan (the sliding compactor): every live object packed in order from the
arena base; a live object never moves up, so one ordered memmove pass works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .alloc import large_pages, pack


@dataclass
class Plan:
    live_rows: np.ndarray  # old rows of the live objects, in new address order
    new_starts: np.ndarray  # their new addresses (ascending)
    end_pages: int  # to-space size in pages, from the arena base
    # remap only:
    evacuated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per live object (new order)
    rebuilt_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # of evacuees, in scratch
    page_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    page_src: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    page_rebuilt: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    rebuilt_pages: int = 0
    whole_pages: int = 0
    last_object_end: int = 0  # where small-object bumping may resume (0: start a new page)

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Split the per-page plan into maximal runs that one MOVE can do:
        returns (first plan index, page count) of each run."""
        n = self.page_dst.size
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        brk = np.ones(n, dtype=bool)
        brk[1:] = ((np.diff(self.page_dst) != 1) | (np.diff(self.page_src) != 1)
                   | (self.page_rebuilt[1:] != self.page_rebuilt[:-1]))
        first = np.flatnonzero(brk)
        count = np.diff(np.append(first, n))
        return first, count


def plan_remap(starts, totals, live, base: int, page_size: int, hpage_pages: int,
               used_pages: int, dense: float) -> Plan:
    ps = page_size
    rows = np.flatnonzero(live)
    l_start = starts[rows]
    l_total = totals[rows]
    large = l_total >= ps
    page = (l_start - base) // ps
    small_bytes = np.bincount(page[~large], weights=l_total[~large], minlength=used_pages)
    dense_page = small_bytes >= dense * ps
    whole = large | dense_page[page]

    # units that move whole, in address order
    dense_pages = np.flatnonzero(dense_page)
    l_npages = large_pages(l_total[large], ps, hpage_pages)
    unit_src = np.concatenate([dense_pages, page[large]])
    unit_n = np.concatenate([np.ones(dense_pages.size, dtype=np.int64), l_npages])
    unit_huge = np.concatenate([np.zeros(dense_pages.size, dtype=bool),
                                (l_total[large] >= hpage_pages * ps) if hpage_pages
                                else np.zeros(l_npages.size, dtype=bool)])
    order = np.argsort(unit_src, kind="stable")
    unit_src, unit_n, unit_huge = unit_src[order], unit_n[order], unit_huge[order]
    unit_dst = np.cumsum(unit_n) - unit_n
    for k in np.flatnonzero(unit_huge):  # few: only objects >= 2 MiB
        pad = -int(unit_dst[k]) % hpage_pages
        if pad:
            unit_dst[k:] += pad
    whole_end = int(unit_dst[-1] + unit_n[-1]) if unit_n.size else 0

    nwhole = int(unit_n.sum())
    rank = np.arange(nwhole, dtype=np.int64) - np.repeat(np.cumsum(unit_n) - unit_n, unit_n)
    src_pages = np.repeat(unit_src, unit_n) + rank
    dst_pages = np.repeat(unit_dst, unit_n) + rank
    forward_page = np.full(max(used_pages, 1), -1, dtype=np.int64)
    forward_page[src_pages] = dst_pages

    ev = ~whole
    ev_offsets, ev_pages = pack(l_total[ev], ps, 0)
    whole_new = base + forward_page[page[whole]] * ps + (l_start[whole] - base) % ps
    ev_new = base + whole_end * ps + ev_offsets

    live_rows = np.concatenate([rows[whole], rows[ev]])
    new_starts = np.concatenate([whole_new, ev_new])
    if ev_pages:
        last_end = int(ev_new[-1] + l_total[ev][-1])
    else:
        last_end = 0
    return Plan(
        live_rows=live_rows,
        new_starts=new_starts,
        end_pages=whole_end + ev_pages,
        evacuated=np.concatenate([np.zeros(int(whole.sum()), dtype=bool), np.ones(int(ev.sum()), dtype=bool)]),
        rebuilt_offsets=ev_offsets,
        page_dst=np.concatenate([dst_pages, whole_end + np.arange(ev_pages, dtype=np.int64)]),
        page_src=np.concatenate([src_pages, np.arange(ev_pages, dtype=np.int64)]),
        page_rebuilt=np.concatenate([np.zeros(nwhole, dtype=bool), np.ones(ev_pages, dtype=bool)]),
        rebuilt_pages=ev_pages,
        whole_pages=nwhole,
        last_object_end=last_end,
    )


def plan_slide(starts, totals, live, base: int, page_size: int, hpage_pages: int) -> Plan:
    rows = np.flatnonzero(live)
    l_total = totals[rows]
    offsets, npages = pack(l_total, page_size, hpage_pages)
    new_starts = base + offsets
    last_end = int(new_starts[-1] + l_total[-1]) if rows.size and l_total[-1] < page_size else 0
    return Plan(live_rows=rows, new_starts=new_starts, end_pages=npages, last_object_end=last_end)
