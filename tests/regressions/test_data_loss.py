"""Issue 16, "Data loss": placements and roots that silently lost objects."""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

from heap import Heap
from tests.regressions.support import pattern

MiB = 1 << 20


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_alloc_many_on_a_thp_heap_after_an_allocation_places_huge_objects_aligned_and_keeps_them(kernel_name,
                                                                                                 compactor):
    """#1: alloc_many packed as if the current top were 2 MiB-aligned; the
    huge object was misplaced and a collection destroyed all three payloads."""
    with Heap(kernel_name, size=64 * MiB, thp=True, compactor=compactor) as h:
        first = h.alloc(100)
        first.write(pattern(0, 100))
        sizes = [3 * MiB, 70000, 70000]
        arr = h.alloc_many(sizes, 0)
        for i, n in enumerate(sizes):
            arr[i].write(pattern(i + 1, n))
        h.verify()
        for concurrent in (False, True):
            h.collect(concurrent=concurrent)
            h.verify()
            assert first.read(100) == pattern(0, 100)
            for i, n in enumerate(sizes):
                assert arr[i].read(n) == pattern(i + 1, n), f"object {i} ({n} bytes) lost"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make_copy", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_a_copied_ref_array_is_a_root_of_its_own(kernel_name, make_copy):
    """#2: the copy shared the original's root block; deleting it unrooted
    the original's objects, and the original then raised KeyError."""
    with Heap(kernel_name, size=8 * MiB) as h:
        arr = h.alloc_many(np.full(10, 32), 0)
        for i in range(10):
            arr[i].write(pattern(i, 32))
        dup = make_copy(arr)
        assert [bytes(dup[i].read(32)) for i in range(10)] == [pattern(i, 32) for i in range(10)]
        del dup
        gc.collect()
        h.alloc(4096)  # reaps dropped roots
        st = h.collect()
        assert st.live_objects >= 10, "the original's objects were freed with the copy's root"
        assert len(arr) == 10
        assert [arr[i].read(32) for i in range(10)] == [pattern(i, 32) for i in range(10)]
        h.verify()


class _Resurrector:
    """Stores its Ref somewhere reachable when it is finalized (PEP 442 resurrection)."""

    saved: list = []

    def __del__(self):
        _Resurrector.saved.append(self.ref)


@pytest.mark.timeout(60)
def test_a_ref_resurrected_by_a_finalizer_never_reaches_another_object(kernel_name):
    """#2, same class: the resurrected Ref kept a handle number the heap had
    reused, so writes through it landed in another live object."""
    with Heap(kernel_name, size=8 * MiB) as h:
        holder = _Resurrector()
        holder.ref = h.alloc(16)
        holder.ref.write(b"A" * 16)
        holder.cycle = holder
        del holder
        gc.collect()  # finalizes the holder and its Ref together; the holder resurrects the Ref
        ghost = _Resurrector.saved.pop()
        others = [h.alloc(16) for _ in range(8)]  # reap the dropped handles and reuse them
        try:
            ghost.write(b"Z" * 16)
            assert ghost.read(16) == b"Z" * 16
        except (ReferenceError, LookupError, ValueError, RuntimeError):
            pass  # refused clearly: also fine
        for o in others:
            assert o.read(16) == bytes(16), "a write through a resurrected Ref landed in another object"
        h.verify()
