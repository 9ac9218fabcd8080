"""The collector's per-object work in C (``heap._core``, from heap/csrc/core.c):
marking, slot fixup (alone, or fused with the compactors' slide: ``slide``),
root forwarding, the no-garbage plan check (``plan_stays``) and verify's
per-object checks, each one cffi call that runs without the GIL, the same
code on both backends.

What each call produces is what the numpy paths produce (``heap.mark.mark``,
``heap.install.slot_values`` + ``store_words``, ``AddressIndex.rows``,
``heap.verify``), so the collector can use either; tests/core checks them
against each other and against a plain Python model.

Memory. The C code reads and writes heap memory in place. A backend says how
through ``kernel.frame_pointers(addr, npages, write)``: ``None`` when the
heap's addresses are this process's own (Linux), else a table of host
addresses of each page's contents (the simulator's frames), 0 where a
user-mode access would fault. When the C code meets such a page it stops
before touching the object it was at; ``Memory.bring_in`` then makes that
access through the Kernel protocol (which faults the page in exactly as a
user-mode access would: demand fill, copy-on-write break, userfault) and
the call resumes. A backend without ``frame_pointers``, or an object model
other than the default layout, has no core: ``supports`` says so and the
caller keeps the numpy path.

Immediates (docs/embedding.md section 5): a slot word with its low bit set
is not a reference. Marking records it as ``IMMEDIATE`` in ``slot_target``
and never follows it, the fixup leaves its slot as it is, verify accepts it.

Marking is depth-first on an explicit stack (a row is pushed once, so the
stack needs one entry per object and never overflows): a chain of a million
links costs what a million separate objects cost. It is memory-bound (a
cache miss per object's slots, per slot_base row and per slot_target line),
so its loads are software-pipelined (core.c: rows, words and targets wait in
small rings while their lines come in), a slot word's row comes from a
start bitmap with a rank table (cache-resident) instead of the address
index and the start column, and large heaps are marked by several threads
(``PARALLEL_MARK_ROWS``, ``MARK_THREADS``; direct memory only).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import HeapCorrupted
from .mark import Marking
from .objects import FLAG_LARGE, MAGIC, DefaultObjectModel

try:
    from ._core import ffi, lib
except ImportError:  # no compiler at install time: the numpy paths serve
    ffi = lib = None

COMPILED = lib is not None

# The mark runs on several threads (core.c: each scans from its own stack, handing half of it to an
# idle one) for heaps of PARALLEL_MARK_ROWS objects and more, where it pays for starting them; one
# per CPU this process may run on, up to MARK_THREADS_MAX (a stop-the-world pause leaves them idle).
PARALLEL_MARK_ROWS = 65536
MARK_THREADS_MAX = 4
MARK_THREADS = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                   MARK_THREADS_MAX)
# Objects.start_bits builds no bitmap when it would have more words than this many per object
# and slot: building it costs ~2 ns a word at every mark (512 MiB of 256 KiB objects: ~0.7 ms
# for 1026 objects), a lookup through the index one cache miss per reference
SPARSE_SPAN_WORDS = 4
IMMEDIATE = -2  # Marking.slot_target of a slot holding an immediate (core.h RGC_IMMEDIATE)

_LARGE_BIT = FLAG_LARGE << 32  # DefaultObjectModel's header word 1: nrefs | flags << 32 | magic << 48
_TAG = MAGIC << 48


def _p(ctype: str, arr: np.ndarray):
    return ffi.from_buffer(ctype, arr)


def slot_offset_of(model) -> int | None:
    """Offset of slot 0 from an object's start, when ``model`` lays objects out
    as DefaultObjectModel does (slots consecutive after a fixed header, the
    default header words); None for any other model."""
    if not isinstance(model, DefaultObjectModel):
        return None
    cls = type(model)
    for name in ("slot_addresses", "header_words", "total_bytes"):
        if getattr(cls, name) is not getattr(DefaultObjectModel, name):
            return None
    return model.header_bytes


def supports(kernel, model) -> bool:
    """Whether the C core can do this heap's per-object work: it is built, the
    backend lets compiled code reach its memory (``memory_in_place``, declared
    in heap.kernel) and the objects have the default layout."""
    return COMPILED and kernel.memory_in_place and slot_offset_of(model) is not None


class Memory:
    """Heap memory [lo, hi) as the C core reaches it (``struct rgc_mem``)."""

    def __init__(self, kernel, lo: int, hi: int, write: bool):
        ps = kernel.page_size
        self.kernel, self.write, self.page_size = kernel, write, ps
        self.shift = ps.bit_length() - 1
        self.page_lo = lo >> self.shift
        npages = max(((hi + ps - 1) >> self.shift) - self.page_lo, 0)
        self.table = kernel.frame_pointers(self.page_lo << self.shift, npages, write)
        self.struct = ffi.new("struct rgc_mem *")
        self.struct.page_shift = self.shift
        self.struct.page_lo = self.page_lo
        if self.table is None:
            self.struct.direct = 1
        else:
            self.table = np.ascontiguousarray(self.table, dtype=np.uint64)
            self.struct.page = _p("uint64_t[]", self.table)
            self.struct.npages = self.table.size
        self.faults = 0  # pages brought in through the Kernel protocol

    def bring_in(self, page: int) -> None:
        """Make the access the C core could not (a load, or a store of what the
        word holds), so the kernel faults the page in; then refresh its entry."""
        addr = page << self.shift
        k = self.kernel
        if self.write:
            k.store(addr, k.load(addr, 8))
        else:
            k.load(addr, 8)
        i = page - self.page_lo
        if not 0 <= i < self.table.size:
            raise IndexError(f"page 0x{addr:x} is outside the span this core call was given")
        self.table[i] = k.frame_pointers(addr, 1, self.write)[0]
        if self.table[i] == 0:
            raise RuntimeError(f"page 0x{addr:x} is still not accessible after the kernel served its fault")
        self.faults += 1


class Objects:
    """The side tables as the C core reads them (``struct rgc_objects``)."""

    def __init__(self, index, starts, nrefs, slot_base, slot_offset: int, totals=None):
        self.arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (starts, nrefs, slot_base)]
        self.starts, self.nrefs, self.slot_base = self.arrays
        s = self.struct = ffi.new("struct rgc_objects *")
        s.start, s.nrefs, s.slot_base = (_p("int64_t[]", a) for a in self.arrays)
        if totals is not None:
            self.totals = np.ascontiguousarray(totals, dtype=np.int64)
            s.total = _p("int64_t[]", self.totals)
        s.n = self.starts.size
        self.index_map = index.map
        s.index = _p("int32_t[]", index.map)
        s.index_len = index.map.size
        s.base = index.base
        s.shift = index.shift
        s.slot_offset = slot_offset

    def start_bits(self, work) -> None:
        """The starts as the bitmap and rank table marking looks rows up in
        (core.h), built in ``work``'s retained arrays -- unless the span is
        sparse (few objects and slots over a wide span, large objects): the
        bitmap is built over the whole span at every mark, so marking there
        looks rows up in the index instead (bits NULL)."""
        s = self.struct
        nwords = int(((self.starts[-1] - s.base) >> s.shift) // 64 + 1) if self.starts.size else 0
        n = self.starts.size
        if nwords > SPARSE_SPAN_WORDS * (n + (int(self.slot_base[-1] + self.nrefs[-1]) if n else 0)):
            return
        bits, rank = work.start_bits(nwords)
        self.bits, self.rank = bits, rank
        s.bits, s.rank, s.nwords = _p("uint64_t[]", bits), _p("int32_t[]", rank), nwords
        lib.rgc_core_start_bits(s)

    def slot_span(self) -> tuple[int, int]:
        """[lo, hi) covering every object's slots (rows are in address order)."""
        if not self.starts.size:
            return 0, 0
        off = self.struct.slot_offset
        return int(self.starts[0]), int(self.starts[-1]) + off + 8 * int(self.nrefs[-1])


def _bad_address(what: str, addr: int) -> HeapCorrupted:
    return HeapCorrupted(what, f"0x{addr & 0xFFFFFFFFFFFFFFFF:x} is not the start of any object")


def mark(kernel, model, index, work, starts, nrefs, slot_base, roots, totals=None, threads: int | None = None) -> Marking:
    """``heap.mark.mark`` in C: the same ``live`` and ``slot_target`` (and
    ``levels`` 0: depth-first has none). ``work`` is a ``heap.mark.Workspace``;
    its ``stamp`` array serves as the mark stack. ``totals`` (optional) gives
    ``Marking.live_bytes``. ``threads``: markers to run (default: ``MARK_THREADS``
    from ``PARALLEL_MARK_ROWS`` objects up, else one); a parallel mark needs
    memory the core reaches directly, else one marker runs."""
    n = int(np.asarray(starts).size)
    nrefs = np.ascontiguousarray(nrefs, dtype=np.int64)
    work.reserve(n, int(slot_base[-1] + nrefs[-1]) if n else 0)
    live = work.live[:n]
    live[:] = False
    objs = Objects(index, starts, nrefs, slot_base, slot_offset_of(model), totals)
    objs.start_bits(work)
    mk = ffi.new("struct rgc_mark *")
    mk.live = _p("uint8_t[]", work.live.view(np.uint8))
    mk.slot_target = _p("int64_t[]", work.slot_target)
    mk.stack = _p("int64_t[]", work.stamp)
    roots = np.ascontiguousarray(roots, dtype=np.int64)
    if lib.rgc_core_mark_roots(objs.struct, mk, _p("int64_t[]", roots), roots.size) != lib.RGC_DONE:
        raise _root_error(index, int(mk.bad))
    mem = Memory(kernel, *objs.slot_span(), write=False)
    mk.threads = (MARK_THREADS if n >= PARALLEL_MARK_ROWS else 1) if threads is None else threads
    while True:
        ret = lib.rgc_core_mark(objs.struct, mem.struct, mk)
        if ret == lib.RGC_DONE:
            break
        if ret == lib.RGC_NEED_PAGE:
            mem.bring_in(int(mk.page))
            continue
        raise _bad_address("reference slot of a live object", int(mk.bad))
    marking = Marking(live=live, slot_base=objs.slot_base, slot_target=work.slot_target, levels=0,
                      slots_read=int(mk.slots_read))
    marking.live_objects = int(mk.marked)
    marking.live_bytes = None
    if totals is not None:
        marking.live_bytes = int(lib.rgc_core_live_bytes(_p("int64_t[]", objs.totals), mk.live, n))
    marking.faults = mem.faults
    return marking


def _root_error(index, addr: int) -> HeapCorrupted:
    granule = (addr - index.base) >> index.shift
    if not 0 <= granule < index.map.size:
        return HeapCorrupted("root", f"0x{addr & 0xFFFFFFFFFFFFFFFF:x} is not the start of any object "
                             "(outside the heap)")
    return _bad_address("root", addr)


def fixup(kernel, model, rows, locations, nrefs, slot_base, slot_target, new_by_row) -> int:
    """Write the new value of every slot of the objects ``rows`` (old rows, in
    the plan's order) lying at ``locations``: the new address (``new_by_row``)
    of the row the slot referenced, or 0. What ``store_words(slot_addresses,
    slot_values(...))`` does, in place. Returns the slots written."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n = rows.size
    if n == 0:
        return 0
    locations = np.ascontiguousarray(locations, dtype=np.int64)
    nrefs = np.ascontiguousarray(nrefs, dtype=np.int64)
    slot_base = np.ascontiguousarray(slot_base, dtype=np.int64)
    new_by_row = np.ascontiguousarray(new_by_row, dtype=np.int64)
    off = slot_offset_of(model)
    lo = int(locations.min())
    hi = int(locations.max()) + off + 8 * int(nrefs.max())
    mem = Memory(kernel, lo, hi, write=True)
    args = (_p("int64_t[]", rows), _p("int64_t[]", locations))
    tail = (_p("int64_t[]", nrefs), _p("int64_t[]", slot_base), _p("int64_t[]", slot_target),
            _p("int64_t[]", new_by_row), off)
    i = 0
    while True:
        i = lib.rgc_core_fixup(mem.struct, *args, i, n, *tail)
        if i >= n:
            break
        # this object's slots sit on a page the core may not write: the kernel's store faults it in
        r, k = int(rows[i]), int(nrefs[rows[i]])
        targets = slot_target[slot_base[r]:slot_base[r] + k]
        values = np.where(targets >= 0, new_by_row[np.maximum(targets, 0)], 0)
        addrs = int(locations[i]) + off + 8 * np.arange(k, dtype=np.int64)
        refs = targets != IMMEDIATE  # an immediate stays as it is
        kernel.store_words(addrs[refs].astype(np.uint64), values[refs].astype(np.uint64))
        for page in np.unique(addrs >> mem.shift).tolist():
            j = page - mem.page_lo
            mem.table[j] = kernel.frame_pointers(page << mem.shift, 1, True)[0]
        i += 1
    return int(nrefs[rows].sum())


def slide(kernel, model, rows, old_starts, new_starts, totals, nrefs, slot_base, slot_target, new_by_row,
          src_offset: int = 0, threads: int | None = None) -> tuple[int, int]:
    """Slide the objects ``rows`` (old rows) from ``old_starts[row] +
    src_offset`` down to ``new_starts`` (an object never moves up, nor onto
    one not yet moved: address order) and fix their slots as ``fixup`` does,
    in one pass: what ``kernel.copy_ranges`` then ``fixup`` do, each object's
    slots written while its line is in the cache. ``src_offset``: the objects
    lie elsewhere than their side-table address (the remap compactor's
    from-space). ``threads`` > 1 (default ``MARK_THREADS``; direct memory and
    ``PARALLEL_MARK_ROWS`` objects up): the fixup runs on a second thread,
    following the moves. Returns (bytes moved, slots written)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n = rows.size
    if n == 0:
        return 0, 0
    arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (old_starts, new_starts, totals, nrefs, slot_base,
                                                               new_by_row)]
    old_starts, new_starts, totals, nrefs, slot_base, new_by_row = arrays
    off = slot_offset_of(model)
    # the span the objects come from and go to (old_starts is the side tables' start column: ascending)
    lo = min(int(new_starts.min()), int(old_starts[0]) + src_offset)
    hi = max(int(new_starts.max()), int(old_starts[-1]) + src_offset) + int(totals.max())
    mem = Memory(kernel, lo, hi, write=True)
    moved = ffi.new("int64_t *")
    ptrs = [_p("int64_t[]", rows), _p("int64_t[]", old_starts), src_offset, _p("int64_t[]", new_starts)]
    tail = [_p("int64_t[]", a) for a in (totals, nrefs, slot_base)] + [
        _p("int64_t[]", slot_target), _p("int64_t[]", new_by_row), off, moved,
        (MARK_THREADS if n >= PARALLEL_MARK_ROWS else 1) if threads is None else threads]
    i, copied = 0, 0
    while True:
        i = lib.rgc_core_slide(mem.struct, *ptrs, i, n, *tail)
        if i >= n:
            break
        # an object the core cannot reach in place here (a page to fault in, or one spanning
        # the simulator's frames): moved through the kernel, its slots fixed by fixup
        r = int(rows[i])
        src, dst, length = int(old_starts[r]) + src_offset, int(new_starts[i]), int(totals[r])
        if src != dst:
            kernel.memmove(dst, src, length)
            copied += length
        fixup(kernel, model, rows[i:i + 1], new_starts[i:i + 1], nrefs, slot_base, slot_target, new_by_row)
        for page in range((min(src, dst) >> mem.shift), ((max(src, dst) + length - 1) >> mem.shift) + 1):
            j = page - mem.page_lo
            if mem.table is not None and 0 <= j < mem.table.size:
                mem.table[j] = kernel.frame_pointers(page << mem.shift, 1, True)[0]
        i += 1
    return int(moved[0]) + copied, int(nrefs[rows].sum())


def forward(index, starts, new_by_row, addrs, what: str = "root") -> np.ndarray:
    """The new address of each old address in ``addrs`` (0 stays 0);
    HeapCorrupted names the first that is no object start."""
    addrs = np.ascontiguousarray(addrs, dtype=np.int64)
    out = np.empty(addrs.shape, dtype=np.int64)
    if not addrs.size:
        return out
    objs = Objects(index, starts, np.zeros(0), np.zeros(0), 0)
    objs.struct.n = objs.starts.size
    new_by_row = np.ascontiguousarray(new_by_row, dtype=np.int64)
    flat = addrs.reshape(-1)
    i = lib.rgc_core_forward(objs.struct, _p("int64_t[]", new_by_row), _p("int64_t[]", flat), flat.size,
                             _p("int64_t[]", out.reshape(-1)))
    if i < flat.size:
        raise _root_error(index, int(flat[i])) if what == "root" else _bad_address(what, int(flat[i]))
    return out


def new_addresses(n: int, rows, new_starts, out: np.ndarray | None = None) -> np.ndarray:
    """Every old row's new address (0 for the dead): ``out[rows] = new_starts``
    over ``out`` (reused when given, so no table is allocated per cycle)."""
    if out is None or out.size < n:
        out = np.zeros(n, dtype=np.int64)
    else:
        out = out[:n]
        out[:] = 0
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    new_starts = np.ascontiguousarray(new_starts, dtype=np.int64)
    lib.rgc_core_scatter(_p("int64_t[]", rows), _p("int64_t[]", new_starts), rows.size, _p("int64_t[]", out))
    return out


def same_places(starts, rows, new_starts) -> bool:
    """Whether ``starts[rows] == new_starts``: every object planned where it
    lies (in C one pass without temporaries, else numpy)."""
    if rows.size != new_starts.size:
        return False
    if not COMPILED:
        return bool(np.array_equal(starts[rows], new_starts))
    return bool(lib.rgc_core_same_places(_p("int64_t[]", np.ascontiguousarray(starts, dtype=np.int64)),
                                         _p("int64_t[]", np.ascontiguousarray(rows, dtype=np.int64)),
                                         _p("int64_t[]", np.ascontiguousarray(new_starts, dtype=np.int64)),
                                         rows.size))


def plan_stays(starts, totals, base: int, page_size: int, dense_bytes: int) -> tuple[int, int, int] | None:
    """Whether the remap plan (page units, every object live) leaves every
    object where it lies (core.h, rgc_core_plan_stays): (pages the whole
    pieces fill, first evacuee, pages the evacuees fill), or None (some
    object would move, or no core: plan it)."""
    if not COMPILED:
        return None
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    totals = np.ascontiguousarray(totals, dtype=np.int64)
    ev_first, ev_pages = ffi.new("int64_t *"), ffi.new("int64_t *")
    whole = lib.rgc_core_plan_stays(_p("int64_t[]", starts), _p("int64_t[]", totals), starts.size, base, page_size,
                                    dense_bytes, ev_first, ev_pages)
    return None if whole < 0 else (int(whole), int(ev_first[0]), int(ev_pages[0]))


def live_rows(live, starts, totals, work) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the live rows, their starts, their totals): ``np.flatnonzero(live)``
    and two gathers in one pass, into ``work``'s retained buffers (a
    heap.mark.Workspace; fresh arrays without one)."""
    n = live.size
    out = [np.empty(n, dtype=np.int64) if work is None else work.buffer(name, n, np.int64)
           for name in ("rows", "l_start", "l_total")]
    if not COMPILED:
        rows = np.flatnonzero(live)
        return rows, starts[rows], totals[rows]
    m = lib.rgc_core_live_rows(_p("uint8_t[]", np.ascontiguousarray(live).view(np.uint8)), n,
                               _p("int64_t[]", np.ascontiguousarray(starts, dtype=np.int64)),
                               _p("int64_t[]", np.ascontiguousarray(totals, dtype=np.int64)),
                               *(_p("int64_t[]", a) for a in out))
    return tuple(a[:m] for a in out)


def verify_objects(kernel, model, index, starts, nbytes, nrefs, totals, page_size: int) -> None:
    """verify's per-object checks in C, in verify's order and with its
    messages: every header matches the side tables, then every reference slot
    holds None or an object start."""
    n = int(np.asarray(starts).size)
    if n == 0:
        return
    nrefs = np.ascontiguousarray(nrefs, dtype=np.int64)
    slot_base = np.cumsum(nrefs) - nrefs
    objs = Objects(index, starts, nrefs, slot_base, slot_offset_of(model), totals)
    nbytes = np.ascontiguousarray(nbytes, dtype=np.int64)
    lo, hi = int(objs.starts[0]), int(objs.starts[-1]) + max(model.header_bytes, objs.struct.slot_offset
                                                               + 8 * int(objs.nrefs[-1]))
    mem = Memory(kernel, lo, hi, write=False)
    out = ffi.new("struct rgc_check *")
    at = 0
    while True:
        ret = lib.rgc_core_check_headers(objs.struct, mem.struct, _p("int64_t[]", nbytes), page_size, _LARGE_BIT,
                                         _TAG, at, out)
        if ret == lib.RGC_NEED_PAGE:
            mem.bring_in(int(out.page))
            at = int(out.at)
            continue
        if ret == lib.RGC_BAD_ADDRESS:
            i = int(out.at)
            s = int(objs.starts[i])
            hw = model.header_bytes // 8
            words = kernel.load_words((s + 8 * np.arange(hw)).astype(np.uint64))
            expect = model.header_words(nbytes[i:i + 1], nrefs[i:i + 1], objs.totals[i:i + 1] >= page_size)[0]
            raise HeapCorrupted("headers", f"object {i} at 0x{s:x} has header {[hex(int(w)) for w in words]}, "
                                f"expected {[hex(int(w)) for w in expect]}")
        break
    at = 0
    while True:
        ret = lib.rgc_core_check_slots(objs.struct, mem.struct, at, out)
        if ret == lib.RGC_NEED_PAGE:
            mem.bring_in(int(out.page))
            at = int(out.at)
            continue
        if ret == lib.RGC_BAD_ADDRESS:
            raise _bad_address("reference targets", int(out.bad))
        break
