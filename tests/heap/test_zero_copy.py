"""Large objects and dense pages move zero-copy: same physical frames after a collection."""

from __future__ import annotations

import numpy as np
import pytest

from heap import Heap

MiB = 1 << 20


def touch_every_page(ref, nbytes: int, page: int) -> None:
    for off in range(0, nbytes, page):
        ref.write(off.to_bytes(8, "little") + b"zc", off)
    ref.write(b"end!", nbytes - 4)  # the object's last page too


def frames_of(heap: Heap, ref) -> np.ndarray:
    ps = heap.kernel.page_size
    npages = -(-(ref.nbytes + heap.object_model.payload_offset(0)) // ps)
    return np.asarray(heap.kernel.page_frames(ref.address, npages))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("thp,sizes", [
    (False, [64 << 10, 300 << 10, MiB, 64 << 10, 2 * MiB, 100 << 10]),
    (True, [2 * MiB, 4 * MiB, 2 * MiB, 6 * MiB]),
], ids=["4k-pages", "thp"])
def test_large_objects_keep_their_frames(kernel_name, thp, sizes):
    with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap", thp=thp) as heap:
        ps = heap.kernel.page_size
        refs = [heap.alloc(n) for n in sizes]
        for ref, n in zip(refs, sizes):
            touch_every_page(ref, n, ps)
        keep = refs[1::2]  # every other object dies: the survivors must move down
        del refs
        before = [(r.address, frames_of(heap, r)) for r in keep]
        assert all((f >= 0).all() for _, f in before)
        stats = heap.collect()
        moved = 0
        for ref, (addr, frames) in zip(keep, before):
            assert np.array_equal(frames_of(heap, ref), frames), "a large object changed frames: it was copied"
            moved += ref.address != addr
            for off in range(0, ref.nbytes, ps):
                assert ref.read(10, off) == off.to_bytes(8, "little") + b"zc"
        assert moved, "nothing moved: the test proves nothing"
        assert stats.bytes_copied == 0
        assert stats.bytes_moved_zero_copy >= sum(r.nbytes for r in keep)
        heap.verify()


@pytest.mark.timeout(60)
def test_thp_object_stays_huge(kernel_name):
    with Heap(kernel=kernel_name, size=32 * MiB, compactor="remap", thp=True) as heap:
        k = heap.kernel
        dead = heap.alloc(2 * MiB)
        big = heap.alloc(4 * MiB - 64)
        touch_every_page(dead, 2 * MiB, k.page_size)
        touch_every_page(big, 4 * MiB - 64, k.page_size)
        assert k.page_info(big.address).huge
        addr = big.address
        del dead
        heap.collect()
        assert big.address != addr and big.address % k.hpage_size == 0
        info = k.page_info(big.address)
        assert info.huge and info.state == "thp", info


@pytest.mark.timeout(60)
def test_dense_small_pages_move_whole_sparse_ones_are_evacuated(kernel_name):
    with Heap(kernel=kernel_name, size=16 * MiB, compactor="remap", dense=0.5) as heap:
        k = heap.kernel
        ps = k.page_size
        per_page = ps // 256  # 256-byte objects, 16 to a page
        block = heap.alloc_many(np.full(per_page * 6, 256 - 16), 0)
        addrs = block.addresses
        pages = (addrs - heap.base) // ps
        # page 0 dies entirely, page 1 keeps 2 of 16 (sparse: objects 5 and 9 slide to its
        # start), pages 2-5 keep all (dense)
        keep = np.flatnonzero((pages >= 2) | ((pages == 1) & np.isin(np.arange(addrs.size) % per_page, [5, 9])))
        refs = [block[int(i)] for i in keep]
        original = [r.address for r in refs]
        for r in refs:
            r.write(r.address.to_bytes(8, "little"), 0)  # each object carries its old address
        dense_frames = k.page_frames(heap.base + 2 * ps, 4)
        sparse_frame = k.page_frames(heap.base + ps, 1)
        del block
        stats = heap.collect()
        assert stats.live_objects == keep.size
        assert stats.bytes_copied == 2 * 256  # the two survivors of the sparse page
        assert all(r.read(8, 0) == a.to_bytes(8, "little") for r, a in zip(refs, original))
        # the four dense pages moved down by two pages, frames intact
        assert np.array_equal(k.page_frames(heap.base, 4), dense_frames)
        # the sparse page was rebuilt in place, then moved too: same frame
        assert np.array_equal(k.page_frames(heap.base + 4 * ps, 1), sparse_frame)
        assert stats.pages_moved == 5  # 4 dense + 1 rebuilt
        heap.verify()


@pytest.mark.timeout(60)
def test_dense_huge_unit_moves_by_pmd_with_its_medium_objects(kernel_name):
    with Heap(kernel=kernel_name, size=32 * MiB, compactor="remap", thp=True) as heap:
        k = heap.kernel
        ps, hp = k.page_size, k.hpage_size
        dead = heap.alloc(2 * MiB)  # a huge object that dies: the unit after it moves down
        medium = [heap.alloc(400 << 10) for _ in range(4)]  # 1.6 MiB of a 2 MiB unit: dense
        for ref in medium:
            touch_every_page(ref, 400 << 10, ps)
        unit = medium[0].address - heap.base
        assert unit % hp == 0 and all(r.address - heap.base < unit + hp for r in medium)
        frames = [frames_of(heap, r) for r in medium]
        assert k.page_info(medium[0].address).huge
        del dead
        stats = heap.collect()
        assert medium[0].address == heap.base
        assert stats.bytes_copied == 0
        for ref, before in zip(medium, frames):
            assert np.array_equal(frames_of(heap, ref), before)
        assert k.page_info(heap.base).huge, "the unit should still be one PMD-mapped huge page"
        heap.verify()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("live_huge,kept", [(16 * MiB, True), (4 * MiB, False)],
                         ids=["within-budget-moves-whole", "past-budget-is-copied-out"])
def test_sparse_huge_unit_of_large_objects_moves_whole_within_its_memory_budget(kernel_name, live_huge, kept):
    """A 2 MiB unit left holding one 400 KiB object (sparse) moves by PMD with
    its dead bytes when the heap's live bytes allow keeping them (the cost is
    reported in kept_dead_bytes); past the budget its object is copied out."""
    with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap", thp=True) as heap:
        k = heap.kernel
        ps, hp = k.page_size, k.hpage_size
        dead = heap.alloc(2 * MiB)
        medium = [heap.alloc(400 << 10) for _ in range(4)]
        big = heap.alloc(live_huge)
        for ref in medium:
            touch_every_page(ref, 400 << 10, ps)
        touch_every_page(big, live_huge, ps)
        survivor = medium[2]
        unit = survivor.address - survivor.address % hp
        assert all(unit <= r.address < unit + hp for r in medium)
        frames = frames_of(heap, survivor)
        del dead, medium, ref
        stats = heap.collect()
        assert stats.live_objects == 2
        for off in range(0, 400 << 10, ps):
            assert survivor.read(10, off) == off.to_bytes(8, "little") + b"zc"
        assert survivor.read(4, (400 << 10) - 4) == b"end!"
        if kept:
            assert np.array_equal(frames_of(heap, survivor), frames), "the sparse unit's object was copied"
            assert stats.bytes_copied == 0
            assert stats.kept_dead_bytes == hp - heap.object_model.total_bytes(survivor.nbytes, 0)
            assert stats.kept_dead_bytes <= stats.live_bytes // 8
            assert k.page_info(survivor.address - survivor.address % hp).huge
        else:
            assert stats.kept_dead_bytes == 0
            assert stats.bytes_copied >= survivor.nbytes
        heap.verify()


@pytest.mark.timeout(60)
def test_a_collection_of_only_sparse_pages_slides_in_the_arena_copying_each_survivor_once(kernel_name):
    """Every page sparse: the to-space is built in the arena (no flip, no MOVE);
    each surviving object that moves is copied once (not also evacuated into
    the from-space), and the from-space holds nothing afterwards."""
    with Heap(kernel=kernel_name, size=16 * MiB, compactor="remap") as heap:
        k = heap.kernel
        block = heap.alloc_many(np.full(300, 100), 1)
        keep = np.arange(3, 300, 5)  # one in five survives: every page sparse
        refs = [block[int(i)] for i in keep]
        for r in refs:
            r.write(r.address.to_bytes(8, "little"), 0)
        before = np.array([r.address for r in refs])
        total = heap.object_model.total_bytes(100, 1)
        del block
        stats = heap.collect()
        after = np.array([r.address for r in refs])
        assert stats.pages_moved == 0
        assert stats.bytes_copied == int((after != before).sum()) * total
        assert all(r.read(8, 0) == a.to_bytes(8, "little") for r, a in zip(refs, before.tolist()))
        assert k.resident_bytes(heap._spaces.from_space, heap.size) == 0
        heap.verify()


@pytest.mark.timeout(60)
def test_a_concurrent_cycle_moves_a_sparse_huge_unit_of_large_objects_whole_too(kernel_name):
    """The concurrent install follows the same plan: the sparse unit's
    survivor keeps its frames and bytes, the kept dead bytes are reported."""
    with Heap(kernel=kernel_name, size=64 * MiB, compactor="remap", thp=True) as heap:
        ps = heap.kernel.page_size
        dead = heap.alloc(2 * MiB)
        medium = [heap.alloc(400 << 10) for _ in range(4)]
        big = heap.alloc(16 * MiB)
        touch_every_page(big, 16 * MiB, ps)
        for ref in medium:
            touch_every_page(ref, 400 << 10, ps)
        survivor = medium[2]
        frames = frames_of(heap, survivor)
        del dead, medium, ref
        stats = heap.collect(concurrent=True)
        assert stats.kept_dead_bytes == heap.kernel.hpage_size - heap.object_model.total_bytes(survivor.nbytes, 0)
        assert stats.bytes_copied == 0
        assert np.array_equal(frames_of(heap, survivor), frames)
        for off in range(0, 400 << 10, ps):
            assert survivor.read(10, off) == off.to_bytes(8, "little") + b"zc"
        heap.verify()
