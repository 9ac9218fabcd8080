"""Marking: which objects are reachable from the roots.

Level-synchronous breadth-first search over the side tables, one numpy pass
per level: gather the reference slots of the whole frontier with one
``kernel.load_words``, map the addresses they hold to object rows with one
``searchsorted`` on the (sorted) start column, keep the rows not yet marked.
Cost is per level, not per object, so wide graphs mark at numpy speed; a long
singly linked chain costs one level per link.

While it marks, it records which row every slot of a live object points at
(``slot_target``), so the fixup phase rewrites slots without reading them
again.
"""

from __future__ import annotations

import mmap
import sys
from dataclasses import dataclass

import numpy as np

from .errors import HeapCorrupted
from .native import COMPILED, expand, first_visits, index_add, mark_targets

# Python's mmap module names MAP_NORESERVE only from 3.13 on; the value is Linux's
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)

# Marking.slot_target of a slot holding an immediate: a word with its low bit set is no
# reference (heap.objects); never followed, left as it is by the fixup (= heap.core.IMMEDIATE)
IMMEDIATE = -2


@dataclass
class Marking:
    live: np.ndarray  # bool per row
    slot_base: np.ndarray  # first slot position of each row (prefix sum of nrefs)
    slot_target: np.ndarray  # per slot position: row it references, -1 for None/unvisited, IMMEDIATE
    levels: int
    slots_read: int


def index_granule(model) -> int:
    """The address index's granule for an object model: its alignment, so no
    two objects ever start in one granule. ValueError for an alignment it
    cannot be (not a power of two, or less than a word: slots are words)."""
    align = getattr(model, "alignment", None)
    if type(align) is not int or align < 8 or align & (align - 1):
        raise ValueError(f"the object model's alignment must be a power of two >= 8, not {align!r}")
    return align


class AddressIndex:
    """Object start address -> row, by direct lookup.

    One int32 per granule (the object model's alignment) of the arena holds the row of the object
    starting there. It is kept up to date as objects are allocated and
    rewritten after each compaction, and never cleared: a stale entry is
    caught because ``starts[row]`` must equal the address. (``searchsorted``
    costs ~400 ns per random query on a million objects, a cache miss per
    bisection step; this is one gather.) The array lives in its own anonymous
    mapping without huge pages: only the granules of touched pages become
    resident, about 4 bytes per object. The mapping is private: ``mmap.mmap(-1,
    n)`` alone is MAP_SHARED, and a forked child's allocations then rewrote
    the parent's index. Like the arena it is reserved, not committed
    (MAP_NORESERVE): a heap sized past RAM + swap has an index that size too.
    """

    def __init__(self, base: int, size: int, granule: int = 16):
        self.base = base
        self.shift = granule.bit_length() - 1
        self._mapping = mmap.mmap(-1, (size >> self.shift) * 4,
                                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
        self.map = np.frombuffer(self._mapping, dtype=np.int32)

    def close(self) -> None:
        """Drop the index's memory (the heap closed): every lookup then misses."""
        self.map = np.zeros(0, dtype=np.int32)
        self._mapping = None

    def add(self, start: int, row: int) -> None:
        self.map[(start - self.base) >> self.shift] = row

    def add_many(self, starts: np.ndarray, first_row: int, *, compiled: bool = COMPILED) -> None:
        if compiled:  # one pass, no temporaries (each costs page faults inside the pause)
            index_add(self.map, starts, self.base, self.shift, first_row)
        elif starts.size:
            self.map[(starts - self.base) >> self.shift] = np.arange(first_row, first_row + starts.size,
                                                                     dtype=np.int32)

    def rows(self, starts: np.ndarray, addrs: np.ndarray, what: str) -> np.ndarray:
        """Rows of the objects starting exactly at ``addrs`` (``starts`` is the
        start column the index describes); HeapCorrupted names the first
        address that is no object start."""
        n = starts.size
        granule = (addrs - self.base) >> self.shift
        inside = (granule >= 0) & (granule < self.map.size)
        if not inside.all():
            k = int(np.flatnonzero(~inside)[0])
            raise HeapCorrupted(what, f"0x{int(addrs[k]):x} is not the start of any object (outside the heap)")
        rows = self.map[granule].astype(np.int64)
        if n == 0:
            bad = np.ones(addrs.size, dtype=bool)
        else:
            np.clip(rows, 0, n - 1, out=rows)
            bad = starts[rows] != addrs
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise HeapCorrupted(what, f"0x{int(addrs[k]):x} is not the start of any object")
        return rows


class Workspace:
    """Marking's scratch arrays, kept between collections and grown with the
    heap (fresh multi-megabyte arrays would cost a page fault per 4 KiB at
    every collection)."""

    def __init__(self):
        self.live = np.zeros(0, dtype=bool)
        self.stamp = np.zeros(0, dtype=np.int64)
        self.slot_target = np.zeros(0, dtype=np.int64)
        self.bits = np.zeros(0, dtype=np.uint64)
        self.rank = np.zeros(0, dtype=np.int32)
        self.buffers: dict[str, np.ndarray] = {}  # the plan's arrays (heap.plan), by name

    def start_bits(self, words: int) -> tuple[np.ndarray, np.ndarray]:
        """heap.core's start bitmap and rank table, ``words`` words each (grown, never shrunk)."""
        if words > self.bits.size:
            cap = max(words, 2 * self.bits.size, 64)
            self.bits = np.zeros(cap, dtype=np.uint64)
            self.rank = np.zeros(cap, dtype=np.int32)
        return self.bits, self.rank

    def buffer(self, name: str, size: int, dtype) -> np.ndarray:
        """A retained array of at least ``size`` elements (its first ``size``
        returned): valid until the next call for the same name. A fresh array of
        megabytes costs a page fault per 4 KiB (or a 2 MiB clear) every collection."""
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = np.zeros(max(size, 2 * (0 if buf is None else buf.size), 1024), dtype=dtype)
            self.buffers[name] = buf
        return buf[:size]

    def arange(self, n: int) -> np.ndarray:
        """0, 1, ..., n - 1, from a retained array written once as far as it was asked for."""
        buf = self.buffers.get("arange")
        if buf is None or buf.size < n:
            buf = self.buffers["arange"] = np.arange(max(n, 2 * (0 if buf is None else buf.size), 1024),
                                                     dtype=np.int64)
        return buf[:n]

    def close(self) -> None:
        """Drop the arrays (the heap closed)."""
        self.__init__()

    # The plan's per-object arrays (heap.plan, heap.native: names and types) for heaps of
    # PLAN_ROWS objects and more: allocated and written as the heap grows (reserve runs after an
    # allocation, outside any pause), so that no collection faults them in -- a fresh page costs
    # microseconds in a virtual machine, a 4 MB array milliseconds.
    PLAN_ARRAYS = (("rows", np.int64), ("l_start", np.int64), ("l_total", np.int64), ("whole", np.bool_), ("new_whole", np.int64),
                   ("order", np.int64), ("new_starts", np.int64), ("evac_from", np.int64),
                   ("evac_to", np.int64), ("evacuated", np.bool_), ("live_rows", np.int64))
    PLAN_ROWS = 8192

    def reserve(self, objects: int, slots: int) -> None:
        if objects > self.live.size:
            cap = max(objects, 2 * self.live.size, 1024)
            self.live = np.ones(cap, dtype=bool)  # written now: its pages fault here, not in a pause
            self.stamp = np.full(2 * cap, -1, dtype=np.int64)  # heap.core's mark stack: (row, address) pairs
            if cap >= self.PLAN_ROWS:
                for name, dtype in self.PLAN_ARRAYS:
                    self.buffer(name, cap, dtype).fill(0)
        if slots > self.slot_target.size:
            self.slot_target = np.full(max(slots, 2 * self.slot_target.size, 1024), -1, dtype=np.int64)


def rows_of(starts: np.ndarray, addrs: np.ndarray, what: str) -> np.ndarray:
    """Rows of the objects starting exactly at ``addrs``; HeapCorrupted names
    the first address that is no object start."""
    rows = np.searchsorted(starts, addrs)
    n = starts.size
    clipped = np.minimum(rows, n - 1) if n else rows
    bad = (rows >= n) | (starts[clipped] != addrs) if n else np.ones(addrs.size, dtype=bool)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise HeapCorrupted(what, f"0x{int(addrs[k]):x} is not the start of any object")
    return rows


def mark(kernel, model, index: AddressIndex, work: Workspace, starts: np.ndarray, nrefs: np.ndarray,
         slot_base: np.ndarray, roots: np.ndarray) -> Marking:
    """Mark from ``roots``; ``index`` describes ``starts``."""
    n = starts.size
    work.reserve(n, int(slot_base[-1] + nrefs[-1]) if n else 0)
    live = work.live[:n]
    live[:] = False
    stamp = work.stamp
    slot_target = work.slot_target

    roots = np.asarray(roots, dtype=np.int64)
    frontier = first_visits(index.rows(starts, roots[roots != 0], "root"), live, stamp)
    levels = slots_read = 0
    while frontier.size:
        levels += 1
        counts = nrefs[frontier]
        has = counts > 0
        if not has.all():
            frontier, counts = frontier[has], counts[has]
        if not frontier.size:
            break
        addrs = model.slot_addresses(starts[frontier], counts)
        words = kernel.load_words(addrs.view(np.uint64)).view(np.int64)
        slots_read += words.size
        positions = expand(slot_base[frontier], counts, 1)
        imm = (words & 1) != 0
        if imm.any():  # immediates: recorded, never followed
            slot_target[positions[imm]] = IMMEDIATE
            words, positions = words[~imm], positions[~imm]
        frontier = mark_targets(words, positions, index, starts, slot_target, live, stamp)
    return Marking(live=live, slot_base=slot_base, slot_target=slot_target, levels=levels,
                   slots_read=slots_read)
