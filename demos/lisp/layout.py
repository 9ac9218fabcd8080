"""How Lisp values are laid out as heap objects.

A Lisp value is one of three things, as in a real runtime:

* a *fixnum*: a Python ``int``, stored in a reference slot as a tagged
  immediate (``Ref.set_slot``: a word with its low bit set, which the
  collector never follows); no heap object, no allocation;
* the empty list (also "false"): ``None``, which is exactly what an empty
  reference slot reads as;
* anything else: a heap object reached through a ``Ref``. The first payload
  byte of every object is its type tag; every object has at least 8 payload
  bytes, so ``read(8)`` always fetches the tag and, for closures and
  builtins, the code number too.

    tag       payload (little endian)                  reference slots
    FIXNUM    (an immediate: no object)                —
    CONS      tag                                      car, cdr
    SYMBOL    tag, 3 pad, u32 length, utf-8 name       —
    STRING    tag, 3 pad, u32 length, utf-8 text       —
    CLOSURE   tag, 3 pad, u32 code number              defining environment
    BUILTIN   tag, 3 pad, u32 builtin number           —
    FRAME     tag                                      parent frame, then one per variable
    TABLE     tag                                      one per entry (the globals)
    PORT      tag, 3 pad, u32 port number              —

A PORT stands for a resource outside the heap (an output buffer in Python,
as a file descriptor would be): the interpreter registers it for
finalization, and closes the resource once a collection found the PORT dead
(``Heap.finalize`` / ``Heap.finalized``, docs/embedding.md).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Callable


class Tag(IntEnum):
    FIXNUM = 1
    CONS = 2
    SYMBOL = 3
    STRING = 4
    CLOSURE = 5
    BUILTIN = 6
    FRAME = 7
    TABLE = 8
    PORT = 9


WORD = struct.Struct("<BxxxI")  # tag, u32
HEADER_BYTES = 8
FIXNUM_LIMIT = 1 << 62  # a fixnum is a 63-bit signed integer (the heap's immediates)


class LispOverflow(ArithmeticError):
    """A result too large for a fixnum (this Lisp has no bignums)."""


class LispMemory:
    """Allocates and reads Lisp values in a remapgc Heap.

    Every argument that is a ``Ref`` is a root while the call runs, so an
    allocation here may collect (and move everything) without harm.
    """

    def __init__(self, heap, *, observe: Callable[[int], None] | None = None, observe_every: int = 1000):
        self.heap = heap
        self.allocations = 0
        self.observe = observe  # called with the allocation count every ``observe_every`` allocations
        self.observe_every = observe_every

    def _counted(self) -> None:
        self.allocations += 1
        if self.observe is not None and self.allocations % self.observe_every == 0:
            self.observe(self.allocations)

    def _new(self, tag: Tag, nbytes: int, nrefs: int = 0, word: int = 0):
        self._counted()
        obj = self.heap.alloc(nbytes=nbytes, nrefs=nrefs)
        obj.write(WORD.pack(tag, word))
        return obj

    # -- constructors -----------------------------------------------------------
    @staticmethod
    def fixnum(value: int) -> int:
        """A fixnum is its integer: stored in slots as an immediate, never allocated."""
        if not -FIXNUM_LIMIT <= value < FIXNUM_LIMIT:
            raise LispOverflow(f"{value} does not fit a 63-bit fixnum")
        return value

    def cons(self, car, cdr):
        obj = self._new(Tag.CONS, HEADER_BYTES, nrefs=2)
        obj.set_slot(0, car)
        obj.set_slot(1, cdr)
        return obj

    def _text(self, tag: Tag, text: str):
        data = text.encode()
        obj = self._new(tag, HEADER_BYTES + max(len(data), 1), word=len(data))
        if data:
            obj.write(data, offset=HEADER_BYTES)
        return obj

    def symbol(self, name: str):
        return self._text(Tag.SYMBOL, name)

    def string(self, text: str):
        return self._text(Tag.STRING, text)

    def closure(self, code_number: int, env):
        obj = self._new(Tag.CLOSURE, HEADER_BYTES, nrefs=1, word=code_number)
        obj.set_ref(0, env)
        return obj

    def builtin(self, number: int):
        return self._new(Tag.BUILTIN, HEADER_BYTES, word=number)

    def frame(self, parent, values: list):
        obj = self._new(Tag.FRAME, HEADER_BYTES, nrefs=1 + len(values))
        obj.set_ref(0, parent)
        for slot, value in enumerate(values, start=1):
            obj.set_slot(slot, value)
        return obj

    def table(self, capacity: int):
        return self._new(Tag.TABLE, HEADER_BYTES, nrefs=capacity)

    def port(self, number: int):
        return self._new(Tag.PORT, HEADER_BYTES, word=number)

    # -- readers ----------------------------------------------------------------
    @staticmethod
    def tag(value) -> Tag | None:
        if value is None:
            return None
        return Tag.FIXNUM if type(value) is int else Tag(value.read(1)[0])

    @staticmethod
    def tag_and_word(value) -> tuple[int, int]:
        return (Tag.FIXNUM, 0) if type(value) is int else WORD.unpack(value.read(HEADER_BYTES))

    @staticmethod
    def fixnum_value(value) -> int | None:
        """The integer a value holds, or None when it is not a number."""
        return value if type(value) is int else None

    @staticmethod
    def text(value) -> str:
        """The name of a symbol or the contents of a string."""
        _, length = WORD.unpack(value.read(HEADER_BYTES))
        return value.read(length, offset=HEADER_BYTES).decode() if length else ""
