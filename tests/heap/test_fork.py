"""A forked child shares the heap's pages: MOVE says EBUSY, the heap copies those pages."""

from __future__ import annotations

import random

import pytest

from heap import Heap


@pytest.mark.timeout(60)
def test_collection_with_a_forked_child_falls_back_to_copying_shared_pages(kernel_name):
    rng = random.Random("fork")
    with Heap(kernel=kernel_name, size=32 << 20, compactor="remap") as heap:
        refs = [heap.alloc(rng.choice((100, 3000, 20_000, 200_000)), 1) for _ in range(60)]
        for i, r in enumerate(refs):
            r.write(i.to_bytes(4, "little") * (r.nbytes // 4))
            if i:
                r.set_ref(0, refs[i - 1])
        keep = refs[-1]
        survivors = {id(r): i for i, r in enumerate(refs) if i % 3 == 0}
        kept = [r for r in refs if id(r) in survivors]
        del refs
        child = heap.kernel.fork()
        try:
            stats = heap.collect()
        finally:
            child.exit()
        assert stats.ebusy_fallbacks > 0
        assert stats.bytes_copied >= stats.ebusy_fallbacks * heap.kernel.page_size
        assert stats.live_objects == 60  # the chain from `keep` holds all of them
        heap.verify()
        node, i = keep, 59
        while node is not None:
            assert node.read(node.nbytes) == i.to_bytes(4, "little") * (node.nbytes // 4)
            node, i = node.get_ref(0), i - 1
        assert i == -1
        assert len(kept) == 20
