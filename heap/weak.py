"""References the collector does not follow: weak references, finalization
and the stable identity hash (docs/embedding.md, "Weak references",
"Finalization", "Identity hash").

All three rest on one thing the pause already does for root scanners: after
marking and planning it forwards every address a scanner holds through
``forward``, which maps the old address of a live object to its new one and
the old address of a dead object to 0. ``WeakCells`` is a root scanner that
*roots nothing* (``scan_roots`` is empty) but is forwarded like one, so a
cell that held an object's address holds its new address after a collection
in which the object lived, and 0 after the one in which it died. That is the
whole mechanism; the rest is bookkeeping:

* ``WeakRef``: one cell. ``get()`` gives a new ``Ref`` (a strong root) while
  the cell is nonzero.
* finalization: a cell plus the host's token; a cell that turns 0 puts its
  token on the heap's queue, once, and is freed. The token is the host's
  value, never the dead object (which is gone: its bytes may already belong
  to another object), so nothing can be resurrected.
* identity hash: a cell plus a number drawn when the hash is first asked
  for; the cell finds the object again after it moved.

Every structure here is guarded by the heap's lock: the pause calls
``update_roots`` with it held, and every public call takes it. ``WeakRef``
objects may die in any thread at any moment (their ``__del__``): the cell
goes on a list that the next call holding the lock reaps, as the handle
table does for ``Ref``.

Costs: per collection, one vectorised forward of every cell in use (what a
``RootScanner`` of that many addresses costs) plus, for identity hashes, a
rebuild of the address -> cell map of the hashed objects.
"""

from __future__ import annotations

import itertools
import weakref as _pyweakref
from typing import Any, Callable

import numpy as np

from .roots import Ref

_EMPTY = np.zeros(0, dtype=np.int64)
_HASH_MASK = (1 << 61) - 1  # hash values stay positive Python ints of a machine word
_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive draw numbers over the word


class WeakCells:
    """Numbered cells holding object addresses without keeping the objects
    alive (a ``RootScanner`` that roots nothing and is forwarded like one)."""

    def __init__(self, capacity: int = 64):
        self.addr = np.zeros(capacity, dtype=np.int64)
        self.high = 0
        self._free: list[int] = []
        self._dropped: list[int] = []  # cells whose owner died; appended anywhere, reaped under the lock
        self.on_death: Callable[[np.ndarray], None] | None = None  # cells cleared by a collection

    # -- the RootScanner protocol --------------------------------------------------------
    def scan_roots(self) -> np.ndarray:
        return _EMPTY  # weak: nothing here keeps an object alive

    def update_roots(self, forward) -> None:
        self.reap()
        held = self.addr[: self.high]
        nonzero = np.flatnonzero(held)
        if not nonzero.size:
            return
        new = forward(held[nonzero])
        held[nonzero] = new
        died = nonzero[new == 0]
        if died.size and self.on_death is not None:
            self.on_death(died)

    # -- cells ----------------------------------------------------------------------------
    def put(self, addr: int) -> int:
        self.reap()
        if self._free:
            cell = self._free.pop()
        else:
            cell = self.high
            if cell == self.addr.size:
                self.addr = np.concatenate([self.addr, np.zeros(cell, dtype=np.int64)])
            self.high = cell + 1
        self.addr[cell] = addr
        return cell

    def get(self, cell: int) -> int:
        return self.addr.item(cell)

    def free(self, cell: int) -> None:
        """Free a cell now (the heap lock is held)."""
        self.addr[cell] = 0
        self._free.append(cell)

    def drop(self, cell: int) -> None:
        """Free a cell at the next reap (any thread, any moment: a list append)."""
        self._dropped.append(cell)

    def reap(self) -> None:
        while self._dropped:
            self.free(self._dropped.pop())

    @property
    def in_use(self) -> int:
        return self.high - len(self._free) - len(self._dropped)


class WeakRef:
    """A reference that does not keep its object alive (``Heap.weakref``).

    ``get()`` (or calling it) returns a new ``Ref`` to the object while the
    object lives, None once a collection found it unreachable. Between the
    moment the object becomes unreachable and the next collection, ``get()``
    still returns it (and the returned Ref makes it reachable again): a weak
    reference is cleared by the collection that frees its object, never
    earlier and never later.
    """

    __slots__ = ("_state", "_cell", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("a WeakRef is made by its heap (Heap.weakref), not by hand")

    @classmethod
    def _make(cls, state: "EmbeddingState", cell: int) -> "WeakRef":
        w = object.__new__(cls)
        w._state = state
        w._cell = cell
        return w

    def __del__(self):
        try:
            self._state.weak.drop(self._cell)
        except Exception:  # interpreter shutdown
            pass

    def get(self) -> Ref | None:
        return self._state.weak_get(self._cell)

    __call__ = get

    @property
    def alive(self) -> bool:
        """Whether the object is still there (no Ref is made)."""
        return self._state.weak_alive(self._cell)

    def __repr__(self) -> str:
        try:
            return f"WeakRef({'alive' if self.alive else 'dead'})"
        except Exception as exc:
            return f"WeakRef(<{exc.__class__.__name__}>)"


class EmbeddingState:
    """One heap's weak cells, finalization queue and identity hashes.

    Made by the heap (heap.embedding), which hands it what it needs of its
    internals: ``enter`` (the entry check every heap operation makes, with the
    lock held), ``address`` (a Ref's current address) and ``new_ref`` (a new
    Ref for an address). ``heap`` is reached through a weak reference: the
    heap holds this state (as a root scanner), not the other way round."""

    def __init__(self, heap, *, enter: Callable[[], None], address: Callable[[Ref], int],
                 new_ref: Callable[[int], Ref]):
        self._heap = _pyweakref.ref(heap)
        self.lock = heap.lock
        self._enter, self._address, self._new_ref = enter, address, new_ref
        self.weak = WeakCells()
        self.final = WeakCells()
        self.final.on_death = self._finalized
        self.final_token: dict[int, Any] = {}  # finalizer cell -> the host's token
        self.queue: list[Any] = []  # tokens of objects that died, in the order collections found them
        self.hashes = WeakCells()
        self.hashes.on_death = self._hash_died
        self.hash_cell: dict[int, int] = {}  # current address -> its identity-hash cell
        self.hash_value: dict[int, int] = {}  # identity-hash cell -> the hash
        self._draws = itertools.count(1)
        self._hash_epoch = -1

    @property
    def heap(self):
        heap = self._heap()
        if heap is None:
            raise ReferenceError("the heap is gone")
        return heap

    # -- weak references ------------------------------------------------------------------------
    def weakref(self, ref: Ref) -> WeakRef:
        with self.lock:
            self._enter()
            return WeakRef._make(self, self.weak.put(self._address(ref)))

    def weak_get(self, cell: int) -> Ref | None:
        with self.lock:
            self._enter()
            addr = self.weak.get(cell)
            return self._new_ref(addr) if addr else None

    def weak_alive(self, cell: int) -> bool:
        with self.lock:
            self._enter()
            return self.weak.get(cell) != 0

    # -- finalization -----------------------------------------------------------------------------
    def finalize(self, ref: Ref, token: Any) -> None:
        if isinstance(token, Ref) and token.heap is self.heap:
            # a Ref held by the registry is a root: the object (or what the token reaches) would never die
            raise ValueError("a finalization token must not be a Ref of this heap (it would keep objects "
                             "alive); pass a plain value that names the resource")
        with self.lock:
            self._enter()
            cell = self.final.put(self._address(ref))
            self.final_token[cell] = token

    def _finalized(self, cells: np.ndarray) -> None:
        """A collection found these registrations' objects dead (the heap lock is held)."""
        for cell in cells.tolist():
            self.queue.append(self.final_token.pop(cell))
            self.final.free(cell)

    def finalized(self) -> list[Any]:
        """The tokens of the registered objects that died since the last call,
        each once, in the order the collections found them; the queue empties."""
        with self.lock:
            out, self.queue = self.queue, []
            return out

    @property
    def pending_finalizers(self) -> int:
        """Registrations whose object has not died yet."""
        with self.lock:
            return len(self.final_token)

    # -- identity hash ------------------------------------------------------------------------------
    def identity_hash(self, ref: Ref) -> int:
        with self.lock:
            self._enter()
            addr = self._address(ref)
            cell = self.hash_cell.get(addr)
            if cell is None:
                cell = self.hashes.put(addr)
                self.hash_cell[addr] = cell
                self.hash_value[cell] = (next(self._draws) * _GOLDEN) & _HASH_MASK
            return self.hash_value[cell]

    def _hash_died(self, cells: np.ndarray) -> None:
        for cell in cells.tolist():
            del self.hash_value[cell]
            self.hashes.free(cell)

    def _rehash(self, forward) -> None:
        """After the hash cells were forwarded: the address -> cell map follows them."""
        cells = np.fromiter(self.hash_value.keys(), dtype=np.int64, count=len(self.hash_value))
        self.hash_cell = dict(zip(self.hashes.addr[cells].tolist(), cells.tolist()))

    # -- the RootScanner the heap calls ----------------------------------------------------------
    def scan_roots(self) -> np.ndarray:
        return _EMPTY

    def update_roots(self, forward) -> None:
        self.weak.update_roots(forward)
        self.final.update_roots(forward)
        if self.hash_value:
            self.hashes.update_roots(forward)
            self._rehash(forward)


_STATES: "_pyweakref.WeakKeyDictionary" = _pyweakref.WeakKeyDictionary()


def attach(heap, **parts) -> EmbeddingState:
    """The heap's EmbeddingState, made on first use (``parts``: EmbeddingState's
    keyword arguments); the caller holds the heap lock and registers it as a
    root scanner when it is new (``state.fresh``)."""
    st = _STATES.get(heap)
    if st is None:
        st = _STATES[heap] = EmbeddingState(heap, **parts)
        st.fresh = True
    else:
        st.fresh = False
    return st


def state_of(heap) -> EmbeddingState | None:
    """The heap's EmbeddingState, if it made one (for inspection)."""
    return _STATES.get(heap)
