"""``Heap.verify()``: every invariant of the heap, checked in a fixed order;
the first broken one raises HeapCorrupted naming it."""

from __future__ import annotations

import numpy as np

from . import core
from .alloc import Allocator, round_up
from .errors import HeapCorrupted
from .mark import rows_of


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def verify_heap(pause) -> None:
    """Check the heap whose parts ``pause`` (heap.pause.Pause) holds."""
    k, model, a, t = pause.kernel, pause.model, pause.alloc, pause.table
    ps, base = a.page_size, a.base
    starts, nbytes, nrefs, totals = t.start, t.nbytes, t.nrefs, t.total

    # side tables: sizes, alignment, bounds, order
    expect = model.total_bytes(nbytes, nrefs)
    if (expect != totals).any():
        i = _first(expect != totals)
        raise HeapCorrupted("side tables", f"object {i} at 0x{int(starts[i]):x} records {int(totals[i])} bytes, "
                            f"its shape needs {int(expect[i])}")
    bad = (starts % model.alignment != 0) | (starts < base) | (starts + totals > a.top)
    if bad.any():
        i = _first(bad)
        raise HeapCorrupted("side tables", f"object {i} at 0x{int(starts[i]):x} is misaligned or outside "
                            f"[0x{base:x}, 0x{a.top:x})")
    if starts.size > 1:
        overlap = starts[1:] < starts[:-1] + totals[:-1]
        if overlap.any():
            i = _first(overlap)
            raise HeapCorrupted("side tables", f"objects {i} and {i + 1} overlap or are out of address order")

    # the address index and the slot numbering agree with the start column
    if starts.size:
        try:
            indexed = pause.index.rows(starts, starts, "address index")
        except HeapCorrupted:
            indexed = None
        if indexed is None or (indexed != np.arange(starts.size)).any():
            raise HeapCorrupted("side tables", "the address index does not map every object start to its row")
        slot = t.slot
        if slot[0] != 0 or (slot[1:] != slot[:-1] + nrefs[:-1]).any():
            raise HeapCorrupted("side tables", "the slot numbering is not the running sum of nrefs")

    # placement rules (objects.py)
    large = totals >= ps
    crosses = ~large & ((starts - base) // ps != (starts + totals - 1 - base) // ps)
    unaligned = large & ((starts - base) % ps != 0)
    if a.hpage_pages:
        hpb = a.hpage_pages * ps
        unaligned |= (totals >= hpb) & ((starts - base) % hpb != 0)
        unaligned |= large & (totals < hpb) & ((starts - base) // hpb != (starts + totals - 1 - base) // hpb)
    if (crosses | unaligned).any():
        i = _first(crosses | unaligned)
        raise HeapCorrupted("placement", f"object {i} at 0x{int(starts[i]):x} ({int(totals[i])} bytes) breaks the "
                            "page placement rules")

    # page kinds
    probe = Allocator(base, a.size, ps, a.hpage_pages)
    probe.mark_pages(starts, totals)
    if (probe.page_kind != a.page_kind).any():
        p = _first(probe.page_kind != a.page_kind)
        raise HeapCorrupted("page states", f"page {p} (0x{base + p * ps:x}) is recorded as kind "
                            f"{int(a.page_kind[p])}, its objects make it {int(probe.page_kind[p])}")

    # headers in the arena match the side tables, then every reference slot holds
    # None or an object start: in C where the heap's pause does its work there
    if starts.size and pause.core:
        core.verify_objects(k, model, pause.index, starts, nbytes, nrefs, totals, ps)
    elif starts.size:
        hw = model.header_bytes // 8 - getattr(model, "host_words", 0)  # the host's own words: not ours to check
        where = (starts[:, None] + 8 * np.arange(hw)[None, :]).ravel()
        words = k.load_words(where.astype(np.uint64)).reshape(-1, hw)
        expect = model.header_words(nbytes, nrefs, large)[:, :hw].astype(np.uint64)
        wrong = (words != expect).any(axis=1)
        if wrong.any():
            i = _first(wrong)
            raise HeapCorrupted("headers", f"object {i} at 0x{int(starts[i]):x} has header "
                                f"{[hex(int(w)) for w in words[i]]}, expected {[hex(int(w)) for w in expect[i]]}")

        # every reference slot holds None, an immediate (low bit set) or an object start
        slots = model.slot_addresses(starts, nrefs)
        values = k.load_words(slots.astype(np.uint64)).view(np.int64)
        held = (values != 0) & ((values & 1) == 0)
        rows_of(starts, values[held], "reference targets")

    # roots are object starts
    rows_of(starts, pause.handles.roots(), "roots")

    # nothing lives above top, the bump remainder reads zero, the from-space is empty
    hp_bytes = a.hpage_pages * ps if a.hpage_pages else ps
    free_from = base + round_up(a.top - base, hp_bytes)
    if free_from < a.end and k.resident_bytes(free_from, a.end - free_from):
        raise HeapCorrupted("page states", f"pages above the heap top 0x{a.top:x} are resident")
    if a.cursor and k.load(a.cursor, a.limit - a.cursor).count(0) != a.limit - a.cursor:
        raise HeapCorrupted("free space", f"the free rest of the current page at 0x{a.cursor:x} is not zero")
    fs = pause.spaces.from_space
    if fs and k.resident_bytes(fs, a.size):
        raise HeapCorrupted("page states", "the from-space still holds pages after the install")
