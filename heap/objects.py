"""The object model: how an object lies in the arena. This is the ONE place
that says it; every other module asks a model object.

Default layout (``DefaultObjectModel``), every object 16-byte aligned::

    +0              u64  nbytes          payload size in bytes
    +8              u32  nrefs           number of reference slots
    +12             u16  flags           bit 0: LARGE (owns whole pages)
    +14             u16  magic           0x6d52 ("Rm"), so a walker can check it
    +16             u64  slot[0..nrefs)  raw addresses of referenced objects, 0 = None
    +16 + 8*nrefs   payload (nbytes bytes)
    total = round_up(16 + 8*nrefs + nbytes, 16)

A slot holds 0 (None), a reference -- the address of the referenced
object's header (its start) -- or an *immediate*: a word with its low bit
set, which no reference has (objects are 16-byte aligned) and which the
collector never follows and never changes (``Ref.set_immediate`` stores a
63-bit integer ``n`` as ``n << 1 | 1``; docs/embedding.md). Placement rules (the allocator and both
compactors follow them, so a page can always move whole):

* a *small* object (total < page size) never crosses a page boundary;
* a *large* object (total >= page size) starts on a page boundary and owns
  every page it touches;
* with THP, an object of total >= 2 MiB (*huge*) starts on a 2 MiB boundary
  and owns whole 2 MiB units, so it moves PMD by PMD; a large object smaller
  than that never crosses a 2 MiB boundary, so every 2 MiB unit of the arena
  can move whole as one PMD (the THP compactor's unit, as the page is
  without THP).

Runtimes that bring their own layout implement ``ObjectModel``; runtimes that
hold references outside the heap's handles implement ``RootScanner`` (in the
spirit of MMTk's ObjectModel and Scanning traits). Everything is vectorised:
one call per phase for all objects, never one per object.
"""

from __future__ import annotations

import sys

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .native import expand

ALIGN = 16
HEADER_BYTES = 16
HOST_WORD_BYTES = 8  # DefaultObjectModel(host_word=True): the host's header word, after the heap's
SLOT_BYTES = 8
MAGIC = 0x6D52
FLAG_LARGE = 1


@runtime_checkable
class ObjectModel(Protocol):
    """Where an object's header, reference slots and payload lie."""

    header_bytes: int  # multiple of 8
    alignment: int  # every object start is a multiple of it

    def total_bytes(self, nbytes: np.ndarray, nrefs: np.ndarray) -> np.ndarray:
        """Bytes each object occupies (header, slots, payload, padding)."""

    def payload_offset(self, nrefs: int) -> int:
        """Offset of the payload from the object start."""

    def slot_addresses(self, starts: np.ndarray, nrefs: np.ndarray) -> np.ndarray:
        """The address of every reference slot, object after object (object i
        contributes nrefs[i] consecutive entries)."""

    def header_words(self, nbytes: np.ndarray, nrefs: np.ndarray, large: np.ndarray) -> np.ndarray:
        """The header of each object as u64 words, shape (n, header_bytes // 8)."""

    # Optional scalar paths, used when the model has them (one object costs
    # plain arithmetic instead of array calls):
    # ``slot_offset(nrefs, slot) -> int``, the offset of one slot from the
    # object start (Ref.get_ref/set_ref); ``object_bytes(nbytes, nrefs) -> int``
    # and ``header(nbytes, nrefs, large) -> bytes``, one object's
    # ``total_bytes`` and header (Heap.alloc).


@runtime_checkable
class RootScanner(Protocol):
    """References a runtime holds outside the heap (its stacks, globals...).

    ``scan_roots`` returns the object addresses it holds (0 entries are
    ignored); once a compaction has planned the new addresses, before any
    object moves, the heap calls ``update_roots`` once with ``forward``, which
    maps an array of old addresses to new ones (0 -> 0), and the scanner
    rewrites what it holds: all of it, or raise before rewriting anything.
    If it raises, the collection stops with that exception and nothing moves
    (scanners already updated get their old addresses back). Both run with a
    collection in progress on the calling thread: a heap call from inside
    them is refused (``heap.hooks.HookReentry``).
    """

    def scan_roots(self) -> np.ndarray: ...

    def update_roots(self, forward: Callable[[np.ndarray], np.ndarray]) -> None: ...


class DefaultObjectModel:
    """The layout documented at the top of this module. ``host_word=True``:
    one more header word at +16, owned by the host (a type tag, a class
    pointer...), slots from +24; the heap never reads or changes it (every
    collection carries it with the object, ``verify()`` does not check it),
    ``Heap.alloc(..., host=)`` and ``Ref.host_word`` write and read it."""

    header_bytes = HEADER_BYTES
    alignment = ALIGN
    host_words = 0  # trailing header words the host owns (verify() leaves them alone)
    host_word_offset = None  # where the host's word lies in the header, if any

    def __init__(self, *, host_word: bool = False):
        if host_word:
            self.header_bytes = HEADER_BYTES + HOST_WORD_BYTES
            self.host_words = 1
            self.host_word_offset = HEADER_BYTES

    def total_bytes(self, nbytes, nrefs):
        raw = (self.header_bytes + SLOT_BYTES * np.asarray(nrefs, dtype=np.int64)
               + np.asarray(nbytes, dtype=np.int64))
        return (raw + (ALIGN - 1)) & ~np.int64(ALIGN - 1)

    def payload_offset(self, nrefs: int) -> int:
        return self.header_bytes + SLOT_BYTES * int(nrefs)

    def slot_offset(self, nrefs: int, slot: int) -> int:
        """Offset of one reference slot from the object start (the scalar path of Ref accesses)."""
        return self.header_bytes + SLOT_BYTES * slot

    def object_bytes(self, nbytes: int, nrefs: int) -> int:
        """``total_bytes`` of one object (the scalar path of Heap.alloc)."""
        return (self.header_bytes + SLOT_BYTES * nrefs + nbytes + ALIGN - 1) & ~(ALIGN - 1)

    def header(self, nbytes: int, nrefs: int, large: bool, host: int = 0) -> bytes:
        """``header_words`` of one object, as the bytes to store (the scalar path of
        Heap.alloc); ``host``: the host's word, when the model has one."""
        word1 = nrefs | (FLAG_LARGE if large else 0) << 32 | MAGIC << 48
        head = nbytes.to_bytes(8, sys.byteorder) + word1.to_bytes(8, sys.byteorder)
        return head + host.to_bytes(8, sys.byteorder) if self.host_words else head

    def slot_addresses(self, starts, nrefs):
        return expand(np.asarray(starts, dtype=np.int64) + self.header_bytes, nrefs, SLOT_BYTES)

    def header_words(self, nbytes, nrefs, large):
        nbytes = np.asarray(nbytes, dtype=np.int64)
        word1 = (np.asarray(nrefs, dtype=np.uint64)
                 | (np.where(np.asarray(large, dtype=bool), FLAG_LARGE, 0).astype(np.uint64) << np.uint64(32))
                 | (np.uint64(MAGIC) << np.uint64(48)))
        words = [nbytes.astype(np.uint64), word1] + [np.zeros_like(word1)] * self.host_words
        return np.stack(words, axis=-1)


DEFAULT_MODEL = DefaultObjectModel()
