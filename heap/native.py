"""The collector's hot side-table loops: compiled C (``heap._native``, built
by ``pip install`` from ``heap/_native_build.py``) when available, else the
same steps in numpy. Both compute the same results; the tests run both.

None of this touches heap memory (that goes through the Kernel protocol);
it only combines arrays the heap owns.
"""

from __future__ import annotations

import numpy as np

from .errors import HeapCorrupted
from .kernel import PAGE_PROCESSING, PAGE_UNPROCESSED, check_program_layout, compiled_program_layout
from .twins import pack_numpy, plan_order_numpy, plan_whole_numpy

try:
    from ._native import ffi as _ffi
    from ._native import lib as _lib
except ImportError:  # no compiler at install time: numpy does it, slower
    _ffi = _lib = None

COMPILED = _lib is not None
if COMPILED:  # its claims use remapgc_program.h's page states: built from the header heap.kernel declares?
    check_program_layout(*compiled_program_layout(_ffi, _lib), "heap._native")


def _ptr(ctype: str, arr: np.ndarray):
    return _ffi.from_buffer(ctype, arr)


def expand(firsts, counts, stride: int, *, compiled: bool = COMPILED) -> np.ndarray:
    """``firsts[i] + stride * k`` for every k < counts[i], i after i (flat)."""
    firsts = np.ascontiguousarray(firsts, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if counts.size == 0:
        return np.empty(0, dtype=np.int64)
    c = int(counts[0])
    if (counts == c).all():  # one shape: one broadcast
        return (firsts[:, None] + stride * np.arange(c, dtype=np.int64)[None, :]).ravel()
    if compiled:
        out = np.empty(int(counts.sum()), dtype=np.int64)
        _lib.rgc_expand(_ptr("int64_t[]", firsts), _ptr("int64_t[]", counts), firsts.size, stride,
                        _ptr("int64_t[]", out))
        return out
    ends = np.cumsum(counts)
    # one repeat: firsts shifted back by the slots before each object, plus a global ramp
    return np.repeat(firsts - stride * (ends - counts), counts) + stride * np.arange(int(ends[-1]), dtype=np.int64)


def first_visits(rows: np.ndarray, live: np.ndarray, stamp: np.ndarray) -> np.ndarray:
    """The rows not yet live, each once; marks them live."""
    rows = rows[~live[rows]]
    if rows.size:
        # one copy of each row without sorting: the last writer of stamp[row] survives
        order = np.arange(rows.size, dtype=np.int64)
        stamp[rows] = order
        rows = rows[stamp[rows] == order]
        live[rows] = True
    return rows


def mark_targets(words: np.ndarray, positions: np.ndarray, index, starts: np.ndarray, slot_target: np.ndarray,
                 live: np.ndarray, stamp: np.ndarray, *, compiled: bool = COMPILED) -> np.ndarray:
    """One marking level: record the row every slot word points at
    (``slot_target[positions[i]]``, -1 for None), mark the rows reached for
    the first time and return them. HeapCorrupted names a word that is no
    object start."""
    if compiled:
        words = np.ascontiguousarray(words, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        nxt = np.empty(words.size, dtype=np.int64)
        count = _ffi.new("int64_t *")
        ret = _lib.rgc_mark_targets(_ptr("int64_t[]", words), _ptr("int64_t[]", positions), words.size,
                                    _ptr("int32_t[]", index.map), index.map.size, index.base, index.shift,
                                    _ptr("int64_t[]", starts), starts.size, _ptr("int64_t[]", slot_target),
                                    _ptr("uint8_t[]", live.view(np.uint8)), _ptr("int64_t[]", nxt), count)
        if ret < 0:
            bad = int(words[-ret - 1])
            raise HeapCorrupted("reference slot of a live object", f"0x{bad:x} is not the start of any object")
        return nxt[: count[0]]
    held = words != 0
    targets = index.rows(starts, words[held], "reference slot of a live object")
    recorded = np.full(words.size, -1, dtype=np.int64)
    recorded[held] = targets
    slot_target[positions] = recorded
    return first_visits(targets, live, stamp)


def slot_values(rows: np.ndarray, nrefs: np.ndarray, slot_base: np.ndarray, slot_target: np.ndarray,
                new_by_row: np.ndarray, *, compiled: bool = COMPILED) -> np.ndarray:
    """The new value of every slot of the objects ``rows`` (object-major):
    the new address of the object it pointed at, or 0."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    counts = nrefs[rows]
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    if compiled:
        out = np.empty(total, dtype=np.int64)
        _lib.rgc_slot_values(_ptr("int64_t[]", rows), rows.size, _ptr("int64_t[]", np.ascontiguousarray(nrefs)),
                             _ptr("int64_t[]", np.ascontiguousarray(slot_base)), _ptr("int64_t[]", slot_target),
                             _ptr("int64_t[]", np.ascontiguousarray(new_by_row)), _ptr("int64_t[]", out))
        return out
    targets = slot_target[expand(slot_base[rows], counts, 1, compiled=False)]
    return np.where(targets >= 0, new_by_row[np.maximum(targets, 0)], 0)


def pack(totals: np.ndarray, page_size: int, hpage_pages: int = 0, *, compiled: bool = COMPILED):
    """Greedy in-order placement (see ``heap.alloc.pack``): (offsets, pages used)."""
    totals = np.ascontiguousarray(totals, dtype=np.int64)
    if not compiled or totals.size == 0:
        return pack_numpy(totals, page_size, hpage_pages)
    offsets = np.empty(totals.size, dtype=np.int64)
    pages = _lib.rgc_pack(_ptr("int64_t[]", totals), totals.size, page_size, hpage_pages, _ptr("int64_t[]", offsets))
    return offsets, int(pages)


def plan_whole(l_start: np.ndarray, l_total: np.ndarray, base: int, page_size: int, unit_pages: int,
               hpage_pages: int, dense_bytes: int, keep_budget: int = 0, *, compiled: bool = COMPILED, work=None):
    """The whole-moving part of the remap plan (see ``heap.plan``):
    (whole flags, new starts of the whole ones (others undefined), piece
    source pages, piece page counts, pages they fill, dead bytes kept in
    sparse units moved whole). A sparse unit of several pages holding only
    objects of a page or more moves whole while the dead bytes such units
    keep stay within ``keep_budget`` (the fullest units first). ``work``
    (a heap.mark.Workspace): the arrays are its retained buffers, valid until
    the next plan."""
    l_start = np.ascontiguousarray(l_start, dtype=np.int64)
    l_total = np.ascontiguousarray(l_total, dtype=np.int64)
    if not compiled:
        return plan_whole_numpy(l_start, l_total, base, page_size, unit_pages, hpage_pages, dense_bytes,
                                keep_budget)
    n = l_start.size
    whole, new_start, piece_src, piece_n = _outputs(work, n, ("whole", np.bool_), ("new_whole", np.int64),
                                                    ("piece_src", np.int64), ("piece_n", np.int64))
    end, kept = _ffi.new("int64_t *"), _ffi.new("int64_t *")
    pieces = _lib.rgc_plan_whole(_ptr("int64_t[]", l_start), _ptr("int64_t[]", l_total), n, base, page_size,
                                 unit_pages, hpage_pages, dense_bytes, keep_budget,
                                 _ptr("uint8_t[]", whole.view(np.uint8)), _ptr("int64_t[]", new_start),
                                 _ptr("int64_t[]", piece_src), _ptr("int64_t[]", piece_n), end, kept)
    if pieces < 0:
        raise MemoryError("planning the remap: no memory for the sparse units' list")
    if work is None:
        piece_src, piece_n = piece_src[:pieces].copy(), piece_n[:pieces].copy()
    else:
        piece_src, piece_n = piece_src[:pieces], piece_n[:pieces]
    return whole, new_start, piece_src, piece_n, int(end[0]), int(kept[0])


def _outputs(work, n: int, *specs) -> list[np.ndarray]:
    """Output arrays of n elements: fresh, or ``work``'s retained buffers."""
    if work is None:
        return [np.empty(n, dtype=dtype) for _, dtype in specs]
    return [work.buffer(name, n, dtype) for name, dtype in specs]


def plan_order(l_start, l_total, whole, new_whole, base: int, page_size: int, unit_pages: int, hpage_pages: int,
               whole_end: int, *, compiled: bool = COMPILED, work=None):
    """The remap plan's new order (see ``heap.plan``): (order of the live
    objects, their new starts, evacuees' old and rebuilt offsets in the
    from-space, the units the evacuees come from, pages the evacuees fill).
    ``work``: as for ``plan_whole``."""
    if not compiled:
        return plan_order_numpy(l_start, l_total, whole, new_whole, base, page_size, unit_pages, hpage_pages,
                                whole_end)
    n = l_start.size
    order, new_start, evac_from, evac_to, sources = _outputs(
        work, n, ("order", np.int64), ("new_starts", np.int64), ("evac_from", np.int64), ("evac_to", np.int64),
        ("sources", np.int64))
    nsources, ev_pages = _ffi.new("int64_t *"), _ffi.new("int64_t *")
    m = _lib.rgc_plan_order(_ptr("int64_t[]", np.ascontiguousarray(l_start)),
                            _ptr("int64_t[]", np.ascontiguousarray(l_total)),
                            _ptr("uint8_t[]", np.ascontiguousarray(whole).view(np.uint8)),
                            _ptr("int64_t[]", np.ascontiguousarray(new_whole)), n, base, page_size, unit_pages,
                            hpage_pages, whole_end, _ptr("int64_t[]", order), _ptr("int64_t[]", new_start),
                            _ptr("int64_t[]", evac_from), _ptr("int64_t[]", evac_to), _ptr("int64_t[]", sources),
                            nsources, ev_pages)
    return order, new_start, evac_from[:m], evac_to[:m], sources[: nsources[0]], int(ev_pages[0])


def mark_pages(kind: np.ndarray, addrs, totals, base: int, page_size: int, hpage_pages: int, small: int,
               large: int) -> None:
    """Compiled ``heap.alloc.Allocator.mark_pages``: the page kind of every page the objects occupy."""
    addrs = np.ascontiguousarray(addrs, dtype=np.int64)
    totals = np.ascontiguousarray(totals, dtype=np.int64)
    _lib.rgc_mark_pages(_ptr("int64_t[]", addrs), _ptr("int64_t[]", totals), addrs.size, base, page_size,
                        hpage_pages, small, large, _ptr("int8_t[]", kind))


def index_add(index_map: np.ndarray, starts, base: int, shift: int, first_row: int) -> None:
    """Compiled ``heap.mark.AddressIndex.add_many``: rows first_row, first_row + 1, ... at ``starts``."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    _lib.rgc_index_add(_ptr("int64_t[]", starts), starts.size, base, shift, first_row, _ptr("int32_t[]", index_map))


class PageClaims:
    """Claims over a concurrent cycle's page states (int8, heap.kernel.PAGE_*:
    unprocessed -> processing). Compiled, each claim is a compare-and-swap per page,
    safe against a compactor claiming in C without the GIL (``atomic``).
    The numpy twin is safe only among callers holding one lock."""

    def __init__(self, state: np.ndarray, *, compiled: bool = COMPILED):
        self.state = state
        self.atomic = compiled
        self._ptr = _ptr("int8_t[]", state) if compiled else None

    def claim_range(self, lo: int, hi: int) -> np.ndarray:
        """Claim every unprocessed page of [lo, hi): the mask of those claimed."""
        if self.atomic:
            mine = np.empty(hi - lo, dtype=np.bool_)
            _lib.rgc_claim_range(self._ptr, lo, hi, _ptr("uint8_t[]", mine))
            return mine
        seg = self.state[lo:hi]
        mine = seg == PAGE_UNPROCESSED
        seg[mine] = PAGE_PROCESSING
        return mine

    def claim_page(self, page: int) -> int:
        """Claim one page if unprocessed; its state before (PAGE_UNPROCESSED: it is now the caller's)."""
        if self.atomic:
            return _lib.rgc_claim_page(self._ptr, page)
        before = int(self.state[page])
        if before == PAGE_UNPROCESSED:
            self.state[page] = PAGE_PROCESSING
        return before
