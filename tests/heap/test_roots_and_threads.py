"""Roots held by a runtime's scanner and by RefArrays; many threads at once."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from heap import Heap


class StackScanner:
    """A toy runtime stack: raw object addresses the heap does not know about."""

    def __init__(self):
        self.slots = np.zeros(0, dtype=np.int64)
        self.updates = 0

    def scan_roots(self):
        return self.slots

    def update_roots(self, forward):
        self.slots = forward(self.slots)
        self.updates += 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_root_scanner_keeps_objects_and_sees_them_move(kernel_name, compactor):
    stack = StackScanner()
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor, root_scanners=[stack]) as heap:
        garbage = [heap.alloc(300) for _ in range(50)]
        held = []
        for i in range(20):
            r = heap.alloc(100 + i, 1)
            r.write(f"obj{i:03d}".encode())
            held.append(r.address)
            garbage.append(heap.alloc(500))
        stack.slots = np.array(held + [0], dtype=np.int64)  # a None slot too
        del garbage, r
        stats = heap.collect()
        assert stats.live_objects == 20 and stack.updates == 1
        assert stack.slots[-1] == 0
        assert (stack.slots[:-1] < np.array(held)).all(), "the survivors should have moved down"
        for i, addr in enumerate(stack.slots[:-1]):
            payload = heap.kernel.load(int(addr) + heap.object_model.payload_offset(1), 6)
            assert payload == f"obj{i:03d}".encode()
        heap.verify()
        heap.remove_root_scanner(stack)
        assert heap.collect().live_objects == 0


@pytest.mark.timeout(60)
def test_ref_array_roots_its_objects_until_dropped(kernel_name):
    with Heap(kernel=kernel_name, size=16 << 20) as heap:
        arr = heap.alloc_many(np.arange(100) * 8 + 8, 1)
        assert len(arr) == 100
        arr.set_refs(0, np.arange(99), arr, np.arange(1, 100))  # a chain through the array
        arr[50].write(b"middle")
        head = arr[0]
        assert heap.collect().live_objects == 100
        del arr
        stats = heap.collect()
        assert stats.live_objects == 100  # still reachable from head
        node = head
        for _ in range(50):
            node = node.get_ref(0)
        assert node.read(6) == b"middle" and node.nbytes == 50 * 8 + 8
        del head, node
        assert heap.collect().live_objects == 0


@pytest.mark.timeout(60)
def test_ref_array_rejects_bad_indices(kernel_name):
    with Heap(kernel=kernel_name, size=4 << 20) as heap:
        arr = heap.alloc_many([8, 8], [1, 0])
        with pytest.raises(IndexError):
            arr[2]
        with pytest.raises(IndexError):
            arr.set_refs(0, [1], arr, [0])  # object 1 has no slot
        with pytest.raises(IndexError):
            arr.set_refs(0, [0], arr, [5])
        with pytest.raises(ValueError):
            heap.alloc_many([-1], [0])
        heap.verify()


@pytest.mark.timeout(120)
def test_mutator_threads_and_collections_interleave(kernel_name):
    with Heap(kernel=kernel_name, size=64 << 20) as heap:
        errors = []
        stop = threading.Event()

        def mutator(seed):
            rng = random.Random(seed)
            mine = []
            try:
                for step in range(300):
                    r = heap.alloc(rng.choice((16, 64, 400, 5000)), 1)
                    r.write(seed.to_bytes(2, "little") + step.to_bytes(4, "little"))
                    if mine:
                        r.set_ref(0, mine[-1][0])
                    mine.append((r, step))
                    if len(mine) > 40:
                        mine.pop(rng.randrange(len(mine) - 1))
                for r, step in mine:
                    assert r.read(6) == seed.to_bytes(2, "little") + step.to_bytes(4, "little")
            except Exception as exc:  # reported below
                errors.append(exc)

        def collector():
            while not stop.is_set():
                heap.collect()

        threads = [threading.Thread(target=mutator, args=(s,)) for s in range(3)]
        gc_thread = threading.Thread(target=collector)
        gc_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        gc_thread.join()
        assert not errors, errors
        assert heap.collections > 0
        heap.verify()
