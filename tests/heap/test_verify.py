"""verify() names the first broken invariant."""

from __future__ import annotations

import pytest

from heap import Heap, HeapCorrupted


def build(heap):
    a = heap.alloc(40, 2)
    b = heap.alloc(5000, 1)
    a.set_ref(0, b)
    b.set_ref(0, a)
    c = heap.alloc(8)  # opens a small page whose rest is free
    heap.verify()
    return a, b, c


CORRUPTIONS = [
    ("headers", lambda k, a, b, c: k.store(a.address, (999).to_bytes(8, "little"))),
    ("reference targets", lambda k, a, b, c: k.store(a.address + 16, (b.address + 8).to_bytes(8, "little"))),
    ("free space", lambda k, a, b, c: k.store(c.address + 64, b"junk")),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("invariant,corrupt", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_verify_reports_the_broken_invariant(kernel_name, invariant, corrupt):
    with Heap(kernel=kernel_name, size=4 << 20) as heap:
        a, b, c = build(heap)
        corrupt(heap.kernel, a, b, c)
        with pytest.raises(HeapCorrupted) as info:
            heap.verify()
        assert info.value.invariant == invariant


@pytest.mark.timeout(30)
def test_collector_refuses_a_dangling_reference(kernel_name):
    with Heap(kernel=kernel_name, size=4 << 20) as heap:
        a, b, _ = build(heap)
        heap.kernel.store(b.address + 16, (a.address + 16).to_bytes(8, "little"))
        with pytest.raises(HeapCorrupted, match="reference slot"):
            heap.collect()
