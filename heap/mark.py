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
from dataclasses import dataclass

import numpy as np

from .errors import HeapCorrupted
from .objects import expand


@dataclass
class Marking:
    live: np.ndarray  # bool per row
    slot_base: np.ndarray  # first slot position of each row (prefix sum of nrefs)
    slot_target: np.ndarray  # per slot position: row it references, -1 for None/unvisited
    levels: int
    slots_read: int


class AddressIndex:
    """Object start address -> row.

    With many objects, by direct lookup: one int32 per 16-byte granule of the
    arena, filled at the start of each collection with the rows of the
    current objects and never cleared (a stale entry is caught because
    ``starts[row]`` must equal the address). ``searchsorted`` costs ~400 ns
    per random query on a million objects (a cache miss per bisection step);
    this costs one gather. The array lives in its own anonymous mapping (no
    huge pages: only the granules of touched pages become resident). With few
    objects, ``searchsorted`` is cheaper than touching the map.
    """

    DIRECT_FROM = 1 << 15  # objects

    def __init__(self, base: int, size: int, granule: int = 16):
        self.base = base
        self.size = size
        self.shift = granule.bit_length() - 1
        self._mapping = None
        self.map = None
        self.direct = False
        self.starts = np.zeros(0, dtype=np.int64)

    def build(self, starts: np.ndarray) -> None:
        self.starts = starts
        self.direct = starts.size >= self.DIRECT_FROM
        if self.direct:
            if self.map is None:
                self._mapping = mmap.mmap(-1, (self.size >> self.shift) * 4)
                self.map = np.frombuffer(self._mapping, dtype=np.int32)
            self.map[(starts - self.base) >> self.shift] = np.arange(starts.size, dtype=np.int32)

    def rows(self, addrs: np.ndarray, what: str) -> np.ndarray:
        if not self.direct:
            return rows_of(self.starts, addrs, what)
        starts, n = self.starts, self.starts.size
        granule = (addrs - self.base) >> self.shift
        inside = (granule >= 0) & (granule < self.map.size)
        if not inside.all():
            k = int(np.flatnonzero(~inside)[0])
            raise HeapCorrupted(what, f"0x{int(addrs[k]):x} is not the start of any object (outside the heap)")
        rows = self.map[granule].astype(np.int64)
        np.clip(rows, 0, n - 1, out=rows)
        bad = starts[rows] != addrs
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise HeapCorrupted(what, f"0x{int(addrs[k]):x} is not the start of any object")
        return rows


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


def mark(kernel, model, index: AddressIndex, nrefs: np.ndarray, roots: np.ndarray) -> Marking:
    """Mark from ``roots``; ``index`` was built over the current start column."""
    starts = index.starts
    n = starts.size
    live = np.zeros(n, dtype=bool)
    slot_base = np.cumsum(nrefs) - nrefs
    slot_target = np.full(int(nrefs.sum()) if n else 0, -1, dtype=np.int64)
    stamp = np.empty(n, dtype=np.int64)

    def first_visits(rows: np.ndarray) -> np.ndarray:
        rows = rows[~live[rows]]
        if rows.size:
            # keep one copy of each row without sorting: the last writer of
            # stamp[row] is the survivor
            order = np.arange(rows.size, dtype=np.int64)
            stamp[rows] = order
            rows = rows[stamp[rows] == order]
            live[rows] = True
        return rows

    roots = np.asarray(roots, dtype=np.int64)
    frontier = first_visits(index.rows(roots[roots != 0], "root"))
    levels = slots_read = 0
    while frontier.size:
        levels += 1
        counts = nrefs[frontier]
        has = counts > 0
        frontier, counts = frontier[has], counts[has]
        if not frontier.size:
            break
        addrs = model.slot_addresses(starts[frontier], counts)
        words = kernel.load_words(addrs.astype(np.uint64)).view(np.int64)
        slots_read += words.size
        positions = expand(slot_base[frontier], counts, 1)
        held = words != 0
        targets = index.rows(words[held], "reference slot of a live object")
        slot_target[positions[held]] = targets
        frontier = first_visits(targets)
    return Marking(live=live, slot_base=slot_base, slot_target=slot_target, levels=levels,
                   slots_read=slots_read)
