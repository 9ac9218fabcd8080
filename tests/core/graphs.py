"""Object graphs laid out in a kernel's memory, and the plain Python model
the C core is checked against.

A graph is the objects' shapes (payload bytes, reference slots), where each
slot points (a row or None) and the roots (rows or None, duplicates allowed).
``lay_out`` writes it into a fresh mapping of a kernel in the
DefaultObjectModel layout, packed as the heap's allocator packs (small
objects never cross a page, large ones own their pages), and builds the
side tables the collector keeps (start, nrefs, slot numbering, the address
index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heap.alloc import pack
from heap.mark import AddressIndex
from heap.objects import DEFAULT_MODEL


@dataclass(frozen=True)
class Imm:
    """A slot holding the immediate ``n`` (stored as ``n << 1 | 1``: not a reference)."""

    n: int

    @property
    def word(self) -> int:
        return (self.n << 1) | 1


@dataclass
class Graph:
    nbytes: list[int]
    targets: list[list]  # per object, per slot: the row it points at, None, or an Imm
    roots: list[int | None]

    @property
    def n(self) -> int:
        return len(self.nbytes)


@dataclass
class Laid:
    kernel: object
    base: int
    size: int
    starts: np.ndarray
    nbytes: np.ndarray
    nrefs: np.ndarray
    totals: np.ndarray
    slot_base: np.ndarray
    index: AddressIndex
    roots: np.ndarray  # addresses, 0 for None

    def close(self) -> None:
        self.kernel.munmap(self.base, self.size)

    def slot_addresses(self, rows=None, locations=None) -> np.ndarray:
        rows = np.arange(self.starts.size) if rows is None else rows
        where = self.starts[rows] if locations is None else locations
        return DEFAULT_MODEL.slot_addresses(where, self.nrefs[rows])


def lay_out(kernel, graph: Graph, *, write_none_slots: bool = True, spare_pages: int = 1) -> Laid:
    """``graph`` in a fresh mapping of ``kernel``. Without ``write_none_slots``
    the None slots are left as the mapping gives them (zero, and on pages
    never written: not present)."""
    ps = kernel.page_size
    nbytes = np.asarray(graph.nbytes, dtype=np.int64)
    nrefs = np.asarray([len(t) for t in graph.targets], dtype=np.int64)
    totals = DEFAULT_MODEL.total_bytes(nbytes, nrefs)
    offsets, pages = pack(totals, ps, 0)
    size = (pages + spare_pages) * ps
    base = kernel.mmap(size)
    starts = base + offsets
    if graph.n:
        header = DEFAULT_MODEL.header_words(nbytes, nrefs, totals >= ps)
        where = (starts[:, None] + 8 * np.arange(2)[None, :]).ravel()
        kernel.store_words(where.astype(np.uint64), header.ravel().astype(np.uint64))
        flat = [t for ts in graph.targets for t in ts]
        if flat:
            slots = DEFAULT_MODEL.slot_addresses(starts, nrefs)
            values = np.array([_word(t, starts) for t in flat], dtype=np.int64)
            keep = np.ones(slots.size, dtype=bool) if write_none_slots else values != 0
            kernel.store_words(slots[keep].astype(np.uint64), values[keep].astype(np.uint64))
    index = AddressIndex(base, size)
    index.add_many(starts, 0)
    roots = np.array([0 if r is None else int(starts[r]) for r in graph.roots], dtype=np.int64)
    return Laid(kernel, base, size, starts, nbytes, nrefs, totals, np.cumsum(nrefs) - nrefs, index, roots)


def has_immediates(graph: Graph) -> bool:
    return any(isinstance(t, Imm) for ts in graph.targets for t in ts)


def _word(target, starts) -> int:
    if target is None:
        return 0
    if isinstance(target, Imm):
        return target.word
    return int(starts[target])


def chain(n: int) -> Graph:
    """Object i points at i + 1 (the last at None); the root is object 0."""
    return Graph(nbytes=[16] * n, targets=[[i + 1] for i in range(n - 1)] + ([[None]] if n else []),
                 roots=[0] if n else [])


# --- the reference: what marking and forwarding mean, in plain Python ---------------------
IMMEDIATE = -2  # what marking records for an immediate's slot


def _is_ref(t) -> bool:
    return t is not None and not isinstance(t, Imm)


def reference_mark(graph: Graph) -> tuple[list[bool], dict[int, list[int]]]:
    """(live per row, {live row: the row each slot points at, -1 for None, IMMEDIATE})."""
    live = [False] * graph.n
    todo = list(dict.fromkeys(r for r in graph.roots if r is not None))
    for r in todo:
        live[r] = True
    while todo:
        r = todo.pop()
        for t in graph.targets[r]:
            if _is_ref(t) and not live[t]:
                live[t] = True
                todo.append(t)

    def recorded(t):
        return -1 if t is None else IMMEDIATE if isinstance(t, Imm) else t

    return live, {r: [recorded(t) for t in graph.targets[r]] for r in range(graph.n) if live[r]}


def reference_forward(graph: Graph, live: list[bool], new_address: dict[int, int]) -> dict[int, list[int]]:
    """{live row: the value each of its slots must hold after the move}: an
    immediate stays what it was."""

    def moved(t):
        return 0 if t is None else t.word if isinstance(t, Imm) else new_address[t]

    return {r: [moved(t) for t in graph.targets[r]] for r in range(graph.n) if live[r]}
