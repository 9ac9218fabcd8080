"""The numpy twins of heap.native's longer compiled loops: the same results,
slower, used where heap._native was not built (and by the tests that check
both agree). Python stays once per page or per run, never once per object."""

from __future__ import annotations

import numpy as np

from .pages import large_pages, round_up


def pack_numpy(totals: np.ndarray, page_size: int, hpage_pages: int = 0) -> tuple[np.ndarray, int]:
    """``heap.alloc.pack`` in numpy: the Python loop runs once per page (per small page,
    or per large object), never once per object."""
    totals = np.asarray(totals, dtype=np.int64)
    n = totals.size
    if n == 0:
        return np.empty(0, dtype=np.int64), 0
    large = totals >= page_size
    ends = np.cumsum(totals)
    starts = ends - totals
    # first object that no longer fits in a page whose first object is j
    overflow = np.searchsorted(ends, starts + page_size, side="right")
    index = np.arange(n, dtype=np.int64)
    next_large = np.minimum.accumulate(np.where(large, index, n)[::-1])[::-1]
    stop = np.minimum(overflow, next_large)
    npages = large_pages(totals, page_size, hpage_pages)
    huge = (totals >= hpage_pages * page_size) if hpage_pages else np.zeros(n, dtype=bool)

    run_first: list[int] = []
    run_page: list[int] = []
    j = 0
    page = 0
    if not large.any():
        append, step = run_first.append, stop.item
        while j < n:
            append(j)
            j = step(j)
        run_page = range(len(run_first))
    else:
        stop_l, large_l, npages_l, huge_l = stop.tolist(), large.tolist(), npages.tolist(), huge.tolist()
        while j < n:
            if large_l[j]:
                if huge_l[j] or (hpage_pages and page % hpage_pages + npages_l[j] > hpage_pages):
                    page = round_up(page, hpage_pages)  # huge: aligned; medium: never straddles
                run_first.append(j)
                run_page.append(page)
                page += npages_l[j]
                j += 1
            else:
                run_first.append(j)
                run_page.append(page)
                page += 1
                j = stop_l[j]
    if not large.any():
        page = len(run_first)
    first = np.asarray(run_first, dtype=np.int64)
    pages = np.asarray(run_page, dtype=np.int64)
    run = np.zeros(n, dtype=np.int64)
    run[first[1:]] = 1
    run = np.cumsum(run)
    offsets = pages[run] * page_size + starts - starts[first][run]
    return offsets, page


def plan_order_numpy(l_start, l_total, whole, new_whole, base: int, ps: int, up: int, hpage_pages: int,
                     whole_end: int):
    """``heap.native.plan_order`` in numpy."""
    unit_bytes = up * ps
    w = np.flatnonzero(whole)
    ev = np.flatnonzero(~whole)
    ev_offsets, ev_pages = pack_numpy(l_total[ev], ps, hpage_pages)
    ev_unit = (l_start[ev] - base) // unit_bytes
    sources = ev_unit[np.flatnonzero(np.diff(ev_unit, prepend=-1))] if ev_unit.size else ev_unit
    evac_to = sources[ev_offsets // unit_bytes] * unit_bytes + ev_offsets % unit_bytes
    new_starts = np.concatenate([new_whole[w], base + whole_end * ps + ev_offsets])
    return np.concatenate([w, ev]), new_starts, l_start[ev] - base, evac_to, sources, ev_pages


def plan_whole_numpy(l_start, l_total, base: int, ps: int, up: int, hpage_pages: int, dense_bytes: int,
                     keep_budget: int = 0):
    """``heap.native.plan_whole`` in numpy."""
    page = (l_start - base) // ps
    owner = l_total >= up * ps  # owns its units: always moves whole
    unit = page // up  # non-decreasing: rows are in address order
    # live bytes of each unit holding non-owner objects, by run-length (no
    # array over all units: the arena may be much larger than what lives in it)
    shared = ~owner
    u_shared = unit[shared]
    in_dense = np.zeros(unit.size, dtype=bool)
    kept = 0
    if u_shared.size:
        first = np.flatnonzero(np.diff(u_shared, prepend=-1))
        unit_bytes = np.add.reduceat(l_total[shared], first)
        lengths = np.diff(np.append(first, u_shared.size))
        moves = unit_bytes >= dense_bytes
        if up > 1 and keep_budget > 0:  # sparse huge units of large objects only: kept whole within
            # the budget, the fullest first (ties in address order)
            large_only = np.minimum.reduceat((l_total[shared] >= ps).astype(np.int8), first).astype(bool)
            cand = np.flatnonzero(~moves & large_only)
            cand = cand[np.argsort(-unit_bytes[cand], kind="stable")]
            for u in cand.tolist():  # once per unit, never per object
                dead = up * ps - int(unit_bytes[u])
                if dead <= keep_budget - kept:
                    kept += dead
                    moves[u] = True
        in_dense[shared] = np.repeat(moves, lengths)
    whole = owner | in_dense
    # the pieces that move whole (an owner's run, a dense unit), in address
    # order; consecutive whole objects of one piece are adjacent in row order
    w = np.flatnonzero(whole)
    w_owner, w_unit = owner[w], unit[w]
    starts_piece = w_owner.copy()
    if w.size:
        starts_piece[0] = True
        starts_piece[1:] |= (w_unit[1:] != w_unit[:-1]) | w_owner[:-1]
    piece_of = np.cumsum(starts_piece) - 1
    fw = w[starts_piece]
    piece_src = np.where(owner[fw], page[fw], unit[fw] * up)
    piece_n = np.where(owner[fw], large_pages(l_total[fw], ps, hpage_pages), up)
    piece_dst = np.cumsum(piece_n) - piece_n
    new_start = np.zeros(l_start.size, dtype=np.int64)
    new_start[w] = base + (piece_dst[piece_of] + page[w] - piece_src[piece_of]) * ps + (l_start[w] - base) % ps
    return whole, new_start, piece_src, piece_n, int(piece_n.sum()), kept
