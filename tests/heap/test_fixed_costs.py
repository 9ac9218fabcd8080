"""What the per-cycle fast paths still do for a user (issue 12's fixed costs):
the tiny heap built in the arena itself, and a pause Python's cyclic
collector does not interrupt."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from heap import Heap

MiB = 1 << 20


def tiny_tree(heap: Heap, rng: np.random.Generator, n: int = 500, live: int = 200):
    """``n`` small objects with 2 slots; ``live`` of them (random rows, in
    address order) form a binary tree in row order, each stamped with its tree
    position. Returns a Ref to each live object (the first is the root) and their sizes."""
    sizes = rng.integers(32, 257, n)
    block = heap.alloc_many(sizes, 2)
    rows = np.sort(rng.permutation(n)[:live])
    for slot in (0, 1):
        child = 2 * np.arange(live) + 1 + slot
        has = child < live
        block.set_refs(slot, rows[has], block, rows[child[has]])
    refs = [block[int(r)] for r in rows]
    for pos, ref in enumerate(refs):
        ref.write(pos.to_bytes(4, "little"))
    return refs, heap.object_model.total_bytes(sizes[rows], np.full(live, 2))


def walk(root) -> list[int]:
    """Every tree position reached from ``root`` (breadth first), read from the objects themselves."""
    seen, frontier = [], [root]
    while frontier:
        nxt = []
        for ref in frontier:
            seen.append(int.from_bytes(ref.read(4), "little"))
            nxt.extend(c for c in (ref.get_ref(0), ref.get_ref(1)) if c is not None)
        frontier = nxt
    return seen


@pytest.mark.timeout(60)
def test_tiny_heap_is_compacted_in_the_arena_with_every_reference_fixed(kernel_name):
    rng = np.random.default_rng(3)
    with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap") as heap:
        refs, totals = tiny_tree(heap, rng)
        before = np.array([r.address for r in refs])
        stats = heap.collect()

        assert (stats.live_objects, stats.freed_objects) == (200, 300)
        assert stats.live_bytes == int(totals.sum())
        assert stats.pages_moved == 0  # built in the arena: nothing flipped, nothing installed
        assert heap.last_phase_ns.keys() >= {"mark", "plan", "fixup", "install"}
        assert sorted(walk(refs[0])) == list(range(200))  # every slot points at its object's new place
        after = np.array([r.address for r in refs])
        assert (after[1:] >= after[:-1] + totals[:-1]).all() and (after <= before).all()  # slid down, in order
        # bytes_copied counts exactly the objects that slid down, not those that stayed
        assert stats.bytes_copied == int(totals[after != before].sum()) > 0
        heap.verify()


@pytest.mark.timeout(60)
def test_bytes_copied_counts_only_the_objects_that_moved(kernel_name):
    with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap") as heap:
        block = heap.alloc_many(np.full(40, 100), 0)
        keep = [block[i] for i in range(30) if not 10 <= i < 20]  # 10-19 and 30-39 die: a sparse page
        base = keep[0].address
        del block
        total = int(heap.object_model.total_bytes(np.array([100]), np.array([0]))[0])
        stats = heap.collect()
        # rows 0-9 stay where they are (a memmove of nothing); 20-29 slide down ten objects
        assert stats.bytes_copied == 10 * total
        assert [r.address for r in keep] == [base + i * total for i in range(20)]
        heap.verify()


class GCWatcher:
    """A root scanner (it runs inside the pause) that records whether Python's cyclic collector may start."""

    def __init__(self):
        self.enabled_inside: list[bool] = []

    def scan_roots(self):
        self.enabled_inside.append(gc.isenabled())
        return np.zeros(0, dtype=np.int64)

    def update_roots(self, forward) -> None:
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrent", [False, True], ids=["stop-the-world", "concurrent"])
@pytest.mark.parametrize("host_disabled", [False, True], ids=["gc-on", "gc-off-by-host"])
def test_pythons_cyclic_collector_does_not_run_inside_a_pause(kernel_name, concurrent, host_disabled):
    watcher = GCWatcher()
    was = gc.isenabled()
    try:
        if host_disabled:
            gc.disable()
        with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap", root_scanners=[watcher]) as heap:
            keep = heap.alloc(64, 1)
            heap.alloc(64)
            heap.collect(concurrent=concurrent)
            assert watcher.enabled_inside == [False]
            # after the pause the host's setting is back: on, or still off when the host turned it off
            assert gc.isenabled() is not host_disabled
            del keep
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrent", [False, True], ids=["stop-the-world", "concurrent"])
def test_marking_a_sparse_span_of_large_objects_finds_exactly_the_reachable(kernel_name, concurrent):
    """Few objects over a wide span: marking looks targets up through the address
    index, not a start bitmap over the whole span (heap.core.SPARSE_SPAN_WORDS)."""
    from heap import core

    n = 40
    with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap") as heap:
        block = heap.alloc_many(np.full(n, 64 << 10), 2)
        span_words = int(block.addresses[-1] - block.addresses[0]) // 16 // 64
        assert span_words > core.SPARSE_SPAN_WORDS * (n + 2 * n)  # this heap takes the index path
        chain = np.arange(0, n, 3)  # 0 -> 3 -> 6 ... -> 39 -> 0: a cycle through every third object
        block.set_refs(0, chain, block, np.roll(chain, -1))
        block.set_refs(1, chain[::2], block, chain[::2])  # self-references
        dead = np.setdiff1d(np.arange(n), chain)
        block.set_refs(0, dead, block, np.zeros(dead.size, dtype=np.int64))  # the dead point at the live
        for i in chain.tolist():
            block[i].write(i.to_bytes(4, "little"))
        root = block[0]
        del block
        stats = heap.collect(concurrent=concurrent)

        assert (stats.live_objects, stats.freed_objects) == (chain.size, dead.size)
        seen, ref = [], root
        for _ in range(chain.size):
            seen.append(int.from_bytes(ref.read(4), "little"))
            ref = ref.get_ref(0)
        assert seen == chain.tolist() and ref.same_object(root)
        heap.verify()
