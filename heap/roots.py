"""Roots: handles held by Python code, and root scanners of runtimes.

A ``Ref`` is a handle: an index into the heap's handle table, which holds the
object's current address (the compactor rewrites it). A live ``Ref`` is a
root; when the Ref is garbage collected its ``__del__`` queues its handle for
release (an atomic list append, safe at any point, even inside a heap call on
the same thread) and the heap reaps the queue under its lock before it next
reads the roots. ``RefArray`` is a block of handles held as one numpy array,
so that a runtime can root a million objects without a million Python objects.
"""

from __future__ import annotations

import numpy as np


class HandleTable:
    """Handle index -> object address; the roots Python code holds."""

    def __init__(self, capacity: int = 256):
        self.addr = np.zeros(capacity, dtype=np.int64)
        self.used = np.zeros(capacity, dtype=bool)
        self.high = 0
        self._free: list[int] = []
        self._dropped: list[int] = []  # appended by Ref.__del__, reaped under the heap lock
        self.dropped = self._dropped  # (Ref.__del__ appends to it directly: one call fewer per Ref)
        self.blocks: dict[int, np.ndarray] = {}  # RefArray id -> its addresses
        self._dropped_blocks: list[int] = []
        # handle -> its object's payload bytes and slots, -1 until first needed: a handle names one
        # object for its whole life and an object's shape never changes, so Ref accesses look it up
        # once (and the compiled accesses of heap.fastpath read it here)
        self.nbytes = np.full(capacity, -1, dtype=np.int64)
        self.nrefs = np.full(capacity, -1, dtype=np.int64)
        # arrays replaced by a growth: a compiled access in flight (heap.fastpath, no lock) may
        # still read one, so they live as long as the table (at most as much again)
        self.retired: list[np.ndarray] = []
        self.on_grow = None  # called after a growth (heap.fastpath re-points its gate)
        self._view()

    def _view(self) -> None:
        # one handle at a time (new, a Ref's address) through memoryviews: half the cost of numpy's scalar paths
        self.addr_v, self._used_v = memoryview(self.addr), memoryview(self.used)
        self.nbytes_v, self.nrefs_v = memoryview(self.nbytes), memoryview(self.nrefs)

    def new(self, addr: int, shape: tuple[int, int] | None = None) -> int:
        """A handle holding ``addr``; ``shape``: the object's (nbytes, nrefs), if known."""
        if self._dropped:  # a dead Ref's handle, taken over as it is: no reap needed for it
            h = self._dropped.pop()
            if shape is None:
                self.nbytes_v[h] = self.nrefs_v[h] = -1
        elif self._free:
            h = self._free.pop()
        else:
            h = self.high
            if h == self.addr.size:
                self._grow(h)
            self.high = h + 1
        self.addr_v[h] = addr
        self._used_v[h] = True
        if shape is not None:  # set_shape written out
            self.nrefs_v[h] = shape[1]
            self.nbytes_v[h] = shape[0]
        return h

    def set_shape(self, h: int, nbytes: int, nrefs: int) -> None:
        # nrefs first: a compiled access that sees nbytes set relies on nrefs (heap/csrc/access.c)
        self.nrefs_v[h] = nrefs
        self.nbytes_v[h] = nbytes

    def _grow(self, size: int) -> None:
        self.retired += [self.addr, self.nbytes, self.nrefs]
        self.addr = np.concatenate([self.addr, np.zeros(size, dtype=np.int64)])
        self.used = np.concatenate([self.used, np.zeros(size, dtype=bool)])
        self.nbytes = np.concatenate([self.nbytes, np.full(size, -1, dtype=np.int64)])
        self.nrefs = np.concatenate([self.nrefs, np.full(size, -1, dtype=np.int64)])
        self._view()
        if self.on_grow is not None:
            self.on_grow()

    def drop(self, h: int) -> None:
        self._dropped.append(h)

    def drop_block(self, key: int) -> None:
        self._dropped_blocks.append(key)

    @property
    def reap_due(self) -> bool:
        """Refs or RefArrays died since the last ``reap``."""
        return bool(self._dropped or self._dropped_blocks)

    def reap(self) -> None:
        dropped, free = self._dropped, self._free
        used, addr, nbytes, nrefs = self._used_v, self.addr_v, self.nbytes_v, self.nrefs_v
        while dropped:  # Ref.__del__ may append meanwhile, from any thread: pop one at a time
            h = dropped.pop()
            used[h] = False
            addr[h] = 0
            nbytes[h] = nrefs[h] = -1
            free.append(h)
        while self._dropped_blocks:
            self.blocks.pop(self._dropped_blocks.pop(), None)

    def roots(self) -> np.ndarray:
        """Every object address held by a handle or a handle block."""
        parts = [self.addr[: self.high][self.used[: self.high]]]
        parts.extend(self.blocks.values())
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def forward(self, forward) -> None:
        """Rewrite every held address through ``forward`` (array -> array)."""
        held = self.used[: self.high]
        self.addr[: self.high][held] = forward(self.addr[: self.high][held])
        for key, block in self.blocks.items():
            block[:] = forward(block)


class _Finalized:
    """What a Ref or RefArray whose ``__del__`` ran holds instead of its heap's
    Access. A finalizer can resurrect it (PEP 442: an object of the same
    garbage cycle stores it somewhere), but its root is gone and the handle
    number may already name another object: every use refuses."""

    def __getattr__(self, name):
        raise ReferenceError("this Ref (or RefArray) was finalized and then resurrected by a finalizer: "
                             "its root is gone, it no longer names an object")


FINALIZED = _Finalized()


class _Root:
    """What a Ref and a RefArray share: each names a root (a handle, a root block)
    that only its heap may issue, and that goes when it dies."""

    __slots__ = ()
    _made_by = ""

    def __init__(self, *args, **kwargs):
        # a root made by hand would share (and, when it dies, drop) another's root, or name none
        raise TypeError(f"a {type(self).__name__} is made by its heap ({self._made_by}), not by hand")

    _key_name = ""  # the attribute holding the root's key: a handle number, a block key

    @classmethod
    def _issue(cls, access, key: int):
        """The heap's constructor: ``key`` (a handle, a root block) was just taken from the
        handle table ``access`` serves."""
        root = object.__new__(cls)
        root._access = access
        setattr(root, cls._key_name, key)
        return root

    def _release(self, access) -> None:
        raise NotImplementedError

    def __del__(self):
        try:
            access, self._access = self._access, FINALIZED  # resurrected, it must not reach the root's next owner
            self._release(access)
        except Exception:  # made by hand (no root), interpreter shutdown, finalized before: nothing to release
            pass


class Ref(_Root):
    """A handle to one heap object; a live Ref keeps the object alive.

    Its operations are its heap's ``Access`` (heap.access), named here
    ``_access``: the Ref holds that and its handle number, nothing else."""

    __slots__ = ("_access", "_handle", "__weakref__")

    _made_by = "Heap.alloc, Ref.get_ref, RefArray[i]"

    _key_name = "_handle"

    def _release(self, access) -> None:
        access.drop(self._handle)

    def __del__(self):
        # _Root.__del__ written out: a Ref dies as often as one is made (every get_ref)
        try:
            access, self._access = self._access, FINALIZED  # resurrected, it must not reach the root's next owner
            access.handles.dropped.append(self._handle)
        except Exception:  # made by hand (no root), interpreter shutdown, finalized before: nothing to release
            pass

    @property
    def heap(self):
        return self._access.heap

    @property
    def address(self) -> int:
        """The object's current address (it changes when the heap compacts)."""
        return self._access.address(self)

    @property
    def nbytes(self) -> int:
        return self._access.info(self)[1]

    @property
    def nrefs(self) -> int:
        return self._access.info(self)[2]

    def set_ref(self, slot: int, target: "Ref | None") -> None:
        self._access.set_ref(self, slot, target)

    def get_ref(self, slot: int) -> "Ref | None":
        """A new Ref to the object slot ``slot`` references, or None; TypeError for an immediate."""
        return self._access.get_slot(self, slot, False)  # Access.get_ref, one call fewer

    @property
    def host_word(self) -> int:
        """The host's header word (a heap made with ``host_word=True``): the
        heap keeps it through every collection and never reads it."""
        return self._access.host_word(self)

    def set_host_word(self, value: int) -> None:
        self._access.set_host_word(self, value)

    # Immediates (heap.objects): a slot word with its low bit set is an integer, not a reference.
    def set_immediate(self, slot: int, value: int) -> None:
        """Store a 63-bit signed integer in slot ``slot`` (as ``value << 1 | 1``)."""
        self._access.set_immediate(self, slot, value)

    def get_immediate(self, slot: int) -> int:
        """The integer slot ``slot`` holds; TypeError if it holds None or a reference."""
        return self._access.get_immediate(self, slot)

    def get_slot(self, slot: int) -> "Ref | int | None":
        """What slot ``slot`` holds: a new Ref, an immediate's integer, or None."""
        return self._access.get_slot(self, slot)

    def set_slot(self, slot: int, value: "Ref | int | None") -> None:
        """``set_ref`` for a Ref or None, ``set_immediate`` for an integer."""
        if value is None or isinstance(value, Ref):
            self._access.set_ref(self, slot, value)
        else:
            self._access.set_immediate(self, slot, value)

    def read(self, length: int, offset: int = 0) -> bytes:
        return self._access.read(self, length, offset)

    def write(self, data: bytes, offset: int = 0) -> None:
        self._access.write(self, data, offset)

    def same_object(self, other: "Ref") -> bool:
        # both addresses read under one acquisition of the heap lock: a collection between two reads
        # would move the object and make two Refs to it differ
        return isinstance(other, Ref) and other._access is self._access and self._access.same(self, other)

    def __eq__(self, other) -> bool:
        return self.same_object(other) if isinstance(other, Ref) else NotImplemented

    def __hash__(self) -> int:
        # equality follows the object, whose address moves: the hash is the object's
        # identity hash (heap.weak), drawn once and kept however often it moves
        return self._access.heap.identity_hash(self)

    def __copy__(self) -> "Ref":
        # a root of its own: a copy sharing the handle would drop the original's root when it dies
        return self._access.copy(self)

    def __deepcopy__(self, memo) -> "Ref":
        return self.__copy__()

    def __reduce__(self):
        raise TypeError("a Ref cannot be pickled: it is a handle into one process's heap")

    def __repr__(self) -> str:
        try:
            return f"Ref(0x{self.address:x}, nbytes={self.nbytes}, nrefs={self.nrefs})"
        except Exception as exc:
            return f"Ref(<{exc.__class__.__name__}>)"


class RefArray(_Root):
    """Handles to many objects as one root block (``Heap.alloc_many``)."""

    _made_by = "Heap.alloc_many"

    _key_name = "_key"

    def _release(self, access) -> None:
        access.drop_block(self._key)

    def __copy__(self) -> "RefArray":
        # a root block of its own: a copy sharing the key would drop the original's roots when it dies
        return self._access.copy_block(self)

    def __deepcopy__(self, memo) -> "RefArray":
        return self.__copy__()

    def __reduce__(self):
        raise TypeError("a RefArray cannot be pickled: it holds handles into one process's heap")

    def __len__(self) -> int:
        return self._access.block(self).size

    def __getitem__(self, i: int) -> Ref:
        return self._access.block_ref(self, i)

    @property
    def addresses(self) -> np.ndarray:
        """The objects' current addresses (a copy)."""
        return self._access.block(self).copy()

    def set_refs(self, slot: int, sources, targets: "RefArray", target_index) -> None:
        """For each k: ``self[sources[k]].set_ref(slot, targets[target_index[k]])``,
        with ``target_index[k] == -1`` meaning None; one vectorised store."""
        self._access.block_set_refs(self, slot, sources, targets, target_index)
