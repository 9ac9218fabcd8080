"""Allocation: growth, collecting when full, HeapFull, and what a new object reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.heap.logs import capture_events

from heap import DEFAULT_MODEL, GCStats, Heap, HeapFull

MiB = 1 << 20


@pytest.mark.timeout(60)
def test_new_objects_read_zero_and_none(kernel_name):
    with Heap(kernel=kernel_name, size=8 * MiB) as heap:
        for n, k in ((0, 0), (40, 3), (3000, 1), (70_000, 2)):
            r = heap.alloc(n, k)
            assert r.read(n) == bytes(n) and all(r.get_ref(i) is None for i in range(k))
            r.write(b"\xff" * n)
        heap.collect()  # after a compaction the free space must read zero again
        r = heap.alloc(200, 2)
        assert r.read(200) == bytes(200) and r.get_ref(1) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_alloc_collects_by_itself_when_full(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=4 * MiB, compactor=compactor) as heap:
        keep = heap.alloc(1000)
        keep.write(b"kept")
        for _ in range(200):  # 200 x 64 KiB of garbage through a 4 MiB heap
            heap.alloc(64 << 10)
        assert heap.collections >= 2
        assert keep.read(4) == b"kept"
        heap.verify()


@pytest.mark.timeout(60)
def test_heap_full_when_live_data_does_not_fit(kernel_name):
    with Heap(kernel=kernel_name, size=2 * MiB) as heap:
        live = []
        with pytest.raises(HeapFull):
            for i in range(100):
                r = heap.alloc(100 << 10)
                r.write(i.to_bytes(4, "little"))
                live.append(r)
        assert 10 <= len(live) < 21
        for i, r in enumerate(live):
            assert r.read(4) == i.to_bytes(4, "little")
        heap.verify()
        del r
        live.pop()  # room for one again
        heap.alloc(100 << 10)


@pytest.mark.timeout(60)
def test_collect_every_triggers_collections(kernel_name):
    with Heap(kernel=kernel_name, size=16 * MiB, collect_every=256 << 10) as heap:
        total = int(heap.object_model.total_bytes(16 << 10, 0))
        for _ in range(64):
            heap.alloc(16 << 10)
        per_cycle = (256 << 10) // total  # allocations that fit under the trigger
        assert heap.collections == (64 - 1) // per_cycle


@pytest.mark.timeout(60)
def test_stats_and_one_event_per_phase(kernel_name):
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        a = heap.alloc(100, 1)
        a.set_ref(0, heap.alloc(200))
        heap.alloc(5000)
        before = heap.stats()
        assert before.objects == 3 and before.free_bytes < heap.size
        with capture_events() as logs:
            stats = heap.collect()
        assert isinstance(stats, GCStats)
        assert stats.live_objects == 2 and stats.freed_objects == 1
        assert stats.live_bytes == heap.stats().live_bytes
        assert 0 < stats.pause_ns <= stats.total_ns
        phases = [e["phase"] for e in logs if e["event"].startswith("gc_") and "phase" in e]
        for phase in ("mark", "plan", "flip", "install", "release"):
            assert phases.count(phase) == 1, phases
        assert set(GCStats.__dataclass_fields__) == {
            "live_objects", "live_bytes", "freed_objects", "pages_moved", "bytes_moved_zero_copy",
            "bytes_copied", "eagain_retries", "partial_moves", "eexist_races", "ebusy_fallbacks",
            "faults_served", "pause_ns", "total_ns", "rss_before", "rss_after", "kept_dead_bytes",
            "pages_kept_in_place"}


@pytest.mark.parametrize("runs", [10, 3000], ids=["few-runs", "many-runs"])
def test_page_kinds_of_large_runs(runs):
    """Both ways of recording large objects' pages (slices, difference array) agree with the rule."""
    import numpy as np

    from heap.alloc import PAGE_FREE, PAGE_LARGE, PAGE_SMALL, Allocator

    ps, base = 4096, 1 << 32
    a = Allocator(base, (4 * runs + 8) * ps, ps)
    firsts = np.arange(runs) * 4  # a large object of 2 or 3 pages every 4 pages, a small one after some
    sizes = np.where(np.arange(runs) % 2 == 0, 2 * ps, 3 * ps)
    small = firsts[np.arange(runs) % 2 == 0] + 3
    addrs = np.concatenate([base + firsts * ps, base + small * ps + 64])
    totals = np.concatenate([sizes, np.full(small.size, 100)])
    order = np.argsort(addrs)
    a.mark_pages(addrs[order], totals[order])
    expect = np.full(a.page_kind.size, PAGE_FREE, dtype=np.int8)
    for f, n in zip(firsts, sizes // ps):
        expect[f:f + n] = PAGE_LARGE
    expect[small] = PAGE_SMALL
    assert np.array_equal(a.page_kind, expect)


@settings(max_examples=300, deadline=None)
@given(nbytes=st.integers(0, 1 << 40), nrefs=st.integers(0, (1 << 32) - 1), large=st.booleans())
def test_the_object_models_scalar_paths_agree_with_its_array_paths(nbytes, nrefs, large):
    """Heap.alloc uses object_bytes/header/slot_offset for one object; the
    collector uses total_bytes/header_words/slot_addresses for many."""
    m = DEFAULT_MODEL
    assert m.object_bytes(nbytes, nrefs) == int(m.total_bytes(np.array([nbytes]), np.array([nrefs]))[0])
    words = m.header_words(np.array([nbytes]), np.array([nrefs]), np.array([large]))
    assert m.header(nbytes, nrefs, large) == words.astype(np.uint64).tobytes()
    few = min(nrefs, 64)  # slot_addresses lists every slot
    for slot in range(few):
        assert m.slot_offset(few, slot) == int(m.slot_addresses(np.array([0]), np.array([few]))[slot])


@pytest.mark.timeout(30)
def test_a_model_without_the_scalar_paths_allocates_the_same_objects(kernel_name):
    """The scalar paths are optional: a model with only the array methods works unchanged."""

    class ArraysOnly:
        header_bytes, alignment = DEFAULT_MODEL.header_bytes, DEFAULT_MODEL.alignment
        total_bytes = DEFAULT_MODEL.total_bytes
        payload_offset = DEFAULT_MODEL.payload_offset
        slot_addresses = DEFAULT_MODEL.slot_addresses
        header_words = DEFAULT_MODEL.header_words

    with Heap(kernel=kernel_name, size=1 << 20, object_model=ArraysOnly()) as h:
        a, b = h.alloc(100, 2), h.alloc(5000, 1)
        a.set_ref(1, b)
        b.write(b"x" * 5000)
        h.collect()
        h.verify()
        assert a.get_ref(1).read(5000) == b"x" * 5000 and a.get_ref(0) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_a_stop_the_world_collection_logs_each_phase_once(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=8 * MiB, compactor=compactor) as heap:
        keep = heap.alloc(100, 1)
        keep.set_ref(0, heap.alloc(5000))
        heap.alloc(300)
        with capture_events() as events:
            heap.collect()
        phases = [e["phase"] for e in events if "phase" in e]
        assert sorted(phases) == sorted(set(phases)), phases
        assert {"mark", "plan", "fixup", "install"} <= set(phases)
        assert [e["event"] for e in events].count("gc_done") == 1
