"""What a runtime does with handles and raw addresses (docs/embedding.md
sections 2, 3 and 9): Refs hash and compare by object identity across moves,
the host header word survives every collection and verify() accepts it,
alloc_raw gives an address valid until the next collection and ref_at turns
an address into a Ref. Both backends, both compactors, stop-the-world and
concurrent."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from heap import Heap, HeapCorrupted


@pytest.mark.timeout(120)
def test_refs_hash_and_compare_by_identity_across_moves(heap, mode):
    _, concurrent = mode
    objs = []
    for _ in range(20):
        heap.alloc(2000)
        objs.append(heap.alloc(8, 1))
    table = {o: i for i, o in enumerate(objs)}  # Refs as dict keys
    twins = [o.get_ref(0) for o in objs]  # None: nothing stored yet
    assert twins == [None] * 20
    for i, o in enumerate(objs):
        o.set_ref(0, objs[(i + 1) % 20])
    before = [o.address for o in objs]
    heap.collect(concurrent=concurrent)
    assert [o.address for o in objs] != before
    for i, o in enumerate(objs):
        other = objs[(i + 19) % 20].get_ref(0)  # a different handle to the same object
        assert other == o and other is not o and hash(other) == hash(o)
        assert table[other] == i
    assert objs[0] != objs[1] and len({hash(o) for o in objs}) == 20
    assert (objs[0] == "not a ref") is False


class AddressScanner:
    """A runtime's own root: addresses it keeps (as a runtime would in its stack)."""

    def __init__(self):
        self.addrs = np.zeros(0, dtype=np.int64)

    def scan_roots(self):
        return self.addrs

    def update_roots(self, forward):
        self.addrs = forward(self.addrs)


@pytest.mark.timeout(120)
def test_alloc_raw_objects_live_through_the_runtimes_own_roots(heap, mode):
    _, concurrent = mode
    roots = AddressScanner()
    heap.add_root_scanner(roots)
    addrs = []
    for i in range(30):
        heap.alloc_raw(3000, 0)  # garbage: nobody roots it
        addrs.append(heap.alloc_raw(40, 1))
    roots.addrs = np.array(addrs, dtype=np.int64)
    for i, a in enumerate(addrs):
        heap.ref_at(a).write(i.to_bytes(8, "little"))
    st = heap.collect(concurrent=concurrent)
    assert st.live_objects == 30
    assert (roots.addrs != np.array(addrs)).any()  # they moved, and the scanner was told
    for i, a in enumerate(roots.addrs.tolist()):
        r = heap.ref_at(a)
        assert r.read(8) == i.to_bytes(8, "little") and r.nbytes == 40 and r.nrefs == 1
    with pytest.raises(ValueError, match="no object"):
        heap.ref_at(int(roots.addrs[0]) + 16)
    heap.verify()


@pytest.mark.timeout(120)
def test_an_alloc_raw_object_nobody_roots_is_gone_after_the_next_collection(heap, mode):
    _, concurrent = mode
    a = heap.alloc_raw(64, 0)
    assert heap.ref_at(a).nbytes == 64
    gc.collect()
    st = heap.collect(concurrent=concurrent)
    assert st.live_objects == 0 and st.freed_objects == 1


@pytest.mark.timeout(120)
def test_the_host_word_is_kept_by_every_collection_and_accepted_by_verify(kernel_name, mode):
    compactor, concurrent = mode
    with Heap(kernel=kernel_name, size=8 << 20, compactor=compactor, host_word=True) as h:
        objs = []
        for i in range(40):
            h.alloc(1000, host=0xDEAD)  # garbage
            objs.append(h.alloc(100 + 97 * i, 2, host=(i << 56) | 0x1234 | i))
        objs[0].set_host_word(0xFFFF_FFFF_FFFF_FFFF)
        many = h.alloc_many([16, 32], 1)
        h.verify()
        for _ in range(3):
            h.collect(concurrent=concurrent)
        h.verify()
        assert objs[0].host_word == 0xFFFF_FFFF_FFFF_FFFF
        assert [o.host_word for o in objs[1:]] == [(i << 56) | 0x1234 | i for i in range(1, 40)]
        assert many[0].host_word == 0
        h.kernel.store(objs[3].address + 8, b"\0" * 8)  # the heap's own header word: still checked
        with pytest.raises(HeapCorrupted, match="headers"):
            h.verify()


def test_the_host_word_needs_a_heap_that_has_one(heap):
    with pytest.raises(ValueError, match="host_word"):
        heap.alloc(8, host=1)
    obj = heap.alloc(8)
    with pytest.raises(ValueError, match="host_word"):
        obj.host_word
