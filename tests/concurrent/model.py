"""A shadow model of a heap's objects, kept in Python, that mutator threads
update as they write, and check on every read.

Every payload starts with the object's id (8 bytes, never rewritten) and ends
with a CRC32 of what lies between, so a read shows by itself whether it got a
whole, uncorrupted object (a checksum on every read) and which object it is.
"""

from __future__ import annotations

import random
import threading
import zlib
from dataclasses import dataclass, field

ID_BYTES = 8
CRC_BYTES = 4


def payload(oid: int, body: bytes) -> bytes:
    head = oid.to_bytes(ID_BYTES, "little") + body
    return head + zlib.crc32(head).to_bytes(CRC_BYTES, "little")


def check(data: bytes) -> int:
    """The id a payload names; AssertionError if its checksum is wrong."""
    head, crc = data[:-CRC_BYTES], data[-CRC_BYTES:]
    assert zlib.crc32(head).to_bytes(CRC_BYTES, "little") == crc, f"checksum mismatch in {data[:16].hex()}..."
    return int.from_bytes(head[:ID_BYTES], "little")


@dataclass
class Shadow:
    """One object as the model knows it."""

    oid: int
    ref: object  # the heap's Ref (a root)
    size: int  # payload bytes
    body: bytes  # what lies between the id and the checksum
    refs: list  # oid (or None) held by each slot
    lock: threading.Lock = field(default_factory=threading.Lock)


class Model:
    """Objects of one heap, with a lock per object (mutators of one object
    take turns; the heap itself sees any interleaving across objects)."""

    def __init__(self, heap, seed: int = 0):
        self.heap = heap
        self.objects: list[Shadow] = []
        self._grow = threading.Lock()
        self._rnd = random.Random(seed)

    def new(self, size: int, nrefs: int, rnd: random.Random | None = None) -> Shadow:
        rnd = rnd or self._rnd
        ref = self.heap.alloc(size, nrefs)
        with self._grow:
            oid = len(self.objects)
            obj = Shadow(oid, ref, size, b"", [None] * nrefs)
            self._fill(obj, rnd)
            self.objects.append(obj)
        return obj

    def _fill(self, obj: Shadow, rnd: random.Random) -> None:
        body = rnd.randbytes(obj.size - ID_BYTES - CRC_BYTES)
        obj.ref.write(payload(obj.oid, body))
        obj.body = body

    # -- mutator steps (each checks what it reads) ---------------------------------------------
    def read(self, obj: Shadow) -> None:
        with obj.lock:
            data = obj.ref.read(obj.size)
            assert check(data) == obj.oid, f"object {obj.oid} reads as another object"
            assert data[ID_BYTES:-CRC_BYTES] == obj.body, f"object {obj.oid}: payload differs from the model"

    def write(self, obj: Shadow, rnd: random.Random) -> None:
        with obj.lock:
            self._fill(obj, rnd)

    def link(self, obj: Shadow, rnd: random.Random) -> None:
        if not obj.refs:
            return
        with obj.lock:
            slot = rnd.randrange(len(obj.refs))
            target = rnd.choice(self.objects) if rnd.random() < 0.9 else None
            obj.ref.set_ref(slot, None if target is None else target.ref)
            obj.refs[slot] = None if target is None else target.oid

    def follow(self, obj: Shadow, rnd: random.Random) -> None:
        if not obj.refs:
            return
        with obj.lock:
            slot = rnd.randrange(len(obj.refs))
            got = obj.ref.get_ref(slot)
            want = obj.refs[slot]
        if want is None:
            assert got is None, f"object {obj.oid} slot {slot}: expected None"
            return
        target = self.objects[want]
        with target.lock:  # another mutator may be rewriting the target's payload
            data = got.read(target.size)
        assert check(data) == want, f"object {obj.oid} slot {slot} leads elsewhere"

    def step(self, rnd: random.Random) -> None:
        obj = rnd.choice(self.objects)
        r = rnd.random()
        if r < 0.55:
            self.read(obj)
        elif r < 0.75:
            self.write(obj, rnd)
        elif r < 0.88:
            self.link(obj, rnd)
        else:
            self.follow(obj, rnd)

    # -- the end -------------------------------------------------------------------------------
    def check_all(self) -> None:
        """Every object's contents and every slot's target match the model."""
        for obj in self.objects:
            self.read(obj)
            for slot, want in enumerate(obj.refs):
                got = obj.ref.get_ref(slot)
                if want is None:
                    assert got is None
                else:
                    assert got.address == self.objects[want].ref.address, f"object {obj.oid} slot {slot}"


def populate(model: Model, n: int, rnd: random.Random, *, large_every: int = 10) -> None:
    """n objects, mostly small (a few large ones that own pages), linked at random."""
    for i in range(n):
        size = rnd.randrange(6000, 20000) if i % large_every == 0 else rnd.randrange(16, 300)
        model.new(size, rnd.randrange(0, 4), rnd)
    for obj in model.objects:
        for _ in obj.refs:
            model.link(obj, rnd)


def garbage(heap, rnd: random.Random, n: int) -> None:
    """Objects that die at once: holes between the live ones (sparse pages to evacuate)."""
    for _ in range(n):
        heap.alloc(rnd.randrange(16, 400), rnd.randrange(0, 2))
