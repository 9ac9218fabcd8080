"""Pinning (heap.pinning, docs/embedding.md section 8): a pinned object keeps
its address and its bytes through 100 collections while the objects above
it move; with the remap compactors its page keeps its frame (moved out and
back, zero-copy). Both backends, both compactors, stop-the-world and
concurrent."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from heap import Heap


def plan_event(heap) -> dict:
    """What the last collection's plan phase reported."""
    return next(e for e in heap.last_events if e.get("phase") == "plan")


def fill(ref, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, ref.nbytes, dtype=np.uint8).tobytes()
    ref.write(data)
    return data


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pinned_size", [200, 3 * 4096 + 100], ids=["small", "large"])
def test_pinned_objects_keep_address_and_bytes_through_100_collections(heap, mode, pinned_size):
    _, concurrent = mode
    ps = heap.kernel.page_size
    pinned = heap.alloc(pinned_size, 1)
    data = fill(pinned, 1)
    heap.pin(pinned)
    where = pinned.address
    frame = heap.kernel.page_info(where).frame
    moved = 0
    others = []
    for round_ in range(100):
        # garbage and survivors above the pinned object: they move, it does not
        for _ in range(4):
            heap.alloc(1500)
        keep = heap.alloc(1500)
        keep.write(round_.to_bytes(8, "little"))
        others.append(keep)
        if round_ % 10 == 9:
            pinned.set_ref(0, others[-1])  # its slot still gets forwarded
        before = [o.address for o in others]
        st = heap.collect(concurrent=concurrent)
        moved += sum(o.address != b for o, b in zip(others, before))
        assert pinned.address == where
        assert plan_event(heap)["pinned_objects"] == 1
    assert pinned.read(pinned_size) == data
    assert moved > 50  # everything around it moved
    assert pinned.get_ref(0) == others[99]
    assert all(o.read(8) == i.to_bytes(8, "little") for i, o in enumerate(others))
    if heap.compactor == "remap":
        assert heap.kernel.page_info(where).frame == frame  # moved out and back: the same physical page
    heap.verify()
    del ps


@pytest.mark.timeout(120)
def test_a_pinned_object_is_a_root_until_unpinned(heap, mode):
    _, concurrent = mode
    obj = heap.alloc(64)
    heap.pin(obj)
    where = obj.address
    w = heap.weakref(obj)
    del obj
    gc.collect()
    heap.collect(concurrent=concurrent)
    assert w.alive and w.get().address == where
    heap.unpin(w.get())
    heap.collect(concurrent=concurrent)
    assert not w.alive


@pytest.mark.timeout(120)
def test_pins_nest_and_unpinning_lets_the_object_move_again(heap, mode):
    _, concurrent = mode
    for _ in range(10):
        heap.alloc(2000)
    obj = heap.alloc(64)
    heap.pin(obj)
    heap.pin(obj)
    where = obj.address
    heap.collect(concurrent=concurrent)
    heap.unpin(obj)
    heap.collect(concurrent=concurrent)
    assert obj.address == where and heap.is_pinned(obj)
    heap.unpin(obj)
    assert not heap.is_pinned(obj)
    heap.collect(concurrent=concurrent)
    assert obj.address < where  # the garbage below it is gone: it slid down
    with pytest.raises(ValueError, match="not pinned"):
        heap.unpin(obj)
    heap.verify()


@pytest.mark.timeout(120)
def test_objects_below_and_above_a_pin_move_and_its_room_comes_back_after_unpin(heap, mode):
    _, concurrent = mode
    below = [heap.alloc(3000) for _ in range(10)]
    low = below[5]
    low.write(b"low" * 1000)
    del below
    pinned = heap.alloc(100)
    pinned.write(b"p" * 100)
    heap.pin(pinned)
    above = [heap.alloc(3000) for _ in range(10)]
    high = above[7]
    high.write(b"high" * 750)
    del above
    l_where, p_where, h_where = low.address, pinned.address, high.address
    heap.collect(concurrent=concurrent)
    assert low.address < l_where  # slid down towards the arena base, below the pin
    assert pinned.address == p_where
    assert p_where < high.address < h_where  # slid down towards the pinned unit's end
    assert plan_event(heap)["pinned_pages"] == 1
    free_pinned = heap.stats().free_bytes
    heap.unpin(pinned)
    heap.collect(concurrent=concurrent)
    assert pinned.address < p_where  # unpinned: it moves like any object
    assert heap.stats().free_bytes > free_pinned  # the room the pin held is back
    assert (low.read(3000), pinned.read(100), high.read(3000)) == (b"low" * 1000, b"p" * 100, b"high" * 750)
    heap.verify()


@pytest.mark.timeout(300)
def test_pinning_with_huge_pages_keeps_the_2mib_unit_in_place(kernel_name, mode):
    compactor, concurrent = mode
    with Heap(kernel=kernel_name, size=32 << 20, compactor=compactor, thp=True) as h:
        pinned = h.alloc(100)
        pinned.write(b"p" * 100)
        h.pin(pinned)
        where = pinned.address
        others = []
        for _ in range(5):
            for _ in range(50):
                h.alloc(3000)
            others.append(h.alloc(5000))
            others[-1].write(b"k" * 8)
            h.alloc(3 << 20)  # a huge garbage object: its 2 MiB units go
            h.collect(concurrent=concurrent)
            h.verify()
            assert pinned.address == where and pinned.read(100) == b"p" * 100
            assert plan_event(h)["pinned_pages"] == 512  # one 2 MiB unit
        assert all(o.read(8) == b"k" * 8 for o in others)
