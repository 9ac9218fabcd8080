"""Collection returns memory: RSS after is close to the live bytes."""

from __future__ import annotations

import random

import pytest

from heap import Heap

MiB = 1 << 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_rss_follows_live_bytes_after_dropping_seventy_percent(kernel_name, compactor):
    rng = random.Random(f"rss-{kernel_name}")
    with Heap(kernel=kernel_name, size=128 * MiB, compactor=compactor) as heap:
        refs = []
        for _ in range(600):
            n = rng.choice((24, 80, 200, 700, 3000)) if rng.random() < 0.9 else rng.randrange(8 << 10, 2 * MiB)
            r = heap.alloc(n, rng.choice((0, 1, 2)))
            r.write(b"\xa5" * n)  # every page resident
            refs.append(r)
        for i in range(1, len(refs)):
            if refs[i].nrefs and rng.random() < 0.3:
                refs[i].set_ref(0, refs[rng.randrange(i)])
        rss_full = heap.stats().rss
        rng.shuffle(refs)
        del refs[: int(len(refs) * 0.7)]
        stats = heap.collect()
        assert stats.rss_before >= rss_full
        assert stats.rss_after <= stats.live_bytes * 1.15 + MiB, (stats.rss_after, stats.live_bytes)
        assert stats.rss_after < stats.rss_before / 2
        heap.verify()
