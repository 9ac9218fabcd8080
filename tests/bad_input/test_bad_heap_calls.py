"""Bad input raises a clear exception and leaves the heap intact."""

from __future__ import annotations

import pytest

from heap import Heap, HeapClosed


@pytest.fixture
def heap(kernel_name):
    with Heap(kernel=kernel_name, size=8 << 20) as h:
        yield h


def snapshot(heap, refs):
    return [(r.address, r.nbytes, r.nrefs, r.read(r.nbytes), [r.get_ref(i) for i in range(r.nrefs)])
            for r in refs]


CASES = [
    ("negative nbytes", ValueError, lambda h, a, b, other: h.alloc(-1)),
    ("negative nrefs", ValueError, lambda h, a, b, other: h.alloc(8, -2)),
    ("oversized alloc", ValueError, lambda h, a, b, other: h.alloc(64 << 20)),
    ("non-integer size", TypeError, lambda h, a, b, other: h.alloc(3.5)),
    ("slot past nrefs on set", IndexError, lambda h, a, b, other: a.set_ref(2, b)),
    ("negative slot on get", IndexError, lambda h, a, b, other: a.get_ref(-1)),
    ("slot on an object without slots", IndexError, lambda h, a, b, other: b.get_ref(0)),
    ("target not a Ref", TypeError, lambda h, a, b, other: a.set_ref(0, 1234)),
    ("target from another heap", ValueError, lambda h, a, b, other: a.set_ref(0, other)),
    ("write past the end", ValueError, lambda h, a, b, other: b.write(b"x" * 10, 95)),
    ("write at a negative offset", ValueError, lambda h, a, b, other: b.write(b"x", -1)),
    ("read past the end", ValueError, lambda h, a, b, other: b.read(2, 99)),
    ("write of a non-buffer", TypeError, lambda h, a, b, other: b.write("text")),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,error,action", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_and_leaves_heap_intact(heap, kernel_name, name, error, action):
    a = heap.alloc(32, 2)
    b = heap.alloc(100)
    b.write(bytes(range(100)))
    a.set_ref(1, b)
    before = snapshot(heap, [a, b])
    objects = heap.stats().objects
    with Heap(kernel=kernel_name, size=1 << 20) as other_heap:
        other = other_heap.alloc(8)
        with pytest.raises(error):
            action(heap, a, b, other)
    assert snapshot(heap, [a, b]) == before
    assert heap.stats().objects == objects
    heap.verify()
    heap.collect()
    assert a.get_ref(1).read(100) == bytes(range(100))


@pytest.mark.timeout(30)
def test_closed_heap_refuses_every_operation(kernel_name):
    heap = Heap(kernel=kernel_name, size=1 << 20)
    ref = heap.alloc(16, 1)
    heap.close()
    for op in (lambda: heap.alloc(8), heap.collect, heap.verify, heap.stats,
               lambda: ref.read(1), lambda: ref.set_ref(0, None), lambda: ref.address):
        with pytest.raises(HeapClosed):
            op()
    heap.close()  # closing twice is harmless


def test_unknown_compactor_is_refused(kernel_name):
    with pytest.raises(ValueError, match="compactor"):
        Heap(kernel=kernel_name, size=1 << 20, compactor="mark-sweep")
