"""THP on the simulator: faults, huge zero page, PMD splits, page-table reclaim, UFFDIO_MOVE of huge PMDs."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from heap.kernel import MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, PROT_READ, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES
from sim_backend import SimKernel

from .conftest import HP, PS, outcome

pytestmark = pytest.mark.timeout(30)


def huge_map(k, regions=4, advise=True):
    a = k.mmap(regions * HP, align=HP)
    if advise:
        k.madvise(a, regions * HP, MADV_HUGEPAGE)
    return a


def state(k, addr):
    i = k.page_info(addr)
    return i.state, i.huge


# --- faults ----------------------------------------------------------------------------
# the page each first touch maps is tested on every backend (tests/kernel); the PMD it leaves only here
FAULT_CASES = [
    ("write with MADV_HUGEPAGE maps a THP", True, "write", "thp"),
    ("read with MADV_HUGEPAGE maps the huge zero page", True, "read", "huge_zero"),
    ("write without advice maps one page", False, "write", "table"),
    ("read without advice maps the zero page", False, "read", "table"),
]


@pytest.mark.parametrize("advise,access,pmd", [c[1:] for c in FAULT_CASES], ids=[c[0] for c in FAULT_CASES])
def test_first_touch_leaves_its_pmd(k, advise, access, pmd):
    a = huge_map(k, advise=advise)
    if access == "write":
        k.store(a + 5 * PS, b"x")
    else:
        k.load(a + 5 * PS, 1)
    assert k.pmd_kind(a) == pmd


def test_thp_disabled_by_constructor():
    k = SimKernel(thp=False)
    a = huge_map(k)
    k.store(a, b"x")
    assert state(k, a) == ("present", False)


def test_thp_needs_the_whole_region_inside_the_vma(k):
    a = k.mmap(3 * HP, align=HP)
    k.madvise(a + PS, 3 * HP - PS, MADV_HUGEPAGE)
    k.store(a + PS, b"x")  # region 0 is not wholly advised
    k.store(a + HP, b"x")
    assert state(k, a + PS) == ("present", False)
    assert state(k, a + HP) == ("thp", True)


def test_nohugepage_advice_wins(k):
    a = huge_map(k)
    k.madvise(a, HP, MADV_NOHUGEPAGE)
    k.store(a, b"x")
    assert state(k, a) == ("present", False)


def test_an_existing_pte_table_prevents_a_thp(k):
    a = huge_map(k, advise=False)
    k.store(a, b"x")
    k.madvise(a, 4 * HP, MADV_HUGEPAGE)
    k.store(a + PS, b"y")
    assert state(k, a + PS) == ("present", False)


def test_write_to_huge_zero_page_maps_a_thp(k):
    a = huge_map(k)
    k.load(a, 1)
    k.store(a + PS, b"x")
    assert state(k, a) == ("thp", True)
    assert k.load(a + PS, 1) == b"x"


def test_cow_of_a_shared_thp_splits_the_pmd_and_copies_one_page(k):
    a = huge_map(k)
    k.store(a, b"a")
    before = k.page_info(a + PS).frame
    child = k.fork()
    k.store(a + PS, b"b")
    assert k.pmd_kind(a) == "table"
    assert k.page_info(a + PS).frame != before and k.page_info(a + PS).state == "present"
    assert k.page_info(a).state == "thp" and not k.page_info(a).exclusive
    child.exit()


def test_write_to_thp_after_child_exit_reuses_the_folio(k):
    a = huge_map(k)
    k.store(a, b"a")
    frame = k.page_info(a).frame
    k.fork().exit()
    k.store(a + PS, b"b")
    assert state(k, a) == ("thp", True) and k.page_info(a).frame == frame


# --- zapping ---------------------------------------------------------------------------
def test_partial_dontneed_splits_the_pmd_but_not_the_folio(k):
    a = huge_map(k)
    k.store(a, b"a")
    k.madvise(a + PS, PS, MADV_DONTNEED)
    assert k.pmd_kind(a) == "table"
    assert state(k, a) == ("thp", False)
    assert state(k, a + PS) == ("none", False)


def test_whole_dontneed_clears_the_pmd(k):
    a = huge_map(k)
    k.store(a, b"a")
    k.madvise(a, HP, MADV_DONTNEED)
    assert k.pmd_kind(a) == "none"


def test_dontneed_reclaims_an_empty_pte_table_covering_the_region(k):
    a = huge_map(k, advise=False)
    k.store(a + 5 * PS, b"a")
    k.madvise(a + 5 * PS, PS, MADV_DONTNEED)
    assert k.pmd_kind(a) == "table"  # not covering the whole 2 MiB: kept
    k.madvise(a, HP, MADV_DONTNEED)
    assert k.pmd_kind(a) == "none"


def test_partial_madv_free_splits_the_folio_and_maps_zero_subpages_to_the_zero_page(k):
    a = huge_map(k)
    k.store(a, b"a")
    k.madvise(a + PS, PS, MADV_FREE)
    assert state(k, a) == ("present", False)
    assert state(k, a + 2 * PS) == ("zero", False)


def test_mprotect_inside_a_thp_splits_the_pmd(k):
    # that the folio stays large (thp, not huge) is tested on every backend in tests/kernel
    a = huge_map(k)
    k.store(a, b"a")
    k.mprotect(a + HP // 2, HP // 2, PROT_READ)
    assert k.pmd_kind(a) == "table"


# --- UFFDIO_MOVE of huge PMDs ------------------------------------------------------------


def test_aligned_thp_moves_as_one_pmd(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    k.store(p.src + HP, b"b")
    frames = list(k.page_frames(p.src, 1024))
    k.counters.reset()
    assert p.uffd.move(p.dst, p.src, 2 * HP) == 2 * HP
    assert list(k.page_frames(p.dst, 1024)) == frames
    assert state(k, p.dst) == ("thp", True)
    assert k.pmd_kind(p.src) == "none"
    assert (k.counters.pmds_moved, k.counters.ptes_moved) == (2, 0)


SPLIT_CASES = [
    # name, dst offset pages, src offset pages, length pages, dst table first
    ("dst offset by a page", 1, 0, 4, False),
    ("src offset by a page", 0, 1, 4, False),
    ("shorter than 2 MiB", 0, 0, 4, False),
    ("dst region has an (empty) PTE table", 0, 0, 512, True),
]


@pytest.mark.parametrize("d_off,s_off,pages,dst_table", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_thp_split_paths(k, uffd, huge_pair, d_off, s_off, pages, dst_table):
    p = huge_pair
    k.store(p.src, b"a")
    k.store(p.src + 7 * PS, b"b")
    if dst_table:
        other = k.mmap(PS)
        assert p.uffd.move(p.dst, other, PS, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES) == PS
        assert k.pmd_kind(p.dst) == "table"
    written = [i for i in (0, 7) if s_off <= i < s_off + pages]
    frames = [k.page_info(p.src + i * PS).frame for i in written]
    assert p.uffd.move(p.dst + d_off * PS, p.src + s_off * PS, pages * PS) == pages * PS
    # written pages keep their frames; zero-filled subpages became the zero page on split
    assert [k.page_info(p.dst + (d_off - s_off + i) * PS).frame for i in written] == frames
    others = [p.dst + (d_off + i) * PS for i in range(pages) if s_off + i not in written]
    assert {k.page_info(a).state for a in others} <= {"zero", "none"}
    assert state(k, p.dst + d_off * PS)[1] is False
    assert k.pmd_kind(p.src) == "table"
    assert k.counters.pmds_split == 1
    assert k.page_info(p.src + 100 * PS).state in ("zero", "none")


def test_a_split_by_move_leaves_the_src_zero_filled_subpages_on_the_zero_page(k, uffd, huge_pair):
    # the dst side (moved zero-filled subpages are zero pages) is tested on every backend in tests/kernel
    p = huge_pair
    k.store(p.src, b"a")
    p.uffd.move(p.dst + PS, p.src, 4 * PS)
    assert k.page_info(p.src + 4 * PS).state == "zero"


def test_split_keeps_written_subpages_of_a_locked_vma(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    k.mlock(p.src, 4 * HP)
    k.mlock(p.dst, 4 * HP, onfault=True)
    p.uffd.move(p.dst + PS, p.src, 2 * PS)
    assert [k.page_info(p.dst + i * PS).state for i in (1, 2)] == ["present", "present"]


def test_thp_shared_with_child_is_ebusy_without_split(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    child = k.fork()
    assert outcome(lambda: p.uffd.move(p.dst, p.src, HP)) == (errno.EBUSY, 0)
    assert outcome(lambda: p.uffd.move(p.dst + PS, p.src, PS)) == (errno.EBUSY, 0)
    assert k.pmd_kind(p.src) == "thp"
    child.exit()


def test_pinned_thp_aligned_is_ebusy_and_intact(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    k.pin(p.src)
    assert outcome(lambda: p.uffd.move(p.dst, p.src, HP)) == (errno.EBUSY, 0)
    assert k.pmd_kind(p.src) == "thp"


def test_pinned_thp_partial_leaves_a_split_pmd_then_succeeds_when_unpinned(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    k.pin(p.src)
    assert outcome(lambda: p.uffd.move(p.dst + PS, p.src, PS)) == (errno.EBUSY, 0)
    assert k.pmd_kind(p.src) == "table"
    k.unpin(p.src)
    assert p.uffd.move(p.dst + PS, p.src, PS) == PS


def test_thp_in_dst_region_is_eexist(k, uffd):
    d = huge_map(k)
    k.store(d, b"d")
    s = k.mmap(PS)
    k.store(s, b"s")
    uffd.register(d, 4 * HP)
    assert outcome(lambda: uffd.move(d + PS, s, PS)) == (errno.EEXIST, 0)


def test_huge_zero_page_moves_whole_or_splits_into_zero_ptes(k, uffd, huge_pair):
    p = huge_pair
    k.load(p.src, 1)
    k.load(p.src + HP, 1)
    assert p.uffd.move(p.dst, p.src, HP) == HP
    assert state(k, p.dst) == ("zero", True)
    assert p.uffd.move(p.dst + HP + PS, p.src + HP, PS) == PS
    assert state(k, p.dst + HP + PS) == ("zero", False)
    assert state(k, p.src + HP + PS) == ("zero", False)
    assert state(k, p.src + HP) == ("none", False)


def test_dst_table_left_by_holes_move_is_not_reclaimed(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    empty = k.mmap(PS)
    p.uffd.move(p.dst, empty, PS, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)
    p.uffd.move(p.dst, p.src, HP)
    assert state(k, p.dst)[1] is False


def test_dst_dontneed_reclaims_the_table_so_the_pmd_moves_whole(k, uffd, huge_pair):
    p = huge_pair
    k.store(p.src, b"a")
    p.uffd.unregister(p.dst, p.size)
    k.store(p.dst + 3 * PS, b"z")
    k.madvise(p.dst, HP, MADV_DONTNEED)
    p.uffd.register(p.dst, p.size)
    p.uffd.move(p.dst, p.src, HP)
    assert state(k, p.dst) == ("thp", True)


def test_mremap_moves_a_thp_whole_when_aligned(k):
    a = huge_map(k)
    k.store(a, b"a")
    frame = k.page_info(a).frame
    target = k.mmap(4 * HP, align=HP)
    k.munmap(target, 4 * HP)
    k.mremap(a, HP, target)
    assert state(k, target) == ("thp", True) and k.page_info(target).frame == frame


def test_mremap_to_an_unaligned_address_splits_the_pmd(k):
    a = huge_map(k)
    k.store(a, b"a")
    target = k.mmap(4 * HP, align=HP)
    k.munmap(target, 4 * HP)
    k.mremap(a, HP, target + PS)
    assert state(k, target + PS) == ("thp", False)
    assert k.load(target + PS, 1) == b"a"


# --- the lifetime of a partly unmapped folio (Linux frees a folio whole, or its pages once split) ---
def test_a_partly_unmapped_thp_keeps_every_frame_until_its_last_page_goes(k):
    a = huge_map(k, regions=1)
    k.store(a, b"x" * HP)
    k.munmap(a, PS)  # its first page: the folio stays large and allocated whole
    assert k.frames.allocated == 512
    assert state(k, a + PS) == ("thp", False)
    k.munmap(a + PS, HP - PS)
    assert k.frames.allocated == 0


def test_splitting_a_partly_unmapped_thp_frees_its_unmapped_and_zero_filled_pages(k, uffd):
    a = huge_map(k, regions=1)
    k.store(a, b"x" * (4 * PS))  # pages 4..511 stay zero-filled
    k.munmap(a, PS)
    dst = k.mmap(8 * PS)
    uffd.register(dst, 8 * PS)
    assert uffd.move(dst, a + PS, PS) == PS  # splits the folio first
    assert k.frames.allocated == 3  # a+1 (now at dst), a+2, a+3; the rest freed or the zero page
    assert [state(k, a + i * PS) for i in (2, 4)] == [("present", False), ("zero", False)]
