"""UFFDIO_MOVE on each backend: zero-copy, the partial-move convention, every errno.

The expected outcomes are the real kernel's, checked on this machine with the
Linux backend; the simulator must reproduce them (the same test, both backends).
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from heap.kernel import (
    HPAGE_SIZE,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    PAGE_SIZE,
    PROT_READ,
    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
    UffdError,
)

PS, MIB2 = PAGE_SIZE, HPAGE_SIZE


def expect_uffd_error(call, err: int, moved: int = 0) -> UffdError:
    with pytest.raises(UffdError) as exc:
        call()
    assert (exc.value.errno, exc.value.moved) == (err, moved), str(exc.value)
    return exc.value


def test_move_of_1024_pages_is_zero_copy(k, mem, uffd):
    n = 1024
    src, dst = mem.filled(n), mem(n)
    frames = k.page_frames(src, n)
    assert (frames > 0).all()
    uffd.register(dst, n * PS)

    assert uffd.move(dst, src, n * PS) == n * PS

    assert (k.page_frames(dst, n) == frames).all()
    assert all(k.load(dst + i * PS, 10) == b"page%06d" % i for i in range(n))
    assert (k.page_frames(src, n) == -1).all()
    assert k.page_info(src).state == "none"
    assert k.resident_bytes(src, n * PS) == 0 and k.resident_bytes(dst, n * PS) == n * PS


def test_move_there_and_back_keeps_frames(k, mem, uffd):
    src, dst = mem.filled(8), mem(8)
    frames = k.page_frames(src, 8)
    uffd.register(dst, 8 * PS)
    uffd.register(src, 8 * PS)
    uffd.move(dst, src, 8 * PS)
    uffd.move(src, dst, 8 * PS)
    assert (k.page_frames(src, 8) == frames).all()


@pytest.mark.parametrize("k_populated", [1, 3, 7], ids=lambda k: f"dst_page_{k}_populated")
def test_partial_move_is_eagain_with_bytes_moved_then_eexist(k, mem, uffd, k_populated):
    src, dst = mem.filled(8), mem(8)
    k.store(dst + k_populated * PS, b"occupied")
    uffd.register(dst, 8 * PS)

    err = expect_uffd_error(lambda: uffd.move(dst, src, 8 * PS), errno.EAGAIN, moved=k_populated * PS)

    resume = err.moved
    expect_uffd_error(lambda: uffd.move(dst + resume, src + resume, 8 * PS - resume), errno.EEXIST)
    assert k.load(dst + k_populated * PS, 8) == b"occupied"
    assert k.load(dst, 10) == b"page000000"


def test_src_hole_is_enoent(k, mem, uffd):
    src, dst = mem(4), mem(4)  # src never touched: no page table at all
    uffd.register(dst, 4 * PS)
    expect_uffd_error(lambda: uffd.move(dst, src, 4 * PS), errno.ENOENT)


def test_src_hole_after_progress_is_partial_then_enoent(k, mem, uffd):
    src, dst = mem.filled(4), mem(4)
    k.madvise(src + 2 * PS, PS, MADV_DONTNEED)
    uffd.register(dst, 4 * PS)
    expect_uffd_error(lambda: uffd.move(dst, src, 4 * PS), errno.EAGAIN, moved=2 * PS)
    expect_uffd_error(lambda: uffd.move(dst + 2 * PS, src + 2 * PS, 2 * PS), errno.ENOENT)


def test_allow_src_holes_moves_pages_and_keeps_holes(k, mem, uffd):
    src, dst = mem.filled(4), mem(4)
    k.madvise(src + PS, PS, MADV_DONTNEED)
    frames = k.page_frames(src, 4)
    uffd.register(dst, 4 * PS)

    assert uffd.move(dst, src, 4 * PS, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES) == 4 * PS

    assert (k.page_frames(dst, 4) == frames).all()
    assert k.page_info(dst + PS).state == "none"


def test_zero_page_src_moves_as_zero_page(k, mem, uffd):
    src, dst = mem(1), mem(1)
    k.load(src, 1)
    assert k.page_info(src).state == "zero"
    uffd.register(dst, PS)
    uffd.move(dst, src, PS)
    assert k.page_info(dst).state == "zero" and k.page_info(src).state == "none"


# --- EINVAL: each check of the ioctl, one case each ------------------------------
def _einval_unaligned_dst(k, mem, uffd):
    src, dst = mem.filled(2), mem(2)
    uffd.register(dst, 2 * PS)
    return dst + 8, src, PS, 0


def _einval_unaligned_src(k, mem, uffd):
    src, dst = mem.filled(2), mem(2)
    uffd.register(dst, 2 * PS)
    return dst, src + 8, PS, 0


def _einval_unaligned_len(k, mem, uffd):
    src, dst = mem.filled(2), mem(2)
    uffd.register(dst, 2 * PS)
    return dst, src, PS + 8, 0


def _einval_len_zero(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    uffd.register(dst, PS)
    return dst, src, 0, 0


def _einval_unknown_mode_bit(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    uffd.register(dst, PS)
    return dst, src, PS, 1 << 2


def _einval_dst_not_registered(k, mem, uffd):
    return mem(1), mem.filled(1), PS, 0


def _einval_dst_registered_with_another_uffd(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    other = k.userfaultfd()
    mem.on_close(other.close)
    other.register(dst, PS)
    return dst, src, PS, 0


def _einval_src_read_only(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    k.mprotect(src, PS, PROT_READ)
    uffd.register(dst, PS)
    return dst, src, PS, 0


def _einval_both_read_only(k, mem, uffd):
    src, dst = mem.filled(1), mem(1, prot=PROT_READ)
    k.mprotect(src, PS, PROT_READ)
    uffd.register(dst, PS)
    return dst, src, PS, 0


def _einval_src_shmem(k, mem, uffd):
    src, dst = mem.filled(1, shared=True), mem(1)
    uffd.register(dst, PS)
    return dst, src, PS, 0


def _einval_dst_shmem(k, mem, uffd):
    dst = mem(1, shared=True)
    uffd.register(dst, PS)  # shmem registers fine; MOVE refuses it
    return dst, mem.filled(1), PS, 0


def _einval_src_range_spans_two_vmas(k, mem, uffd):
    src, dst = mem.filled(2), mem(2)
    k.mprotect(src + PS, PS, PROT_READ)  # splits the VMA in two
    uffd.register(dst, 2 * PS)
    return dst, src, 2 * PS, 0


def _einval_dst_locked_src_not(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    uffd.register(dst, PS)
    k.mlock(dst, PS, onfault=True)
    return dst, src, PS, 0


EINVAL_CASES = [
    _einval_unaligned_dst, _einval_unaligned_src, _einval_unaligned_len, _einval_len_zero,
    _einval_unknown_mode_bit, _einval_dst_not_registered, _einval_dst_registered_with_another_uffd,
    _einval_src_read_only, _einval_both_read_only, _einval_src_shmem, _einval_dst_shmem,
    _einval_src_range_spans_two_vmas, _einval_dst_locked_src_not,
]


@pytest.mark.parametrize("case", EINVAL_CASES, ids=lambda f: f.__name__.removeprefix("_einval_"))
def test_einval_before_any_progress(k, mem, uffd, case):
    dst, src, length, mode = case(k, mem, uffd)
    src_frame = k.page_info(src).frame
    expect_uffd_error(lambda: uffd.move(dst, src, length, mode), errno.EINVAL)
    assert k.page_info(src).frame == src_frame  # nothing moved


def test_dst_unmapped_is_enoent(k, mem, uffd):
    src = mem.filled(1)  # mapped first: a later mmap may fill the hole
    expect_uffd_error(lambda: uffd.move(mem.hole(), src, PS), errno.ENOENT)


# --- EBUSY: pages shared with a forked child ------------------------------------
def test_page_shared_with_child_is_ebusy_until_child_exits_and_parent_writes(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    uffd.register(dst, PS)
    child = k.fork()
    try:
        assert not k.page_info(src).exclusive
        expect_uffd_error(lambda: uffd.move(dst, src, PS), errno.EBUSY)
    finally:
        child.exit()
    # the child is gone but the page is still marked shared until a write fault
    expect_uffd_error(lambda: uffd.move(dst, src, PS), errno.EBUSY)
    k.store(src + 100, b"mine again")
    assert k.page_info(src).exclusive
    assert uffd.move(dst, src, PS) == PS
    assert k.load(dst, 10) == b"page000000" and k.load(dst + 100, 10) == b"mine again"


def test_shared_page_after_progress_is_partial_then_ebusy(k, mem, uffd):
    src, dst = mem.filled(2), mem(2)
    uffd.register(dst, 2 * PS)
    child = k.fork()
    try:
        k.store(src, b"cow-broken")  # page 0 is ours alone again; page 1 stays shared
        expect_uffd_error(lambda: uffd.move(dst, src, 2 * PS), errno.EAGAIN, moved=PS)
        expect_uffd_error(lambda: uffd.move(dst + PS, src + PS, PS), errno.EBUSY)
    finally:
        child.exit()


def test_madv_dontfork_page_moves_while_a_child_lives(k, mem, uffd):
    src, dst = mem.filled(1), mem(1)
    k.madvise(src, PS, MADV_DONTFORK)
    uffd.register(dst, PS)
    child = k.fork()
    try:
        assert uffd.move(dst, src, PS) == PS
    finally:
        child.exit()


# --- THP ---------------------------------------------------------------------------
def _thp_region(k, mem, *, every_page: bool = True) -> int:
    """A PMD-mapped transparent huge page (2 MiB aligned), every 4 KiB page written."""
    src = mem(MIB2 // PS, align=MIB2)
    k.madvise(src, MIB2, MADV_HUGEPAGE)
    k.store(src, b"thp")
    if every_page:
        pages = np.arange(src + 8, src + MIB2, PS, dtype=np.uint64)
        k.store_words(pages, pages)
    k.store(src + MIB2 - 3, b"end")
    info = k.page_info(src)
    assert info.state == "thp" and info.huge, f"no THP for the test: {info}"
    return src


def test_thp_moved_aligned_stays_a_pmd_mapped_thp_with_the_same_frames(k, mem, uffd):
    src = _thp_region(k, mem)
    dst = mem(MIB2 // PS, align=MIB2)
    frames = k.page_frames(src, MIB2 // PS)
    uffd.register(dst, MIB2)

    assert uffd.move(dst, src, MIB2) == MIB2

    info = k.page_info(dst + 17 * PS)
    assert info.state == "thp" and info.huge
    assert (k.page_frames(dst, MIB2 // PS) == frames).all()
    assert k.load(dst, 3) == b"thp" and k.load(dst + MIB2 - 3, 3) == b"end"
    assert k.page_info(src).state == "none"


def test_thp_moved_to_unaligned_dst_is_split_into_small_pages(k, mem, uffd):
    src = _thp_region(k, mem)
    dst_region = mem(2 * MIB2 // PS, align=MIB2)
    dst = dst_region + PS
    frames = k.page_frames(src, MIB2 // PS)
    uffd.register(dst_region, 2 * MIB2)

    assert uffd.move(dst, src, MIB2) == MIB2

    assert (k.page_frames(dst, MIB2 // PS) == frames).all()
    infos = [k.page_info(dst + i * PS) for i in (0, 255, 511)]
    assert all(i.state == "present" and not i.huge for i in infos), infos
    assert k.load(dst, 3) == b"thp"


def test_thp_split_by_a_move_maps_its_zero_filled_pages_to_the_zero_page(k, mem, uffd):
    # Observed on 6.18: splitting the folio remaps subpages that hold only
    # zeros to the shared zero page, so only written pages keep their frames.
    src = _thp_region(k, mem, every_page=False)  # only the first and last pages written
    dst_region = mem(2 * MIB2 // PS, align=MIB2)
    dst = dst_region + PS
    frames = k.page_frames(src, MIB2 // PS)
    uffd.register(dst_region, 2 * MIB2)

    assert uffd.move(dst, src, MIB2) == MIB2

    moved = k.page_frames(dst, MIB2 // PS)
    assert moved[0] == frames[0] and moved[-1] == frames[-1]
    assert k.page_info(dst + 100 * PS).state == "zero"
    assert k.resident_bytes(dst, MIB2) == 2 * PS
    assert k.load(dst + 100 * PS, 8) == bytes(8)


def test_huge_zero_page_is_reported_zero_and_huge(k, mem):
    src = mem(MIB2 // PS, align=MIB2)
    k.madvise(src, MIB2, MADV_HUGEPAGE)
    k.load(src, 1)
    info = k.page_info(src)
    assert info.state == "zero" and info.huge
    assert k.resident_bytes(src, MIB2) == 0


def test_move_into_populated_thp_dst_is_eexist(k, mem, uffd):
    src = _thp_region(k, mem)
    dst = _thp_region(k, mem)
    src_frames, dst_frames = k.page_frames(src, MIB2 // PS), k.page_frames(dst, MIB2 // PS)
    uffd.register(dst, MIB2)
    expect_uffd_error(lambda: uffd.move(dst, src, MIB2), errno.EEXIST)
    assert np.array_equal(k.page_frames(src, MIB2 // PS), src_frames)
    assert np.array_equal(k.page_frames(dst, MIB2 // PS), dst_frames)


# --- move_ranges: many MOVEs in one call ---------------------------------------------
def test_move_ranges_moves_every_range_zero_copy(k, mem, uffd):
    src, dst = mem.filled(8), mem(8)
    frames = k.page_frames(src, 8)
    uffd.register(dst, 8 * PS)
    order = np.array([3, 0, 7, 1, 2, 6, 4, 5], dtype=np.uint64)  # dst page i gets src page order[i]
    dsts = dst + np.arange(8, dtype=np.uint64) * PS
    assert uffd.move_ranges(dsts, src + order * PS, np.full(8, PS, dtype=np.uint64)) == 8 * PS
    assert (k.page_frames(dst, 8) == frames[order.astype(np.int64)]).all()


def test_move_ranges_stops_at_the_failing_range_and_names_it(k, mem, uffd):
    src, dst = mem.filled(4), mem(4)
    k.store(dst + 2 * PS, b"occupied")
    frames = k.page_frames(src, 4)
    uffd.register(dst, 4 * PS)
    dsts = dst + np.arange(4, dtype=np.uint64) * PS
    srcs = src + np.arange(4, dtype=np.uint64) * PS
    with pytest.raises(UffdError) as exc:
        uffd.move_ranges(dsts, srcs, np.full(4, PS, dtype=np.uint64))
    assert (exc.value.errno, exc.value.moved, exc.value.index) == (errno.EEXIST, 0, 2)
    assert (k.page_frames(dst, 2) == frames[:2]).all()  # the ranges before it were moved
    assert (k.page_frames(src + 2 * PS, 2) == frames[2:]).all()  # the failing one and the rest were not


def test_pte_mapped_large_folio_is_thp_but_not_huge(k, mem):
    src = _thp_region(k, mem)
    frames = k.page_frames(src, MIB2 // PS)
    k.mprotect(src + 100 * PS, PS, PROT_READ)  # splits the PMD mapping, not the folio
    info = k.page_info(src + 5 * PS)
    assert info.state == "thp" and not info.huge
    assert (k.page_frames(src, MIB2 // PS) == frames).all()
