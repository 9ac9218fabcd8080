"""A dense prefix of live pages that already sits where the plan puts it is
neither flipped nor moved (heap.pause.dense_prefix; docs/design.md, "The
pause": flip): its pages keep their frames, the collection counts them
(``GCStats.pages_kept_in_place``), the tail behind them is compacted, and
the prefix's slots that point into the tail are fixed in place.

The flip of the suffix splits the arena's VMA for the cycle; 20 collections
in a row with a different prefix each time show the next flip's mremap and
MOVEs still work (on Linux 6.18 the two VMAs merge back at the unregister).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent

MiB = 1 << 20
OBJ = 1000  # four objects fill a 4 KiB page: every full page is dense


def pattern(i: int) -> bytes:
    return i.to_bytes(4, "little") * (OBJ // 4)


class Layout:
    """Objects of OBJ bytes with one slot, each page full; every object's
    slot points at the object allocated after it (the chain crosses from
    the prefix into the tail, whose objects move)."""

    def __init__(self, heap: Heap):
        self.heap = heap
        self.ps = heap.kernel.page_size
        self.live: dict[int, object] = {}  # id -> Ref
        self.next_id = 0

    def grow(self, n: int) -> None:
        prev = self.live.get(self.next_id - 1)
        for _ in range(n):
            i = self.next_id
            self.next_id += 1
            r = self.heap.alloc(OBJ, 1)
            r.write(pattern(i))
            if prev is not None:
                prev.set_ref(0, r)
            self.live[i] = prev = r

    def page_of(self, ref) -> int:
        return (ref.address - self.heap.base) // self.ps

    def thin_page(self, page: int) -> int:
        """Drop all but one object of ``page`` (it becomes sparse: the prefix ends there).
        Returns how many died. The chain is relinked around the dead."""
        ids = sorted(self.live)
        dead = [i for i in ids if self.page_of(self.live[i]) == page][1:]
        for i in dead:
            del self.live[i]
        ids = sorted(self.live)
        for a, b in zip(ids, ids[1:]):
            self.live[a].set_ref(0, self.live[b])
        return len(dead)

    def check(self) -> None:
        ids = sorted(self.live)
        for a, b in zip(ids, ids[1:]):
            r = self.live[a]
            assert r.read(OBJ) == pattern(a)
            assert r.get_ref(0).same_object(self.live[b])
        self.heap.verify()

    def frames(self, pages: int) -> np.ndarray:
        return self.heap.kernel.page_frames(self.heap.base, pages)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("concurrent,register_first", [(False, False), (False, True), (True, False)],
                         ids=["stop-the-world", "stop-the-world-registered-first", "concurrent"])
def test_a_dense_live_prefix_keeps_its_frames_and_the_tail_is_compacted(kernel_name, concurrent, register_first):
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        heap._pause.stw_register_first = register_first  # the other flip order (heap.spaces.Spaces.flip)
        lay = Layout(heap)
        lay.grow(4 * 40)  # 40 full pages
        prefix = 24
        assert lay.thin_page(prefix) == 3
        for page in range(prefix + 1, 40, 2):  # holes in the tail too: pages that must move down
            lay.thin_page(page)
        free_before = heap.stats().free_bytes
        frames = lay.frames(prefix)
        assert (frames > 0).all()
        first = [heap.kernel.page_info(heap.base + p * lay.ps).frame for p in range(prefix)]

        stats = heap.collect(concurrent=concurrent)

        assert stats.pages_kept_in_place == prefix
        assert (lay.frames(prefix) == frames).all()
        assert [heap.kernel.page_info(heap.base + p * lay.ps).frame for p in range(prefix)] == first
        assert stats.pages_moved < 40 - prefix  # the prefix was not moved: at most the tail's whole pages
        assert heap.stats().free_bytes > free_before  # the tail was compacted
        lay.check()


@pytest.mark.timeout(180)
def test_twenty_collections_with_varied_prefixes(kernel_name):
    """Each collection keeps a different prefix (shorter, longer, none), stop-the-world
    and concurrent in turn: the split and merged VMAs never break a later flip."""
    rnd = random.Random(12)
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        lay = Layout(heap)
        lay.grow(4 * 30)
        for cycle in range(20):
            used = (heap.stats().size - heap.stats().free_bytes) // lay.ps
            # the first page with a hole ends the prefix: 0 (none kept) now and then
            prefix = 0 if cycle % 7 == 3 else rnd.randrange(1, max(2, used - 2))
            lay.thin_page(prefix)
            frames = lay.frames(prefix)
            stats = heap.collect(concurrent=bool(cycle % 2))
            assert stats.pages_kept_in_place == prefix, (cycle, prefix)
            assert (lay.frames(prefix) == frames).all(), cycle
            lay.check()
            lay.grow(rnd.randrange(4, 24))  # new objects behind the survivors, full pages again
        assert heap.collect().live_objects == len(lay.live)
        lay.check()


@pytest.mark.timeout(60)
def test_a_prefix_left_out_changes_nothing_but_the_install(kernel_name):
    """With the prefix kept off (Pause.keep_prefix = False) the same heap
    installs every page, and ends in the same layout."""
    results = []
    for keep in (True, False):
        with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
            heap._pause.keep_prefix = keep
            lay = Layout(heap)
            lay.grow(4 * 20)
            lay.thin_page(12)
            stats = heap.collect()
            lay.check()
            results.append((stats.pages_kept_in_place, stats.pages_moved,
                            [lay.live[i].address - heap.base for i in sorted(lay.live)]))
    (kept, moved, layout), (kept_off, moved_off, layout_off) = results
    assert layout == layout_off
    assert (kept, kept_off) == (12, 0)
    assert moved_off - moved == 12


@pytest.mark.timeout(120)
@pytest.mark.parametrize("concurrent", [False, True], ids=["stop-the-world", "concurrent"])
def test_with_huge_pages_the_prefix_is_whole_units(kernel_name, concurrent):
    """THP: the unit is 2 MiB, so the prefix is whole units: it ends at the first
    unit that moves, and its huge pages keep their frames (no PMD split at the
    flip's edge)."""
    with Heap(kernel=kernel_name, size=32 * MiB, compactor="remap", thp=True) as heap:
        k, ps = heap.kernel, heap.kernel.page_size
        unit = k.hpage_size // ps
        objs = [heap.alloc(64 * 1024 - 64, 1) for _ in range(4 * 32)]  # four full units of 64 KiB objects
        for i, r in enumerate(objs):
            r.write(i.to_bytes(4, "little") * 16)
        for a, b in zip(objs, objs[1:]):
            a.set_ref(0, b)
        unit_of = [(r.address - heap.base) // k.hpage_size for r in objs]
        # unit 2 dies whole: unit 3 moves down by PMD (a half-dead unit of large objects would
        # move whole and stay, heap.plan's sparse_keep)
        dead = [i for i, u in enumerate(unit_of) if u == 2]
        survivors = [r for i, r in enumerate(objs) if i not in dead]
        for a, b in zip(survivors, survivors[1:]):
            a.set_ref(0, b)
        del objs, a, b
        frames = k.page_frames(heap.base, 2 * unit)
        huge_before = k.page_info(heap.base).huge
        stats = heap.collect(concurrent=concurrent)
        assert stats.pages_kept_in_place == 2 * unit
        assert stats.pages_moved == unit  # unit 3, down into unit 2's place
        assert (k.page_frames(heap.base, 2 * unit) == frames).all()
        assert k.page_info(heap.base).huge == huge_before
        for r, nxt in zip(survivors, survivors[1:]):
            assert r.get_ref(0).same_object(nxt)
        heap.verify()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("register_first", [False, True], ids=["mremap-first", "register-first"])
def test_a_partial_flip_undone_puts_every_page_back_and_the_next_flip_works(kernel, register_first):
    """Spaces.flip(keep=) then unflip (a plan that could not be carried out): the
    suffix's pages come back with their frames, the from-space's hole is mapped
    again, and whole and partial flips keep working afterwards."""
    from heap.spaces import Spaces

    ps = kernel.page_size
    spaces = Spaces(kernel, 4 * MiB, thp=False, faults="thread")
    try:
        spaces.open_uffd()
        base, npages = spaces.base, 64
        for p in range(npages):
            kernel.store(base + p * ps, p.to_bytes(8, "little") * 4)
        frames = kernel.page_frames(base, npages)
        for keep in (16, 0, 40, 1):
            spaces.flip(register_first=register_first, keep=keep * ps)
            assert (kernel.page_frames(base, keep) == frames[:keep]).all()  # the prefix stayed
            assert kernel.resident_bytes(base + keep * ps, (npages - keep) * ps) == 0  # the rest was flipped
            assert (kernel.page_frames(spaces.from_space + keep * ps, npages - keep) == frames[keep:]).all()
            spaces.unflip()
            assert (kernel.page_frames(base, npages) == frames).all()
            assert kernel.load(base + 5 * ps, 8) == (5).to_bytes(8, "little")
        with pytest.raises(ValueError):
            spaces.flip(register_first=register_first, keep=spaces.size)
    finally:
        spaces.close()


def vmas_in(kernel_name: str, kernel, lo: int, hi: int) -> list[tuple[int, int]]:
    """The VMAs overlapping [lo, hi): /proc/self/maps on Linux, the simulator's address space."""
    if kernel_name == "sim":
        return [(v.start, v.end) for v in kernel.mm.overlapping(lo, hi)]
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start < hi and end > lo:
                spans.append((start, end))
    return spans


@pytest.mark.timeout(120)
def test_the_arena_is_one_vma_again_after_each_collection(kernel_name):
    """The kernel behaviour the partial flip rests on (measured on Linux 6.18): the
    arena's VMA, split at the prefix for the cycle, merges back when the suffix is
    unregistered -- whatever the prefix, stop-the-world or concurrent. If a kernel
    stopped merging, a later whole flip's mremap would fail (EFAULT): this says why."""
    rnd = random.Random(3)
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        lay = Layout(heap)
        lay.grow(4 * 24)
        for cycle in range(8):
            used = (heap.stats().size - heap.stats().free_bytes) // lay.ps
            prefix = rnd.randrange(1, max(2, used - 2))
            lay.thin_page(prefix)
            if cycle % 2:  # during the cycle: split where the prefix ends
                running, stats, _ = begin_concurrent(heap, run_compactor=False)
                spans = vmas_in(kernel_name, heap.kernel, heap.base, heap.base + heap.size)
                assert [s for s, _ in spans][1:] == [heap.base + prefix * lay.ps], (cycle, prefix, spans)
                end_concurrent(heap, running)
            else:
                stats = heap.collect()
            assert stats.pages_kept_in_place == prefix
            # one VMA over the whole arena (it may reach past it: a neighbouring mapping merged)
            [(start, end)] = vmas_in(kernel_name, heap.kernel, heap.base, heap.base + heap.size)
            assert start <= heap.base and end >= heap.base + heap.size, (cycle, prefix)
            lay.grow(rnd.randrange(4, 16))
        lay.check()
