"""Heap size is a reserved maximum (docs/embedding.md section 12): a heap
reserves ``size`` bytes of address space up front, but the memory it holds
(RSS) follows what is allocated and live -- it grows with allocation and
shrinks after a collection frees objects. Both backends, both compactors,
stop-the-world and concurrent."""

from __future__ import annotations

import pytest

from heap import Heap

MiB = 1 << 20
MODES = [("copy", False), ("remap", False), ("remap", True)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("compactor, concurrent", MODES, ids=["copy", "remap", "remap-concurrent"])
def test_memory_grows_with_use_and_shrinks_after_collection_within_the_reserved_size(kernel_name, compactor,
                                                                                      concurrent):
    with Heap(kernel=kernel_name, size=256 * MiB, compactor=compactor) as h:
        empty = h.stats()
        assert empty.size == 256 * MiB and empty.rss < 1 * MiB  # reserved, not committed
        objs = [h.alloc(64 * 1024) for _ in range(256)]  # 16 MiB
        for i, o in enumerate(objs):
            o.write(bytes([i % 251 + 1]) * (64 * 1024))
        full = h.stats()
        assert full.rss >= 16 * MiB
        keep = objs[::8]  # an eighth survives
        del objs
        h.collect(concurrent=concurrent)
        after = h.stats()
        assert after.rss <= full.rss / 4  # the freed objects' memory went back to the system
        assert after.live_bytes < full.live_bytes / 4
        assert all(o.read(8) == bytes([(8 * i) % 251 + 1]) * 8 for i, o in enumerate(keep))
        more = [h.alloc(64 * 1024) for _ in range(128)]  # and it grows again on demand
        for o in more:
            o.write(b"x" * (64 * 1024))
        assert h.stats().rss >= after.rss + 7 * MiB
        h.verify()
