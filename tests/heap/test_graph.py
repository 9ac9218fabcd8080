"""A random object graph survives many collections with random mutation in between.

A Python mirror keeps what the heap must hold: for every object its size,
its references (by id) and its payload bytes. The first 8 payload bytes of
every object hold its id, so a walk through the heap can name what it finds.
After each collection the heap is walked from every root and compared with
the mirror: same objects reachable, same references, same bytes, and the
collector's live count equals the mirror's reachable count.
"""

from __future__ import annotations

import random
import zlib

import pytest

from heap import Heap

SMALL = (16, 24, 40, 64, 100, 200, 512, 1000, 2000, 3500)
LARGE = (5000, 20_000, 100_000, 1 << 20, (2 << 20) + 100, 4 << 20)


class Mirror:
    def __init__(self, heap: Heap, rng: random.Random):
        self.heap = heap
        self.rng = rng
        self.next_id = 1
        self.nbytes: dict[int, int] = {}
        self.refs: dict[int, list[int | None]] = {}
        self.data: dict[int, bytearray] = {}
        self.roots: list[tuple[int, object]] = []  # (id, Ref)

    # -- building --------------------------------------------------------------------
    def new_object(self) -> tuple[int, object]:
        rng = self.rng
        nbytes = rng.choice(LARGE) if rng.random() < 0.04 else rng.choice(SMALL)
        nrefs = rng.choice((0, 1, 2, 3, 5))
        oid = self.next_id
        self.next_id += 1
        ref = self.heap.alloc(nbytes, nrefs)
        data = bytearray(nbytes)
        data[:8] = oid.to_bytes(8, "little")
        stamp = rng.randbytes(min(64, nbytes - 8)) if nbytes > 8 else b""
        data[8:8 + len(stamp)] = stamp
        tail = rng.randbytes(min(32, nbytes - 8))  # never over the id
        data[nbytes - len(tail):] = tail
        ref.write(bytes(data[:8 + len(stamp)]), 0)
        ref.write(tail, nbytes - len(tail))
        self.nbytes[oid] = nbytes
        self.refs[oid] = [None] * nrefs
        self.data[oid] = data
        return oid, ref

    def mutate(self, steps: int) -> None:
        rng = self.rng
        for _ in range(steps):
            action = rng.random()
            if action < 0.35 or len(self.roots) < 4:
                self.roots.append(self.new_object())
            elif action < 0.55:
                self.roots.pop(rng.randrange(len(self.roots)))
            elif action < 0.85:
                self.link()
            else:
                self.scribble()

    def link(self) -> None:
        """Point a slot of some reachable object at another one (or None)."""
        rng = self.rng
        src_id, src = rng.choice(self.roots)
        # walk a few steps from a root, through the heap, to reach interior objects
        for _ in range(rng.randrange(3)):
            nxt = [i for i, t in enumerate(self.refs[src_id]) if t is not None]
            if not nxt:
                break
            k = rng.choice(nxt)
            src_id, src = self.refs[src_id][k], src.get_ref(k)
        if not self.refs[src_id]:
            return
        slot = rng.randrange(len(self.refs[src_id]))
        if rng.random() < 0.15:
            src.set_ref(slot, None)
            self.refs[src_id][slot] = None
            return
        dst_id, dst = rng.choice(self.roots)  # may be src itself: cycles
        src.set_ref(slot, dst)
        self.refs[src_id][slot] = dst_id

    def scribble(self) -> None:
        oid, ref = self.rng.choice(self.roots)
        n = self.nbytes[oid]
        if n <= 8:
            return
        off = self.rng.randrange(8, n)
        chunk = self.rng.randbytes(min(48, n - off))
        ref.write(chunk, off)
        self.data[oid][off:off + len(chunk)] = chunk

    # -- checking --------------------------------------------------------------------
    def reachable(self) -> set[int]:
        seen: set[int] = set()
        todo = [oid for oid, _ in self.roots]
        while todo:
            oid = todo.pop()
            if oid in seen:
                continue
            seen.add(oid)
            todo.extend(t for t in self.refs[oid] if t is not None)
        return seen

    def forget_unreachable(self) -> int:
        live = self.reachable()
        for oid in list(self.nbytes):
            if oid not in live:
                del self.nbytes[oid], self.refs[oid], self.data[oid]
        return len(live)

    def check_heap(self) -> None:
        """Walk the heap from the roots and compare everything with the mirror."""
        seen: set[int] = set()
        todo = list(self.roots)
        while todo:
            oid, ref = todo.pop()
            found = int.from_bytes(ref.read(8, 0), "little")
            assert found == oid, f"expected object {oid}, found {found} at 0x{ref.address:x}"
            if oid in seen:
                continue
            seen.add(oid)
            assert ref.nbytes == self.nbytes[oid] and ref.nrefs == len(self.refs[oid])
            body = ref.read(self.nbytes[oid], 0)
            assert zlib.crc32(body) == zlib.crc32(self.data[oid]), f"payload of object {oid} changed"
            for slot, target in enumerate(self.refs[oid]):
                got = ref.get_ref(slot)
                assert (got is None) == (target is None), f"slot {slot} of object {oid}"
                if target is not None:
                    todo.append((target, got))
        assert seen == self.reachable()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_random_graph_survives_twenty_collections(kernel_name, compactor):
    rng = random.Random(f"graph-{kernel_name}-{compactor}")
    with Heap(kernel=kernel_name, size=96 << 20, compactor=compactor) as heap:
        mirror = Mirror(heap, rng)
        mirror.mutate(400)
        for cycle in range(20):
            expected_live = mirror.forget_unreachable()
            stats = heap.collect()
            assert stats.live_objects == expected_live, f"cycle {cycle}"
            heap.verify()
            mirror.check_heap()
            mirror.mutate(150)
        assert heap.collections == 20


@pytest.mark.timeout(60)
def test_objects_move_and_stay_intact_with_thp(kernel_name):
    rng = random.Random("thp")
    with Heap(kernel=kernel_name, size=64 << 20, thp=True) as heap:
        mirror = Mirror(heap, rng)
        mirror.mutate(80)
        for _ in range(3):
            expected_live = mirror.forget_unreachable()
            assert heap.collect().live_objects == expected_live
            heap.verify()
            mirror.check_heap()
            mirror.mutate(30)
