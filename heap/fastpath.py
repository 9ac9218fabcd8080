"""The compiled Ref operations and allocation step (``heap/csrc/access.c``).

Where a backend's heap addresses are this process's own (``supported``) and the objects have the default layout, one Ref
operation is one compiled call: the gate, the bounds check, the load or store
of heap memory in place, without the heap lock and with the GIL released (an
access that meets a page not yet installed sleeps in the kernel while the
fault handler runs). Anything the call cannot decide -- a pause under way or
just over, the heap closed, host code of a collection running, a handle whose
object's shape is not cached yet, an argument out of range -- it leaves to the
generic path of heap.access (the heap lock, the entry check, every error
message), which is also the path of every other backend.

The gate (``CompiledGate``) is a safepoint protocol: an access counts itself
in flight and then reads the state word; a pause sets the word and waits for
the count to reach zero (``AccessGate.drain``). The word stays set after the
pause: the first access that finds it takes the locked path, and once the
heap's entry check passed under the lock it opens the gate again
(``AccessGate.reopen``). So only a thread holding the heap lock, with no pause
under way, ever opens it.

``CompiledBump`` places a small object in the current page, writes its header,
records its row and index entry in one call: nothing can interrupt it half
way, so the allocation needs no signal deferral; every other allocation (a new
page, a large object, a collection due) is the heap's Python path.
"""

from __future__ import annotations

from .access import Access, decode_immediate, host_word_value
from .alloc import PAGE_SMALL
from .core import slot_offset_of
from .errors import HeapClosed, HeapCorrupted
from .objects import MAGIC
from .roots import Ref

try:
    from ._native import ffi, lib
except ImportError:  # not built: every heap takes the generic path
    ffi = lib = None

PAUSED, CLOSED, HOST = 1, 2, 4  # the gate's state bits (access.c); HOST is added once per thread
SLOW_WORD = 2  # rgc_ref_get_slot's "take the generic path": no slot word is 2
MAX_FAST_LOAD = 1 << 20  # larger reads take the generic path (a buffer of that size costs more than the lock)
_WAIT_FOREVER = -1


def supported(kernel, model) -> bool:
    """Whether this heap's Ref operations can be compiled calls: the extension is
    built, the heap's addresses are this process's own (``memory_in_place`` with
    no frame table: ``frame_pointers`` answers None, heap.kernel) and the objects
    have the default layout."""
    return (lib is not None and kernel.memory_in_place and kernel.frame_pointers(0, 0) is None
            and slot_offset_of(model) is not None)


def _ptr(ctype: str, arr):
    return ffi.cast(ctype, arr.ctypes.data)


class CompiledGate:
    """``struct rgc_gate``: the state word, the in-flight count, and where the handle table is."""

    def __init__(self, handles, header: int):
        self.struct = g = ffi.new("struct rgc_gate *")
        g.header = header
        g.state = PAUSED  # opened by the first access that passes the entry check
        self.handles = handles
        self.point()
        handles.on_grow = self.point

    def point(self) -> None:
        """(Re-)point at the handle table's arrays: addresses, then slots, then bytes (access.c reads in reverse)."""
        g, h = self.struct, self.handles
        g.addr = _ptr("int64_t *", h.addr)
        g.nrefs = _ptr("int64_t *", h.nrefs)
        g.nbytes = _ptr("int64_t *", h.nbytes)

    def drain(self, timeout: float | None) -> bool:
        lib.rgc_gate_shut(self.struct, PAUSED)
        return bool(lib.rgc_gate_wait(self.struct, _WAIT_FOREVER if timeout is None else int(timeout * 1e9)))

    def reopen(self) -> None:
        if self.struct.state & PAUSED:
            lib.rgc_gate_open(self.struct, PAUSED)

    def close(self) -> None:
        lib.rgc_gate_shut(self.struct, CLOSED)

    def host_code(self, running: bool) -> None:
        lib.rgc_gate_add(self.struct, HOST if running else -HOST)


def make_access(heap, lock, ready, gate, health, kernel, model, handles, table, index, pause) -> Access:
    """The heap's Access: compiled where ``supported``, else the generic one."""
    cls = CompiledAccess if supported(kernel, model) else Access
    return cls(heap, lock, ready, gate, health, kernel, model, handles, table, index, pause)


class CompiledAccess(Access):
    """heap.access.Access with the common Ref operations as one compiled call each."""

    def __init__(self, *args):
        super().__init__(*args)
        self.gate.compiled = self.cgate = CompiledGate(self.handles, slot_offset_of(self.model))
        self._g = self.cgate.struct
        self._rows = table_struct(self.table, self.index)

    def _after(self) -> None:
        """After a compiled access, when the gate is no longer open or the heap
        found broken: a pause that began while the access was in flight (or
        just after it) ends before the caller goes on, as it would have had
        the access waited for the heap lock; and a broken invariant found
        meanwhile means the bytes may not be the object's."""
        if self._g.state & PAUSED:
            with self.lock:
                pass
        if self.health.broken is not None:
            self.health.check()

    def read(self, ref, length, offset=0) -> bytes:
        if type(ref) is Ref and ref._access is self and type(length) is int and type(offset) is int \
                and 0 < length <= MAX_FAST_LOAD:
            buf = ffi.new("char[]", length)
            try:
                slow = lib.rgc_ref_load(self._g, ref._handle, offset, length, buf)
            except OverflowError:  # an integer beyond 64 bits: the generic path says what is wrong
                slow = True
            if not slow:
                if self._g.state or self.health.broken is not None:
                    self._after()
                return ffi.unpack(buf, length)
        return super().read(ref, length, offset)

    def write(self, ref, data, offset=0) -> None:
        if type(data) is bytes and type(ref) is Ref and ref._access is self and type(offset) is int:
            try:
                slow = lib.rgc_ref_store(self._g, ref._handle, offset, data, len(data))
            except OverflowError:
                slow = True
            if not slow:
                if self._g.state or self.health.broken is not None:
                    self._after()
                return
        super().write(ref, data, offset)

    def _set_word(self, ref, slot, target: int, word: int) -> bool:
        """Store into a slot by one compiled call: ``target``'s address (a handle), or ``word`` (target -1)."""
        if type(ref) is not Ref or ref._access is not self or type(slot) is not int:
            return False
        try:
            if lib.rgc_ref_set_slot(self._g, ref._handle, slot, target, word):
                return False
        except OverflowError:
            return False
        if self._g.state or self.health.broken is not None:
            self._after()
        return True

    def set_ref(self, ref, slot, target) -> None:
        if target is None:
            if self._set_word(ref, slot, -1, 0):
                return
        elif type(target) is Ref and target._access is self and self._set_word(ref, slot, target._handle, 0):
            return
        super().set_ref(ref, slot, target)

    def set_immediate(self, ref, slot, value) -> None:
        if type(value) is int and -(1 << 62) <= value < (1 << 62) and self._set_word(ref, slot, -1, value << 1 | 1):
            return  # (an int64 as it is: value << 1 | 1 fits)
        super().set_immediate(ref, slot, value)

    def get_immediate(self, ref, slot) -> int:
        if type(ref) is Ref and ref._access is self and type(slot) is int:
            try:
                word = lib.rgc_ref_get_slot(self._g, ref._handle, slot)
            except OverflowError:
                word = SLOW_WORD
            if word & 1:
                if self._g.state or self.health.broken is not None:
                    self._after()
                return word >> 1  # the signed word: the shift keeps the sign
        return super().get_immediate(ref, slot)

    def get_slot(self, ref, slot, immediates: bool = True):
        if type(ref) is Ref and ref._access is self and type(slot) is int:
            g = self._g
            epoch = g.epoch  # before the load: a drain since moves it on
            try:
                word = lib.rgc_ref_get_slot(g, ref._handle, slot)
            except OverflowError:
                word = SLOW_WORD
            if word != SLOW_WORD:
                if g.state or self.health.broken is not None:
                    self._after()
                if word == 0:
                    return None
                if word & 1:
                    if immediates:
                        return word >> 1
                    raise TypeError(f"slot {slot} holds an immediate ({decode_immediate(word & (1 << 64) - 1)}), "
                                    "not a reference (Ref.get_slot or Ref.get_immediate read it)")
                with self.lock:
                    if self._closed:  # closed by another thread since the load
                        raise HeapClosed("the heap is closed")
                    if g.epoch == epoch:  # no pause since the load: the word is the target's address now
                        handles = self.handles
                        h = handles.new(word)  # a dead Ref's handle first: no reap needed for a Ref that came and went
                        if lib.rgc_issue_shape(g, self._rows, word, h) < 0:  # find() and the shape, in one call
                            handles.drop(h)
                            raise HeapCorrupted("reference targets", f"slot {slot} of 0x{self.own(ref):x} holds "
                                                f"0x{word:x}, which is no object start")
                        target = object.__new__(Ref)  # Ref._issue, written out
                        target._access = self
                        target._handle = h
                        return target
        return super().get_slot(ref, slot, immediates)


def table_struct(table, index):
    """``struct rgc_bump`` pointing at the object table's rows and the address index (heap.alloc, heap.mark);
    the caller keeps both alive."""
    b = ffi.new("struct rgc_bump *")
    b.rows = _ptr("int64_t *", table.meta)
    b.index = _ptr("int32_t *", index.map)
    b.index_base, b.index_shift, b.index_len = index.base, index.shift, index.map.size
    return b


class CompiledBump:
    """``struct rgc_bump``: the allocator's small page, the object table's rows, the address index."""

    def __init__(self, allocator, table, index, model):
        self.struct = b = table_struct(table, index)
        self.parts = (allocator, table, index)  # their arrays live as long as this
        b.place = _ptr("int64_t *", allocator.place_state)
        b.kind = _ptr("int8_t *", allocator.page_kind)
        b.small_kind = PAGE_SMALL
        b.word1 = MAGIC << 48
        b.host_words = 1 if model.host_words else 0

    def step(self, nbytes: int, nrefs: int, total: int, host) -> int:
        """The new object's address, or 0: the caller's Python path places it."""
        if host is not None:
            if not self.struct.host_words:
                return 0  # the Python path says why not
            host = host_word_value(host)
        return lib.rgc_bump(self.struct, nbytes, nrefs, total, host or 0)


def _no_bump(nbytes: int, nrefs: int, total: int, host) -> int:
    return 0


def bump_step(kernel, model, allocator, table, index):
    """The heap's compiled allocation step where ``supported`` (else one that always declines)."""
    return CompiledBump(allocator, table, index, model).step if supported(kernel, model) else _no_bump
