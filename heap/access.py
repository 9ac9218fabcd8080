"""The mutator's way into heap memory: the access gate and the operations
behind ``Ref`` and ``RefArray`` (the generic path; heap.fastpath makes the
common ones one compiled call where the heap's memory is the process's own).

Every access computes its address under the heap lock, enters the
``AccessGate``, drops the lock and touches memory through the kernel's
accessors. During a concurrent cycle that touch may fault on a page not yet
installed; on Linux the accessor is a cffi call that releases the GIL, so
the fault handler can run while the mutator waits in the kernel
(docs/design.md, "The GIL"). A pause takes the heap lock and drains the
gate: no new access can enter, and the ones in flight finish without the
heap lock (their faults are served meanwhile). The compactor and the fault
handler never take the heap lock or the gate.
"""

from __future__ import annotations

import operator
import sys
import threading
import time
from typing import Callable

import numpy as np

from .errors import HeapClosed, HeapCorrupted, Health
from .mark import rows_of
from .roots import FINALIZED, Ref, RefArray

_BYTEORDER = sys.byteorder


IMMEDIATE_LIMIT = 1 << 62  # an immediate is a 63-bit signed integer
_WORD_MASK = (1 << 64) - 1


def encode_immediate(value) -> int:
    """The slot word of the immediate ``value``: ``value << 1 | 1`` (two's complement, 64 bits)."""
    if type(value) is not int:
        value = as_index(value, "an immediate")
    if not -IMMEDIATE_LIMIT <= value < IMMEDIATE_LIMIT:
        raise OverflowError(f"an immediate is a 63-bit signed integer; {value} does not fit")
    return ((value << 1) | 1) & _WORD_MASK


def host_word_value(value) -> int:
    """``value`` as a host header word: an integer in [0, 2**64)."""
    if type(value) is not int:
        value = as_index(value, "a host word")
    if not 0 <= value <= _WORD_MASK:
        raise OverflowError(f"a host word is an unsigned 64-bit integer; {value} does not fit")
    return value


def decode_immediate(word: int) -> int:
    """The integer a slot word with its low bit set holds."""
    return (word - (1 << 64) if word >> 63 else word) >> 1


def as_index(value, name: str) -> int:
    """``value`` as an int (anything with ``__index__``), or a TypeError naming ``name``."""
    if type(value) is int:
        return value
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def as_counts(values, name: str, limit: int) -> np.ndarray:
    """``values`` (an integer, or an array-like of them) as an int64 array
    with every element in ``[0, limit]``, without copying it: TypeError for
    anything that is not an integer (floats, strings), ValueError for a value
    out of range, however large (never OverflowError). The one check of the
    sizes and counts ``alloc_many`` takes (``as_index`` is the scalar one)."""
    try:
        arr = np.asarray(values)
    except (OverflowError, ValueError):
        raise ValueError(f"{name} must be in [0, {limit}]") from None
    if arr.dtype.kind == "O":  # Python ints beyond 64 bits, or objects that are not integers
        flat = arr.ravel()
        if all(isinstance(v, int) for v in flat.tolist()):
            raise ValueError(f"{name} must be in [0, {limit}]")
        bad = next(v for v in flat.tolist() if not isinstance(v, int))
        raise TypeError(f"{name} must be integers, not {type(bad).__name__}")
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be integers, not {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > limit):
        raise ValueError(f"{name} must be in [0, {limit}]")
    return arr.astype(np.int64, copy=False)


def as_shapes(nbytes, nrefs, model, heap_size: int, max_nrefs: int) -> tuple[np.ndarray, np.ndarray]:
    """``alloc_many``'s arguments as two flat int64 arrays of one length,
    checked before anything is materialised (a broadcast may stand for
    billions of objects) and the sizes against the heap before any sum (int64
    totals must not wrap)."""
    nbytes, nrefs = as_counts(nbytes, "nbytes", heap_size), as_counts(nrefs, "nrefs", max_nrefs)
    count = int(np.prod(np.broadcast_shapes(nbytes.shape, nrefs.shape), dtype=object))
    smallest = max(int(model.total_bytes(np.zeros(1, np.int64), np.zeros(1, np.int64))[0]), 1)
    if count * smallest > heap_size:
        raise ValueError(f"{count} objects of at least {smallest} bytes cannot fit a heap of {heap_size} bytes")
    nbytes, nrefs = np.broadcast_arrays(nbytes, nrefs)
    return nbytes.ravel().copy(), nrefs.ravel().copy()


class AccessGate:
    """Mutator memory accesses in flight, so that a pause starts only when none is.

    An access puts a token of its own in ``entries`` with the heap lock held
    (so no pause can be waiting for the gate at that moment) and takes it out
    when its memory touch is over, without the lock; ``drain`` is called by
    the pause with the heap lock held: no new access can enter, and the ones
    in flight finish without needing the heap lock (the fault handler serves
    their faults).

    Entering and leaving are ``list.append`` and ``list.remove``, written out
    in the access's own frame (``Access._touch``) and not behind a gate method: a signal handler runs between
    bytecodes, and one raising (Ctrl-C) at the entry of an ``enter``/``leave``
    method, or between the return of ``enter`` and the ``try`` that leaves,
    left an access counted for good, and the next pause waited for it
    forever. A C call is never cut in half, and the ``try`` encloses the
    append: if the interrupt lands before the append, the token is not
    there and nothing is taken out; after it, the ``finally`` takes it out.

    Where the accesses are compiled (heap.fastpath), they count themselves in
    ``compiled`` instead, without the heap lock: ``drain`` shuts that gate first
    (it stays shut until a thread holding the heap lock passes the entry check
    and calls ``reopen``), and ``host_code`` keeps it shut while a hook,
    callback or scanner runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.entries: list = []  # one token per access in flight
        self.draining = 0  # drains waiting: only then does leaving wake them
        self.compiled = None  # the compiled accesses' gate (heap.fastpath.CompiledGate), drained too

    def reopen(self) -> None:
        """The heap lock is held and the heap passed its entry check: no pause is
        under way, so compiled accesses may go on without the lock again."""
        if self.compiled is not None:
            self.compiled.reopen()

    def host_code(self, running: bool) -> None:
        """A thread starts (or ends) host code of a collection: compiled accesses take the locked path meanwhile."""
        if self.compiled is not None:
            self.compiled.host_code(running)

    def wake(self) -> None:
        """An access left while a drain waits (a wake lost to an interrupt only costs the drainer a poll)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def inflight(self) -> int:
        return len(self.entries)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no access is in flight; none starts until the heap lock is released."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.compiled is not None and not self.compiled.drain(timeout):
            return False
        with self._cond:
            self.draining += 1
            try:
                while self.entries:
                    left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self.draining -= 1


class Access:
    """The operations of ``Ref`` and ``RefArray`` on one heap.

    ``heap`` is the owner (a Ref names it); ``lock`` its lock; ``ready`` the
    entry check every operation makes under the lock (open, not broken,
    nothing pending); ``pause`` gives the collection epoch
    (``pause.collections``) and the heap's side tables.
    """

    def __init__(self, heap, lock, ready: Callable[[], None], gate: AccessGate, health: Health, kernel, model,
                 handles, table, index, pause):
        self.heap = heap
        self.lock = lock
        self.ready = ready
        self.gate = gate
        self.health = health
        self.kernel = kernel
        self.model = model
        self.handles = handles
        self.table = table
        self.index = index
        self.pause = pause
        self._closed = False
        # a model may offer slot_offset(nrefs, slot) for one slot as plain arithmetic (DefaultObjectModel does)
        self._slot_offset = getattr(model, "slot_offset", None)

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        if value and self.gate.compiled is not None:
            self.gate.compiled.close()  # before the arena goes: no compiled access may start again

    # -- handles ------------------------------------------------------------------------
    def issue(self, addr: int, shape: tuple[int, int] | None = None) -> Ref:
        """A new Ref (a new root) to the object at ``addr``; the heap lock is held."""
        ref = object.__new__(Ref)  # Ref._issue written out: one Ref per alloc and get_ref
        ref._access = self
        ref._handle = self.handles.new(addr, shape)
        return ref

    def new_block(self, addrs: np.ndarray) -> RefArray:
        """A RefArray rooting the objects at ``addrs``; the heap lock is held."""
        blocks = self.handles.blocks
        key = id(addrs) ^ time.perf_counter_ns()
        while key in blocks:
            key += 1
        blocks[key] = np.asarray(addrs, dtype=np.int64)
        return RefArray._issue(self, key)

    def drop(self, handle: int) -> None:
        """A Ref died (its ``__del__``, any thread, any moment): its root goes at the next reap."""
        self.handles.drop(handle)

    def drop_block(self, key: int) -> None:
        self.handles.drop_block(key)

    def copy(self, ref: Ref) -> Ref:
        with self.lock:
            self.ready()
            return self.issue(self.own(ref))

    def copy_block(self, arr: RefArray) -> RefArray:
        with self.lock:
            return self.new_block(self.block(arr).copy())

    # -- where things are ------------------------------------------------------------------
    def own(self, ref) -> int:
        """The address a Ref of this heap holds."""
        if not isinstance(ref, Ref):
            raise TypeError(f"expected a Ref, not {type(ref).__name__}")
        if ref._access is not self:
            if ref._access is FINALIZED:
                raise ReferenceError("this Ref was finalized and resurrected: it no longer names an object")
            raise ValueError("this Ref belongs to another heap")
        return self.handles.addr_v[ref._handle]

    def find(self, addr: int) -> int:
        """Row of the object starting at ``addr``, or -1: one gather in the
        address index (scalar numpy reads, ~10x cheaper than a searchsorted call)."""
        ix, t = self.index, self.table
        granule = (addr - ix.base) >> ix.shift
        if not 0 <= granule < ix.map.size:
            return -1
        row = ix.map.item(granule)
        return row if 0 <= row < t.n and t.start_of(row) == addr else -1

    def _shape_of_row(self, row: int) -> tuple[int, int]:
        """(nbytes, nrefs) of the object in ``row``."""
        return self.table.shape_of(row)

    def _locate(self, ref) -> tuple[int, tuple[int, int, int]]:
        """(address, (nbytes, nrefs, payload offset)) of a Ref's object; the
        shape is looked up (and the address checked) once per handle, then
        cached in the handle table (heap.roots.HandleTable.nbytes, .nrefs)."""
        handles = self.handles
        if type(ref) is Ref and ref._access is self:  # the hot path: ``own`` written out, one call fewer
            addr = handles.addr_v[ref._handle]
        else:
            addr = self.own(ref)  # its errors
        h = ref._handle
        nbytes = handles.nbytes_v[h]
        if nbytes < 0:
            row = self.find(addr)
            if row < 0:
                raise HeapCorrupted("roots", f"a handle holds 0x{addr:x}, which is no object start")
            nbytes, nrefs = self._shape_of_row(row)
            handles.set_shape(h, nbytes, nrefs)
        else:
            nrefs = handles.nrefs_v[h]
        return addr, (nbytes, nrefs, self.model.payload_offset(nrefs))

    def _slot_address(self, ref, slot) -> int:
        if type(slot) is not int:
            slot = as_index(slot, "slot")
        addr, (_, nrefs, _) = self._locate(ref)
        if not 0 <= slot < nrefs:
            raise IndexError(f"slot {slot} out of range: the object has {nrefs} reference slots")
        if self._slot_offset is not None:  # a scalar: one object's slot is arithmetic, not an array call
            return addr + self._slot_offset(nrefs, slot)
        return int(self.model.slot_addresses(np.array([addr]), np.array([nrefs]))[slot])

    # -- Ref operations ----------------------------------------------------------------------
    def address(self, ref) -> int:
        with self.lock:
            self.ready()
            return self.own(ref)

    def same(self, ref, other) -> bool:
        """Do two Refs of this heap name one object? (One lock acquisition: no collection in between.)"""
        with self.lock:
            self.ready()
            return self.own(ref) == self.own(other)

    def info(self, ref) -> tuple[int, int, int]:
        """(address, nbytes, nrefs)."""
        with self.lock:
            self.ready()
            addr, (nbytes, nrefs, _) = self._locate(ref)
            return addr, nbytes, nrefs

    # The memory touch itself runs outside the heap lock, inside the gate: it may fault
    # during a concurrent cycle, and other mutators go on meanwhile. ``_touch`` is every
    # access's one frame for it (AccessGate says why its entry and exit are written out
    # there); after the touch, an invariant found broken while the access waited means
    # the bytes may not be the object's.
    def _touch(self, locate, *args):
        """Run one memory access: ``locate(*args)``, under the heap lock, gives
        (address, bytes to store | number of bytes to load), or None for an
        access of nothing; then the store or load, inside the access gate.
        Returns (what the load read, or None; the collection epoch the address belongs to)."""
        token, entries = object(), self.gate.entries
        try:
            with self.lock:
                self.ready()
                self.gate.reopen()
                located = locate(*args)
                if located is None:
                    return None, 0
                epoch = self.pause.collections
                entries.append(token)  # in flight (AccessGate: why not a method call)
            where, what = located
            data = self.kernel.load(where, what) if type(what) is int else self.kernel.store(where, what)
        finally:
            if token in entries:
                entries.remove(token)
                if self.gate.draining:
                    self.gate.wake()
        if self.health.broken is not None:
            self.health.check()
        return data, epoch

    def _slot_store(self, ref, slot, target):
        value = 0 if target is None else self.own(target)  # under the lock: a collection may move it
        return self._slot_address(ref, slot), value.to_bytes(8, _BYTEORDER)

    def _word_store(self, ref, slot, word: int):
        return self._slot_address(ref, slot), word.to_bytes(8, _BYTEORDER)

    def _slot_load(self, ref, slot):
        return self._slot_address(ref, slot), 8

    def _payload(self, ref, what, offset):
        """(address, ``what``) of a payload access, None if empty: ``what`` is
        the data to store (a memoryview) or the length to load."""
        if type(what) is memoryview:
            length = len(what)
        else:
            length = what = what if type(what) is int else as_index(what, "length")
        if type(offset) is not int:
            offset = as_index(offset, "offset")
        addr, (nbytes, _, payload) = self._locate(ref)
        if offset < 0 or length < 0 or offset + length > nbytes:
            raise ValueError(f"bytes [{offset}, {offset + length}) are outside the object's {nbytes}-byte payload")
        return (addr + payload + offset, what) if length else None

    def set_ref(self, ref, slot, target) -> None:
        self._touch(self._slot_store, ref, slot, target)

    def set_immediate(self, ref, slot, value) -> None:
        """Store the integer ``value`` in a slot as an immediate (``value << 1 | 1``)."""
        self._touch(self._word_store, ref, slot, encode_immediate(value))

    # -- the host's header word (heap.objects.DefaultObjectModel(host_word=True)) ------------------
    def _host_word_address(self, ref) -> int:
        offset = getattr(self.model, "host_word_offset", None)
        if offset is None:
            raise ValueError("this heap has no host_word (make it with Heap(host_word=True))")
        return self.own(ref) + offset

    def _host_word(self, ref, what):
        return self._host_word_address(ref), what

    def host_word(self, ref) -> int:
        return int.from_bytes(self._touch(self._host_word, ref, 8)[0], _BYTEORDER)

    def set_host_word(self, ref, value) -> None:
        self._touch(self._host_word, ref, host_word_value(value).to_bytes(8, _BYTEORDER))

    def get_immediate(self, ref, slot) -> int:
        value = self.get_slot(ref, slot)
        if type(value) is int:
            return value
        raise TypeError(f"slot {slot} holds {'None' if value is None else 'a reference'}, not an immediate")

    def get_ref(self, ref, slot):
        return self.get_slot(ref, slot, immediates=False)

    def get_slot(self, ref, slot, immediates: bool = True):
        """What a slot holds: None, a new Ref, or (``immediates``) the integer
        of an immediate; with ``immediates=False`` an immediate is a TypeError."""
        while True:
            data, epoch = self._touch(self._slot_load, ref, slot)
            value = int.from_bytes(data, _BYTEORDER)
            if value == 0:
                return None
            if value & 1:  # an immediate (heap.objects): not a reference
                if immediates:
                    return decode_immediate(value)
                raise TypeError(f"slot {slot} holds an immediate ({decode_immediate(value)}), not a reference "
                                "(Ref.get_slot or Ref.get_immediate read it)")
            with self.lock:
                if self.closed:  # closed by another thread since the load
                    raise HeapClosed("the heap is closed")
                if self.pause.collections != epoch:
                    continue  # a collection moved the target since the load: load again
                row = self.find(value)
                if row < 0:
                    raise HeapCorrupted("reference targets", f"slot {slot} of 0x{self.own(ref):x} holds "
                                        f"0x{value:x}, which is no object start")
                return Ref._issue(self, self.handles.new(value, self._shape_of_row(row)))  # issue, written out

    def read(self, ref, length, offset) -> bytes:
        data, _ = self._touch(self._payload, ref, length, offset)
        return b"" if data is None else data

    def write(self, ref, data, offset) -> None:
        try:
            data = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
        self._touch(self._payload, ref, data, offset)

    # -- RefArray operations ------------------------------------------------------------------
    def block(self, arr: RefArray) -> np.ndarray:
        if not isinstance(arr, RefArray):
            raise TypeError(f"expected a RefArray, not {type(arr).__name__}")
        if arr._access is not self:
            raise ValueError("this RefArray belongs to another heap")
        with self.lock:
            self.ready()
            return self.handles.blocks[arr._key]

    def block_ref(self, arr: RefArray, i) -> Ref:
        i = as_index(i, "index")
        with self.lock:
            block = self.block(arr)
            if not -block.size <= i < block.size:
                raise IndexError(f"index {i} out of range for {block.size} objects")
            return self.issue(int(block[i]))

    def block_set_refs(self, arr: RefArray, slot, sources, targets: RefArray, target_index) -> None:
        slot = as_index(slot, "slot")
        with self.lock:
            block = self.block(arr)
            tblock = self.block(targets)
            sources = np.asarray(sources, dtype=np.int64)
            tidx = np.asarray(target_index, dtype=np.int64)
            if sources.shape != tidx.shape:
                raise ValueError("sources and target_index must have the same shape")
            if sources.size == 0:
                return
            if sources.min() < 0 or sources.max() >= block.size or tidx.max() >= tblock.size or tidx.min() < -1:
                raise IndexError("an index is out of range")
            starts = block[sources]
            nrefs = self.table.nrefs[rows_of(self.table.start, starts, "roots")]
            if slot < 0 or (nrefs <= slot).any():
                raise IndexError(f"slot {slot} out of range for some of the objects")
            every = self.model.slot_addresses(starts, nrefs)
            where = every[np.cumsum(nrefs) - nrefs + slot]
            values = np.where(tidx >= 0, tblock[np.maximum(tidx, 0)], 0)
            self.kernel.store_words(where.astype(np.uint64), values.astype(np.uint64))
