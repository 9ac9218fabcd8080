"""Heap size is a reserved maximum (docs/embedding.md section 12): a heap
reserves ``size`` bytes of address space up front, but the memory it holds
(RSS) follows what is allocated and live -- it grows with allocation and
shrinks after a collection frees objects. Both backends, both compactors,
stop-the-world and concurrent."""

from __future__ import annotations

import pytest

from heap import Heap
from tests.embedding.modes import MODES

MiB = 1 << 20


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


def _ram_and_swap() -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    return (int(fields["MemTotal"].split()[0]) + int(fields["SwapTotal"].split()[0])) * 1024


@pytest.mark.timeout(300)
@pytest.mark.parametrize("compactor, concurrent", MODES, ids=["copy", "remap", "remap-concurrent"])
def test_a_heap_may_reserve_more_than_ram_and_swap(kernel_name, compactor, concurrent):
    # the size is address space, not memory: a heap twice the machine's RAM + swap opens
    # (a plain private mapping that large is refused under heuristic overcommit), holds
    # little, collects and stays whole
    size = 1 << (2 * _ram_and_swap() - 1).bit_length()
    with Heap(kernel=kernel_name, size=size, compactor=compactor) as h:
        assert h.stats().size == size and h.stats().rss < 1 * MiB
        keep = [h.alloc(64 * 1024) for _ in range(8)]
        for i, o in enumerate(keep):
            o.write(bytes([i + 1]) * 1024)
        garbage = [h.alloc(64 * 1024) for _ in range(8)]
        for o in garbage:
            o.write(b"g" * 1024)
        del garbage, o  # the loop variable roots the last one too
        st = h.collect(concurrent=concurrent)
        assert st.freed_objects == 8
        assert all(o.read(1024) == bytes([i + 1]) * 1024 for i, o in enumerate(keep))
        assert h.stats().rss < 4 * MiB
        h.verify()
