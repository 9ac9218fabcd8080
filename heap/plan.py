"""Planning: the new address of every live object, and where every to-space
page comes from.

Remap plan (docs/design.md, "The pause": plan). The arena's used pages are classified:

* a large live object's page run moves whole (zero-copy);
* a small-object page whose live bytes are at least ``dense`` x page size
  moves whole, holes and all (zero-copy);
* the live objects of the other (sparse) small pages are evacuated: packed
  into rebuilt pages. The rebuilt pages are the sparse pages themselves, in
  the from-space: the evacuees slide down through the sequence of sparse
  pages (one ordered memmove pass, like the copying compactor, but only over
  pages that are invisible to mutators), so no fresh page is faulted in and
  the rebuilt pages install with MOVE like any other.

With THP the same rules apply one level up, to 2 MiB units instead of pages
(moving a piece of a huge page would split it, which costs more than
copying it): huge objects move whole, dense 2 MiB units move whole by PMD,
the live objects of sparse units slide into the first sparse units, which
then move by PMD too (still huge pages: a memmove inside one does not split it).

To-space layout, from the arena base: the whole-moving units in address
order, then the rebuilt pages (unit-aligned). Both parts
keep address order, so the new side tables are the concatenation of two
ordered selections, never a sort.

The plan is kept as pieces (a dense unit, an object's page run, a rebuilt
unit), from which ``Plan.runs()`` gives the batched MOVEs, and from which the
concurrent collector's install program (heap.program) finds each to-space
page's source page in the from-space, and whether it is a rebuilt one.

Copy plan (the sliding compactor): every live object packed in order from the
arena base; a live object never moves up, so one ordered memmove pass works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .core import live_rows, plan_stays, same_places
from .native import pack, plan_order, plan_whole

# With THP, the dead bytes that sparse huge units holding only large objects may
# keep resident by moving whole (instead of copying their objects out), as a
# fraction of the live bytes: moving a unit costs well under a microsecond,
# copying 1 MiB out of it ~150 us (docs/performance.md).
SPARSE_KEEP = 0.125


@dataclass
class Plan:
    live_rows: np.ndarray  # old rows of the live objects, in new address order
    new_starts: np.ndarray  # their new addresses (ascending)
    end_pages: int  # to-space size in pages, from the arena base
    # remap only:
    evacuated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per live object (new order)
    # evacuees (in new order): offset of their old and their rebuilt copy in the from-space
    evac_from: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    evac_to: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # the to-space as pieces in address order: piece i is piece_n[i] pages at
    # arena page piece_dst[i], coming from page piece_src[i] of the from-space
    # (a rebuilt unit when piece_rebuilt[i])
    piece_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    piece_src: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    piece_n: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    piece_rebuilt: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    rebuilt_pages: int = 0
    whole_pages: int = 0
    last_object_end: int = 0  # where small-object bumping may resume (0: start a new page)
    # the to-space is built in the arena itself (heap.pause.Pause.remap: no page
    # would move whole): nothing is flipped or installed
    in_arena: bool = False
    # pages from the arena base that stay where they are: runs() leaves them out
    in_place_pages: int = 0
    # dead bytes kept resident in sparse huge-page units moved whole (their large
    # objects not copied out): the memory traded for time, bounded by keep_budget
    kept_dead_bytes: int = 0
    # every live object's new address is its old one (nothing died since the last
    # compaction, or only above the last live object): nothing moves, no slot changes
    identity: bool = False

    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Maximal runs one MOVE can do (pieces contiguous on both sides merged):
        (arena page, source page, rebuilt?, pages) per run."""
        n = self.piece_n.size
        if n == 0 or self.in_place_pages >= self.end_pages:  # nothing to install (in_arena: all in place)
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros(0, dtype=bool), z
        end_dst = self.piece_dst + self.piece_n
        end_src = self.piece_src + self.piece_n
        brk = np.ones(n, dtype=bool)
        brk[1:] = ((self.piece_dst[1:] != end_dst[:-1]) | (self.piece_src[1:] != end_src[:-1])
                   | (self.piece_rebuilt[1:] != self.piece_rebuilt[:-1]))
        first = np.flatnonzero(brk)
        last = np.append(first[1:], n) - 1
        dst, src, rebuilt, count = (self.piece_dst[first], self.piece_src[first], self.piece_rebuilt[first],
                                    end_dst[last] - self.piece_dst[first])
        keep = self.in_place_pages
        if keep:  # the prefix is in place already: only what lies above it is installed
            above = dst + count > keep
            dst, src, rebuilt, count = dst[above], src[above], rebuilt[above], count[above]
            cut = np.maximum(keep - dst, 0)
            dst, src, count = dst + cut, src + cut, count - cut
        return dst, src, rebuilt, count


def plan_remap(starts, totals, live, base: int, page_size: int, hpage_pages: int,
               used_pages: int, dense: float, keep_budget: int = 0, work=None, stays_check: bool = True) -> Plan:
    """The remap plan. The *unit* is what moves whole: a page, or with THP a
    2 MiB region (so whole-moving units go by PMD and are never split).
    An object at least one unit long owns its units and always moves whole;
    other units move whole when dense, else their live objects are evacuated
    (copied) into rebuilt units -- except, with THP, a sparse unit holding
    only objects of a page or more, which moves whole (one PMD move instead
    of copying megabytes) while the dead bytes such units keep stay within
    ``keep_budget``. ``work`` (a heap.mark.Workspace): the plan's arrays are
    its retained buffers (no fresh memory faulted in per collection), valid
    until the next plan with it. When nothing died, one pass first asks
    whether every object would stay (heap.core.plan_stays: page units);
    then the plan is built without planning (``stays_check=False``: plan it)."""
    ps = page_size
    up = hpage_pages or 1  # pages per unit
    dense_bytes = int(np.ceil(dense * up * ps))
    if np.count_nonzero(live) == live.size:  # nothing died: every row, no gathers
        rows, l_start, l_total = None, starts, totals
        stays = plan_stays(starts, totals, base, ps, dense_bytes) if not hpage_pages and stays_check else None
        if stays is not None:  # every object stays: the plan without planning (one pass, no arrays)
            return _staying_plan(starts, totals, base, ps, *stays, work)
    else:
        rows, l_start, l_total = live_rows(live, starts, totals, work)
    whole, new_start, unit_src, unit_n, whole_end, kept = plan_whole(l_start, l_total, base, ps, up, hpage_pages,
                                                                     dense_bytes, keep_budget, work=work)
    unit_dst = np.cumsum(unit_n) - unit_n
    order, new_starts, evac_from, evac_to, sources, ev_pages = plan_order(
        l_start, l_total, whole, new_start, base, ps, up, hpage_pages, whole_end, work=work)
    used = -(-ev_pages // up)  # rebuilt units; never more than the units they come from
    nev = evac_from.size
    last_end = 0
    if ev_pages and l_total[order[-1]] < ps:
        last_end = int(new_starts[-1] + l_total[order[-1]])
    evacuated = np.zeros(order.size, dtype=bool) if work is None else work.buffer("evacuated", order.size, np.bool_)
    evacuated[:order.size - nev] = False
    evacuated[order.size - nev:] = True
    rebuilt = np.zeros(unit_n.size + used, dtype=bool)
    rebuilt[unit_n.size:] = True
    if used:  # whole pieces, then the rebuilt units (no concatenation when one part is empty:
        # every temporary of a large plan is fresh memory, page faults inside the pause)
        unit_dst = np.concatenate([unit_dst, whole_end + np.arange(used, dtype=np.int64) * up])
        unit_src = np.concatenate([unit_src, sources[:used] * up])
        unit_n = np.concatenate([unit_n, np.full(used, up, dtype=np.int64)])
    in_order = order if rows is None else _take(rows, order, work, "live_rows")
    return Plan(
        live_rows=in_order,
        new_starts=new_starts,
        end_pages=whole_end + used * up,
        evacuated=evacuated,
        evac_from=evac_from,
        evac_to=evac_to,
        piece_dst=unit_dst,
        piece_src=unit_src,
        piece_n=unit_n,
        piece_rebuilt=rebuilt,
        rebuilt_pages=used * up,
        whole_pages=whole_end,
        last_object_end=last_end,
        kept_dead_bytes=kept,
        identity=same_places(starts, in_order, new_starts),
    )


def _staying_plan(starts, totals, base: int, ps: int, whole_end: int, ev_first: int, ev_pages: int, work) -> Plan:
    """The plan of a heap (every object live, page units) whose objects all stay
    where they lie: the pages below ``whole_end`` move whole onto themselves
    (one piece), the objects from ``ev_first`` on are the sparse pages'
    evacuees, rebuilt onto their own pages -- what plan_remap would produce."""
    n = starts.size
    evacuated = np.zeros(n, dtype=bool) if work is None else work.buffer("evacuated", n, np.bool_)
    evacuated[:ev_first] = False
    evacuated[ev_first:] = True
    ev_from = starts[ev_first:] - base
    rebuilt_units = whole_end + np.arange(ev_pages, dtype=np.int64)
    first = np.array([0] if whole_end else [], dtype=np.int64)
    last_end = int(starts[-1] + totals[-1]) if ev_pages and totals[-1] < ps else 0
    return Plan(
        live_rows=np.arange(n, dtype=np.int64) if work is None else work.arange(n),
        new_starts=starts,
        end_pages=whole_end + ev_pages,
        evacuated=evacuated,
        evac_from=ev_from,
        evac_to=ev_from.copy(),
        piece_dst=np.concatenate([first, rebuilt_units]),
        piece_src=np.concatenate([first, rebuilt_units]),
        piece_n=np.concatenate([first + whole_end, np.ones(ev_pages, dtype=np.int64)]),
        piece_rebuilt=np.concatenate([np.zeros(first.size, dtype=bool), np.ones(ev_pages, dtype=bool)]),
        rebuilt_pages=ev_pages,
        whole_pages=whole_end,
        last_object_end=last_end,
        identity=True,
    )


def _take(values: np.ndarray, at: np.ndarray, work, name: str) -> np.ndarray:
    """values[at], into the retained buffer ``name`` when there is ``work``."""
    if work is None:
        return values[at]
    return np.take(values, at, out=work.buffer(name, at.size, values.dtype))


def plan_slide(starts, totals, live, base: int, page_size: int, hpage_pages: int) -> Plan:
    rows = np.flatnonzero(live)
    l_total = totals[rows]
    offsets, npages = pack(l_total, page_size, hpage_pages)
    new_starts = base + offsets
    last_end = int(new_starts[-1] + l_total[-1]) if rows.size and l_total[-1] < page_size else 0
    return Plan(live_rows=rows, new_starts=new_starts, end_pages=npages, last_object_end=last_end,
                identity=same_places(starts, rows, new_starts))
