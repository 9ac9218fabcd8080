"""Allocation: where objects go in the arena, and the side tables that mirror them.

The arena is one anonymous mapping of ``size`` bytes reserved up front
(untouched pages cost no memory). Objects are placed by bumping upwards from
``top``: small objects into the current small page, large objects into fresh
page runs (see objects.py for the placement rules). Allocating a large object
closes the current small page, so objects are always placed at increasing
addresses: the side tables stay sorted by address without ever sorting, and
an address maps to its object with one ``searchsorted``. Space freed by dead
objects comes back through compaction, which packs the live objects at the
bottom and leaves everything above the new ``top`` unmapped and zero.

Invariant: every byte between the small-page cursor and the end of its page,
and every byte at or above ``top``, reads as zero; so a fresh object needs
only its header written (slots read None, payload reads zeros).
"""

from __future__ import annotations

import numpy as np

from .native import COMPILED
from .native import mark_pages as native_mark_pages
from .native import pack as native_pack
from .pages import large_pages, round_up
from .twins import pack_numpy

__all__ = ["Allocator", "ObjectTable", "large_pages", "pack", "pack_numpy", "round_up",
           "PAGE_FREE", "PAGE_SMALL", "PAGE_LARGE"]

# page kinds, one int8 per arena page
PAGE_FREE = 0
PAGE_SMALL = 1  # holds small objects
PAGE_LARGE = 2  # owned by one large object


def pack(totals: np.ndarray, page_size: int, hpage_pages: int = 0) -> tuple[np.ndarray, int]:
    """Place objects in order from a page-aligned origin, each as low as the
    placement rules allow (greedy first fit, order kept).

    Returns each object's offset from the origin and the number of pages
    used. One pass in C (``heap.native``), else ``pack_numpy``.
    """
    return native_pack(totals, page_size, hpage_pages)


class ObjectTable:
    """Side tables: one row per object, rows sorted by address.

    ``slot`` is the position of the object's first reference slot in the
    heap-wide slot numbering (a running sum of ``nrefs``), which marking uses
    to record where each slot points.
    """

    COLUMNS = ("start", "nbytes", "nrefs", "total", "slot")

    def __init__(self, capacity: int = 1024):
        # [rows, capacity, then each column's address]: where the compiled allocation step
        # (heap.fastpath.CompiledBump) finds the table; ``n`` is its first element
        self.meta = np.zeros(2 + len(self.COLUMNS), dtype=np.int64)
        self._meta_v = memoryview(self.meta)
        self._cols = {c: np.zeros(capacity, dtype=np.int64) for c in self.COLUMNS}
        self._view_columns()

    @property
    def n(self) -> int:
        return self._meta_v[0]

    @n.setter
    def n(self, value: int) -> None:
        self._meta_v[0] = value

    def _view_columns(self) -> None:
        # the columns as memoryviews, for one row at a time (append, a Ref's lookups): a scalar
        # read or store through a memoryview costs half of numpy's, and gives a Python int
        self._v = tuple(memoryview(self._cols[c]) for c in self.COLUMNS)
        self.meta[2:] = [self._cols[c].ctypes.data for c in self.COLUMNS]
        self.meta[1] = self._cols["start"].size  # after the addresses: a smaller capacity never meets new columns

    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        cap = self._cols["start"].size
        if need > cap:
            cap = max(need, 2 * cap)
            for c, arr in self._cols.items():
                grown = np.zeros(cap, dtype=np.int64)
                grown[: self.n] = arr[: self.n]
                self._cols[c] = grown
            self._view_columns()

    @property
    def capacity(self) -> int:
        """Rows the columns hold before they grow (on the Python allocation path)."""
        return self._cols["start"].size

    @property
    def nslots(self) -> int:
        n = self.n
        return self._v[4][n - 1] + self._v[2][n - 1] if n else 0  # slot + nrefs of the last row

    def start_of(self, row: int) -> int:
        return self._v[0][row]

    def shape_of(self, row: int) -> tuple[int, int]:
        """(nbytes, nrefs) of one row."""
        v = self._v
        return v[1][row], v[2][row]

    def append(self, start: int, nbytes: int, nrefs: int, total: int) -> int:
        i = self.n
        if i == len(self._v[0]):
            self._reserve(1)
        v_start, v_nbytes, v_nrefs, v_total, v_slot = self._v
        v_slot[i] = v_slot[i - 1] + v_nrefs[i - 1] if i else 0
        v_start[i] = start
        v_nbytes[i] = nbytes
        v_nrefs[i] = nrefs
        v_total[i] = total
        self.n = i + 1
        return i

    def extend(self, start, nbytes, nrefs, total) -> None:
        k = len(start)
        first_slot = self.nslots
        self._reserve(k)
        nrefs = np.asarray(nrefs, dtype=np.int64)
        slot = first_slot + np.cumsum(nrefs) - nrefs
        for c, v in zip(self.COLUMNS, (start, nbytes, nrefs, total, slot)):
            self._cols[c][self.n: self.n + k] = v
        self.n += k

    def replace(self, start, nbytes, nrefs, total) -> None:
        """After a compaction: the live objects, in their new address order.
        Written over the old rows (memory already faulted in): the arguments
        must not be views of the columns, and views taken before are stale after."""
        self.n = 0
        self.extend(start, nbytes, nrefs, total)

    def column(self, name: str) -> np.ndarray:
        return self._cols[name][: self.n]

    @property
    def start(self) -> np.ndarray:
        return self._cols["start"][: self.n]

    @property
    def nbytes(self) -> np.ndarray:
        return self._cols["nbytes"][: self.n]

    @property
    def nrefs(self) -> np.ndarray:
        return self._cols["nrefs"][: self.n]

    @property
    def total(self) -> np.ndarray:
        return self._cols["total"][: self.n]

    @property
    def slot(self) -> np.ndarray:
        return self._cols["slot"][: self.n]


class Allocator:
    """Bump placement in the arena ``[base, base + size)``."""

    def __init__(self, base: int, size: int, page_size: int, hpage_pages: int = 0):
        self.base = base
        self.size = size
        self.end = base + size
        self.page_size = page_size
        self.hpage_pages = hpage_pages
        # [cursor, limit, top, end, base, page size]: the next free byte of the current small page
        # (0: none), its end, the page-aligned top (nothing placed at or above it), and the arena;
        # the compiled allocation step (heap.fastpath.CompiledBump) places small objects there too
        self.place_state = np.array([0, 0, base, self.end, base, page_size], dtype=np.int64)
        self._place_v = memoryview(self.place_state)
        self.page_kind = np.zeros(size // page_size, dtype=np.int8)

    @property
    def top(self) -> int:
        return self._place_v[2]

    @top.setter
    def top(self, value: int) -> None:
        self._place_v[2] = value

    @property
    def cursor(self) -> int:
        return self._place_v[0]

    @cursor.setter
    def cursor(self, value: int) -> None:
        self._place_v[0] = value

    @property
    def limit(self) -> int:
        return self._place_v[1]

    @limit.setter
    def limit(self, value: int) -> None:
        self._place_v[1] = value

    def place(self, total: int) -> int | None:
        """Address for one object of ``total`` bytes, or None if it does not fit."""
        ps = self.page_size
        if total < ps:
            if self.cursor and self.cursor + total <= self.limit:
                addr = self.cursor
                self.cursor += total
                return addr
            if self.top + ps > self.end:
                return None
            addr = self.top
            self.page_kind[(addr - self.base) // ps] = PAGE_SMALL
            self.top += ps
            self.cursor, self.limit = addr + total, addr + ps
            return addr
        start, npages = self._large_run(total)
        if start + npages * ps > self.end:
            return None
        first = (start - self.base) // ps
        self.page_kind[first: first + npages] = PAGE_LARGE
        self.top = start + npages * ps
        self.cursor = self.limit = 0  # keep placement monotonic
        return start

    def _large_run(self, total: int) -> tuple[int, int]:
        npages = int(large_pages(np.int64(total), self.page_size, self.hpage_pages))
        start = self.top
        hp = self.hpage_pages
        if hp:
            page = (start - self.base) // self.page_size
            if total >= hp * self.page_size or page % hp + npages > hp:
                start = self.base + round_up(page, hp) * self.page_size
        return start, npages

    def place_many(self, totals: np.ndarray) -> np.ndarray | None:
        """Addresses for many objects at once (from a fresh page), or None."""
        ps, hp = self.page_size, self.hpage_pages
        origin = self.top
        # pack() places from a 2 MiB-aligned origin; the top is one only after a whole number of
        # huge units. A placeholder object filling the pages since the last boundary (fewer than a
        # unit: it neither moves nor straddles) makes the packing start where the top is.
        lead = (origin - self.base) // ps % hp if hp else 0
        if lead:
            offsets, npages = pack(np.concatenate((np.array([lead * ps], dtype=np.int64), totals)), ps, hp)
            offsets, npages = offsets[1:] - lead * ps, npages - lead
        else:
            offsets, npages = pack(totals, ps, hp)
        if origin + npages * self.page_size > self.end:
            return None
        addrs = origin + offsets
        self.mark_pages(addrs, totals)
        self.top = origin + npages * self.page_size
        last_total = int(totals[-1]) if totals.size else 0
        if totals.size and last_total < self.page_size:
            self.cursor = int(addrs[-1]) + last_total
            self.limit = round_up(self.cursor - self.base, self.page_size) + self.base
            if self.cursor == self.limit:
                self.cursor = self.limit = 0
        else:
            self.cursor = self.limit = 0
        return addrs

    def mark_pages(self, addrs: np.ndarray, totals: np.ndarray, *, compiled: bool = COMPILED) -> None:
        """Record the page kind of every page the given objects occupy."""
        ps = self.page_size
        if compiled:  # one pass: numpy's temporaries cost page faults on every collection
            native_mark_pages(self.page_kind, addrs, totals, self.base, ps, self.hpage_pages, PAGE_SMALL, PAGE_LARGE)
            return
        first = (np.asarray(addrs, dtype=np.int64) - self.base) // ps
        large = totals >= ps
        self.page_kind[first[~large]] = PAGE_SMALL
        if large.any():
            starts = first[large]
            ends = starts + large_pages(totals[large], ps, self.hpage_pages)
            # adjacent runs merged (after a compaction most are): a few slices
            keep = np.ones(starts.size, dtype=bool)
            keep[1:] = starts[1:] != ends[:-1]
            lo, hi = starts[keep], np.append(ends[np.flatnonzero(keep)[1:] - 1], ends[-1])
            if lo.size <= 1024:
                for a, b in zip(lo.tolist(), hi.tolist()):
                    self.page_kind[a:b] = PAGE_LARGE
            else:  # many separate runs: a difference array
                base, size = int(lo[0]), int(hi[-1] - lo[0]) + 1
                delta = np.bincount(lo - base, minlength=size) - np.bincount(hi - base, minlength=size)
                self.page_kind[base: base + size - 1][np.cumsum(delta[:-1]) > 0] = PAGE_LARGE

    def reset(self, addrs: np.ndarray, totals: np.ndarray, top: int, cursor: int = 0) -> None:
        """After a compaction: the live objects now lie at ``addrs``, below ``top``."""
        # only pages below the old top were ever marked: no pass over the whole arena per cycle
        self.page_kind[: -(-(self.top - self.base) // self.page_size)] = PAGE_FREE
        self.mark_pages(addrs, totals)
        self.top = top
        if cursor and cursor % self.page_size:
            self.cursor, self.limit = cursor, self.base + round_up(cursor - self.base, self.page_size)
        else:
            self.cursor = self.limit = 0

    @property
    def used_pages(self) -> int:
        return (self.top - self.base) // self.page_size
