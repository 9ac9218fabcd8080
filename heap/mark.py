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

from dataclasses import dataclass

import numpy as np

from .errors import HeapCorrupted


@dataclass
class Marking:
    live: np.ndarray  # bool per row
    slot_base: np.ndarray  # first slot position of each row (prefix sum of nrefs)
    slot_target: np.ndarray  # per slot position: row it references, -1 for None/unvisited
    levels: int
    slots_read: int


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


def mark(kernel, model, starts: np.ndarray, nrefs: np.ndarray, roots: np.ndarray) -> Marking:
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
    frontier = first_visits(rows_of(starts, roots[roots != 0], "root"))
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
        ends = np.cumsum(counts)
        positions = np.repeat(slot_base[frontier] - (ends - counts), counts) + np.arange(words.size)
        held = words != 0
        targets = rows_of(starts, words[held], f"reference slot of a live object")
        slot_target[positions[held]] = targets
        frontier = first_visits(targets)
    return Marking(live=live, slot_base=slot_base, slot_target=slot_target, levels=levels,
                   slots_read=slots_read)
