"""The registry of memory remapgc mapped (uffd_backend.owned) follows mmap, munmap and mremap."""

from __future__ import annotations

import pytest

from heap.kernel import PAGE_SIZE

PS = PAGE_SIZE


@pytest.fixture
def owned(linux_kernel):
    from uffd_backend import owned

    return owned


def test_mmap_is_owned_and_munmap_forgets_it(k, owned):
    a = k.mmap(4 * PS)
    assert owned.covers(a, 4 * PS)
    k.munmap(a + PS, PS)
    assert owned.covers(a, PS) and owned.covers(a + 2 * PS, 2 * PS)
    assert not owned.covers(a + PS, PS) and not owned.covers(a, 4 * PS)
    k.munmap(a, 4 * PS)
    assert not owned.covers(a, PS)


def test_mremap_moves_ownership_and_dontunmap_keeps_both(k, mem, owned):
    a, hole = mem(2), mem.hole()
    new = k.mremap(a, PS, hole)
    assert new == hole and owned.covers(hole, PS) and not owned.covers(a, PS)
    b, hole2 = mem(1), mem.hole()
    k.mremap(b, PS, hole2, dontunmap=True)
    assert owned.covers(b, PS) and owned.covers(hole2, PS)


@pytest.mark.parametrize("adds,removes,probe,expected", [
    ([(0, 4)], [], (1, 2), True),
    ([(0, 2), (2, 2)], [], (0, 4), True),          # adjacent intervals merge
    ([(0, 2), (3, 2)], [], (0, 5), False),         # a gap is not covered
    ([(0, 8)], [(2, 2)], (0, 2), True),            # removing the middle splits
    ([(0, 8)], [(2, 2)], (1, 3), False),
    ([(0, 8)], [(0, 8)], (0, 1), False),
    ([(0, 2), (4, 2), (8, 2)], [(1, 8)], (0, 1), True),  # one removal over three intervals
    ([(0, 2), (4, 2), (8, 2)], [(1, 8)], (9, 1), True),
    ([(0, 2), (4, 2), (8, 2)], [(1, 8)], (4, 1), False),
], ids=["inside", "adjacent_merge", "gap", "split_left", "split_spans_hole", "all_removed",
        "multi_remove_keeps_head", "multi_remove_keeps_tail", "multi_remove_drops_middle"])
def test_interval_bookkeeping(owned, adds, removes, probe, expected):
    base = 1 << 46  # far from anything this process maps
    for start, n in adds:
        owned.add(base + start * PS, n * PS)
    for start, n in removes:
        owned.remove(base + start * PS, n * PS)
    try:
        assert owned.covers(base + probe[0] * PS, probe[1] * PS) is expected
    finally:
        owned.remove(base, 64 * PS)
