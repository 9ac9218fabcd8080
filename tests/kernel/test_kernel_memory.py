"""User-mode accesses and page introspection, on each backend (their bad input: tests/bad_input/)."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from heap.kernel import MADV_DONTNEED
from tests.kernel.kernel_helpers import RESIDENT_LAYOUTS, layout_pages

PS = 4096


def test_store_then_load_round_trips_bytes(k, mem):
    a = mem(4)
    k.store(a + 100, b"remapgc")
    assert k.load(a + 100, 7) == b"remapgc"
    assert k.load(a, 4) == b"\0\0\0\0"


def test_page_info_follows_first_touch(k, mem):
    a = mem(2)
    assert k.page_info(a).state == "none"
    k.load(a, 1)
    assert k.page_info(a).state == "zero"
    k.store(a + PS, b"x")
    info = k.page_info(a + PS)
    assert info.state == "present" and info.frame is not None and info.exclusive and not info.huge


def test_words_round_trip_and_memmove(k, mem):
    a = mem(4)
    addrs = np.arange(a, a + 4 * PS, 512, dtype=np.uint64)
    k.store_words(addrs, np.arange(addrs.size, dtype=np.uint64) * 3)
    assert (k.load_words(addrs) == np.arange(addrs.size, dtype=np.uint64) * 3).all()
    k.memmove(a + PS, a, PS)
    assert k.load(a + PS, PS) == k.load(a, PS)


def test_madvise_dontneed_drops_the_frame(k, mem):
    a = mem(8)
    k.store(a, b"x" * (8 * PS))
    assert k.resident_bytes(a, 8 * PS) == 8 * PS
    k.madvise(a, 8 * PS, MADV_DONTNEED)
    assert k.resident_bytes(a, 8 * PS) == 0
    assert (k.page_frames(a, 8) == -1).all()


@pytest.mark.parametrize("name,layout", RESIDENT_LAYOUTS, ids=[n for n, _ in RESIDENT_LAYOUTS])
def test_resident_bytes_counts_private_frames_not_the_zero_page(k, mem, name, layout):
    n = 2048
    a = mem(n)
    layout_pages(k, a, n, layout)
    written = sum(1 for i in range(n) if layout[i % len(layout)] == "w")
    inner = sum(1 for i in range(3, n - 2) if layout[i % len(layout)] == "w")
    assert k.resident_bytes(a, n * PS) == written * PS
    assert k.resident_bytes(a + 3 * PS, (n - 5) * PS) == inner * PS


def test_resident_bytes_counts_a_thp_and_not_the_huge_zero_page(k):
    from heap.kernel import MADV_HUGEPAGE

    two = 2 << 20
    a = k.mmap(4 * two, align=two)
    try:
        k.madvise(a, 4 * two, MADV_HUGEPAGE)
        k.load(a, 1)  # read fault on an empty aligned 2 MiB: the huge zero page
        k.store(a + two, b"\x01")  # write fault: a THP
        if not k.page_info(a + two).huge:
            pytest.fail("no THP was mapped on a MADV_HUGEPAGE write fault")
        assert k.resident_bytes(a, 4 * two) == two
    finally:
        k.munmap(a, 4 * two)



@pytest.mark.parametrize("noreserve, merged", [(False, True), (True, False)], ids=["both-reserved", "one-noreserve"])
def test_noreserve_is_a_vma_flag_that_keeps_neighbours_apart(k, noreserve, merged):
    # VM_NORESERVE is part of a VMA's flags: a mapping placed right after a reserved one
    # merges with it only if it is reserved too. A ZEROPAGE must lie in one VMA, so it
    # tells: over both halves it succeeds after a merge, and is ENOENT without one.
    a = k.mmap(4 * PS)
    try:
        k.munmap(a + 2 * PS, 2 * PS)
        assert k.mmap(2 * PS, at=a + 2 * PS, noreserve=noreserve) == a + 2 * PS
        uffd = k.userfaultfd()
        try:
            uffd.register(a, 4 * PS)
            if merged:
                assert uffd.zeropage(a, 4 * PS) == 4 * PS
            else:
                with pytest.raises(OSError) as err:
                    uffd.zeropage(a, 4 * PS)
                assert err.value.errno == errno.ENOENT
            uffd.unregister(a, 4 * PS)
            k.store(a + 3 * PS, b"n")  # memory of a noreserve mapping behaves as any other
            assert k.load(a + 3 * PS, 1) == b"n"
        finally:
            uffd.close()
    finally:
        k.munmap(a, 4 * PS)
