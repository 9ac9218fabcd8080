"""The part of ``Heap``'s API that a language runtime embedding the heap uses
beyond alloc/collect (docs/embedding.md): the mutator protocol and the
collection callbacks (heap.hooks), when collections run (``collect_every``,
``disable``/``enable``), weak references, finalization and the identity
hash (heap.weak).

``EmbeddingAPI`` is a base class of ``Heap`` (heap.runtime), kept apart so
that the heap's own module stays about the heap's own work. It uses the
heap's lock, its entry check (``_ready``) and its ``Hooks``; nothing else.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from . import weak
from .access import as_index, host_word_value
from .errors import HeapFull
from .hooks import Callback, MutatorHooks
from .objects import DEFAULT_MODEL, DefaultObjectModel, ObjectModel, RootScanner
from .pinning import PinTable
from .roots import Ref
from .weak import WeakRef


def model_for(object_model: ObjectModel | None, host_word: bool) -> ObjectModel:
    """The heap's object model: the given one, or the default layout, with the
    host's header word when ``host_word`` (heap.objects.DefaultObjectModel)."""
    if not host_word:
        return object_model or DEFAULT_MODEL
    if object_model is not None:
        raise ValueError("host_word=True gives the default layout a host word; a custom object_model "
                         "keeps its own header words (give it host_words and host_word_offset)")
    return DefaultObjectModel(host_word=True)


class EmbeddingAPI:
    """Methods ``Heap`` has for runtimes (see the module doc)."""

    # -- objects without a handle, and the host's header word ---------------------------------
    def alloc_raw(self, nbytes: int, nrefs: int = 0, *, host: int | None = None) -> int:
        """A new object, as ``alloc`` makes it, but no Ref: its address, valid
        until the next collection. Nothing roots it: a runtime that keeps it
        reports the address from a RootScanner (or stores it in a slot of a
        live object) before the next collection, or it is freed then."""
        shape = self._check_shape(nbytes, nrefs)
        with self._lock:  # _new_object defers signals where it must
            return self._new_object(*shape, host)

    def ref_at(self, addr: int) -> Ref:
        """A new Ref (a root) to the object starting at ``addr``; ValueError if none does."""
        addr = as_index(addr, "addr")
        with self._lock:
            self._ready()
            if self._access.find(addr) < 0:
                raise ValueError(f"no object starts at 0x{addr:x}")
            return self._access.issue(addr)

    def _header(self, nbytes: int, nrefs: int, large: bool, host: int | None = None) -> bytes:
        """One object's header as the bytes to store, the host's word included."""
        offset = getattr(self._model, "host_word_offset", None)
        if host is not None and offset is None:
            raise ValueError("this heap has no host_word (make it with Heap(host_word=True))")
        if self._scalar_header is not None:
            if offset is None:
                return self._scalar_header(nbytes, nrefs, large)
            return self._scalar_header(nbytes, nrefs, large, host_word_value(host or 0))
        words = self._model.header_words(np.array([nbytes]), np.array([nrefs]), np.array([large]))
        head = words.astype(np.uint64).tobytes()
        if offset is not None and host:
            head = head[:offset] + host_word_value(host).to_bytes(8, sys.byteorder) + head[offset + 8:]
        return head

    # -- roots the runtime holds itself (heap.objects.RootScanner) ---------------------------
    def add_root_scanner(self, scanner: RootScanner) -> None:
        with self._lock:
            self._ready()
            self._scanners.append(scanner)

    def remove_root_scanner(self, scanner: RootScanner) -> None:
        with self._lock:
            self._scanners.remove(scanner)

    # -- the host's hooks (heap.hooks, docs/embedding.md "The mutator protocol") ----------
    def add_mutator_hooks(self, hooks: MutatorHooks) -> None:
        """``hooks.stop_mutators(info)`` / ``resume_mutators(info)`` around every pause."""
        with self._lock:
            self._ready()
            self._hooks.add_mutators(hooks)

    def remove_mutator_hooks(self, hooks: MutatorHooks) -> None:
        with self._lock:
            self._hooks.remove_mutators(hooks)

    def add_callback(self, callback: Callback) -> None:
        """``callback("start", info)`` before and ``callback("stop", info)``
        after every collection (``info.stats``: its stats), automatic ones included."""
        with self._lock:
            self._ready()
            self._hooks.add_callback(callback)

    def remove_callback(self, callback: Callback) -> None:
        with self._lock:
            self._hooks.remove_callback(callback)

    # -- when collections run ------------------------------------------------------------
    @property
    def collect_every(self) -> int | None:
        """Bytes allocated after which ``alloc`` collects first (None: only when full)."""
        return self._collect_every

    @collect_every.setter
    def collect_every(self, value: int | None) -> None:
        if value is not None:
            value = as_index(value, "collect_every")
            if value <= 0:
                raise ValueError(f"collect_every must be positive or None, not {value}")
        with self._lock:
            self._collect_every = value

    def disable(self) -> None:
        """No automatic collection until the matching ``enable()`` (calls nest,
        as Boehm's GC_disable). ``collect()`` still collects when asked; an
        allocation that does not fit raises HeapFull instead of collecting."""
        with self._lock:
            self._disabled += 1

    def enable(self) -> None:
        with self._lock:
            if not self._disabled:
                raise ValueError("enable() without a matching disable()")
            self._disabled -= 1

    def _place_disabled(self, place, total: int):
        """``Heap._place`` while collection is disabled: no collection, HeapFull when it does not fit."""
        where = place()
        if where is None:
            raise HeapFull(f"no room for {total} bytes, and collection is disabled (Heap.disable)")
        self._since_collect += total
        return where

    @property
    def enabled(self) -> bool:
        """Whether allocation may collect by itself."""
        return not self._disabled

    @contextlib.contextmanager
    def disabled(self):
        """``with heap.disabled():`` no automatic collection inside."""
        self.disable()
        try:
            yield self
        finally:
            self.enable()

    # -- pinning (heap.pinning) -------------------------------------------------------------
    def pin(self, ref: Ref) -> None:
        """Keep ``ref``'s object at its address, with its bytes, until the
        matching ``unpin`` (pins nest); a pinned object is a root."""
        with self._lock:
            self._ready()
            pins = self._pause.pins
            if pins is None:
                pins = self._pause.pins = PinTable()
                self._scanners.append(pins)  # pinned objects are roots
            pins.pin(self._access.own(ref))

    def unpin(self, ref: Ref) -> None:
        with self._lock:
            self._ready()
            pins = self._pause.pins
            addr = self._access.own(ref)
            if pins is None or not pins.pinned(addr):
                raise ValueError(f"the object at 0x{addr:x} is not pinned")
            pins.unpin(addr)

    def is_pinned(self, ref: Ref) -> bool:
        with self._lock:
            self._ready()
            pins = self._pause.pins
            return pins is not None and pins.pinned(self._access.own(ref))

    # -- references the collector does not follow (heap.weak) -----------------------------
    def _weak(self) -> weak.EmbeddingState:
        """The heap's weak tables (made, and registered as a root scanner, on first use)."""
        st = weak.state_of(self)
        if st is None:
            with self._lock:
                st = weak.attach(self, enter=self._ready, address=self._access.own, new_ref=self._access.issue)
                if st.fresh:
                    self._scanners.append(st)
        return st

    def weakref(self, ref: Ref) -> WeakRef:
        """A weak reference to ``ref``'s object: ``get()`` gives a new Ref while
        it lives, None after the collection that freed it."""
        return self._weak().weakref(ref)

    def finalize(self, ref: Ref, token) -> None:
        """Report ``token`` through ``finalized()`` once ``ref``'s object has died (once)."""
        self._weak().finalize(ref, token)

    def finalized(self) -> list:
        """The tokens of registered objects that died since the last call, in
        the order collections found them (also callable from a hook or callback:
        it makes nothing and takes no entry check)."""
        st = weak.state_of(self)
        return st.finalized() if st is not None else []

    def identity_hash(self, ref: Ref) -> int:
        """A hash of ``ref``'s object, the same for its whole life however it moves."""
        return self._weak().identity_hash(ref)
