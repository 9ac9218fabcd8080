"""install_page_range: every answer of UFFDIO_MOVE, on each backend."""

from __future__ import annotations

import numpy as np
import pytest

from heap import HeapCorrupted
from heap.install import InstallCounters, install_page_range

PAGES = 8


@pytest.fixture
def spaces(kernel):
    """A populated source range and an empty registered destination."""
    ps = kernel.page_size
    src = kernel.mmap(PAGES * ps)
    dst = kernel.mmap(PAGES * ps)
    uffd = kernel.userfaultfd()
    uffd.register(dst, PAGES * ps)
    yield kernel, uffd, src, dst
    uffd.close()
    kernel.munmap(src, PAGES * ps)
    kernel.munmap(dst, PAGES * ps)


def fill(kernel, src, pages):
    ps = kernel.page_size
    for i in pages:
        kernel.store(src + i * ps, b"page%02d" % i)


def check(kernel, dst, pages):
    ps = kernel.page_size
    for i in pages:
        assert kernel.load(dst + i * ps, 6) == b"page%02d" % i


@pytest.mark.timeout(30)
def test_whole_range_moves_zero_copy(spaces):
    kernel, uffd, src, dst = spaces
    fill(kernel, src, range(PAGES))
    frames = kernel.page_frames(src, PAGES)
    c = InstallCounters()
    install_page_range(kernel, uffd, dst, src, PAGES * kernel.page_size, c)
    check(kernel, dst, range(PAGES))
    assert np.array_equal(kernel.page_frames(dst, PAGES), frames)
    assert (c.pages_moved, c.ioctls, c.bytes_copied) == (PAGES, 1, 0)


@pytest.mark.timeout(30)
def test_hole_without_allow_src_holes_resumes_after_a_partial_move(spaces):
    kernel, uffd, src, dst = spaces
    fill(kernel, src, [0, 1, 2, 4, 5, 6, 7])  # page 3 is a hole
    c = InstallCounters()
    install_page_range(kernel, uffd, dst, src, PAGES * kernel.page_size, c, mode=0)
    check(kernel, dst, [0, 1, 2, 4, 5, 6, 7])
    assert kernel.load(dst + 3 * kernel.page_size, 6) == bytes(6)
    assert c.partial_moves == 1 and c.zero_filled == 1 and c.pages_moved == 7


@pytest.mark.timeout(30)
def test_page_installed_by_someone_else_counts_as_a_race(spaces):
    kernel, uffd, src, dst = spaces
    ps = kernel.page_size
    fill(kernel, src, range(PAGES))
    uffd.move(dst + 2 * ps, src + 2 * ps, ps)  # another installer won page 2
    c = InstallCounters()
    install_page_range(kernel, uffd, dst, src, PAGES * ps, c)
    check(kernel, dst, range(PAGES))
    assert c.eexist_races == 1 and c.pages_moved == PAGES - 1


@pytest.mark.timeout(30)
def test_populated_destination_with_its_source_still_there_is_corruption(spaces):
    kernel, uffd, src, dst = spaces
    ps = kernel.page_size
    fill(kernel, src, range(PAGES))
    uffd.zeropage(dst + 5 * ps, ps)
    with pytest.raises(HeapCorrupted, match="install"):
        install_page_range(kernel, uffd, dst, src, PAGES * ps, InstallCounters())


@pytest.mark.timeout(30)
def test_pages_shared_with_a_child_are_copied(spaces):
    kernel, uffd, src, dst = spaces
    ps = kernel.page_size
    fill(kernel, src, range(PAGES))
    kernel.store(src + 6 * ps, b"page06")
    child = kernel.fork()
    try:
        kernel.store(src + 6 * ps, b"page06")  # a parent write makes page 6 exclusive again
        c = InstallCounters()
        install_page_range(kernel, uffd, dst, src, PAGES * ps, c)
    finally:
        child.exit()
    check(kernel, dst, range(PAGES))
    assert c.ebusy_fallbacks == PAGES - 1 and c.pages_moved == 1
    assert c.bytes_copied == (PAGES - 1) * ps


@pytest.mark.timeout(30)
def test_a_refused_copy_fallback_reports_the_pages_installed_before_it(sim_kernel):
    """EBUSY at page 1 is copied; EBUSY again at page 3 and its COPY refused
    (ENOMEM): the interruption must count pages 0-2 as done, including the
    copied page 1, whose source is still there (a re-install would meet
    EEXIST with the source present and call it corruption)."""
    from heap.install import InstallInterrupted
    from sim_backend.faultplan import FaultRule

    kernel = sim_kernel
    ps = kernel.page_size
    src, dst = kernel.mmap(PAGES * ps), kernel.mmap(PAGES * ps)
    uffd = kernel.userfaultfd()
    uffd.register(dst, PAGES * ps)
    fill(kernel, src, range(PAGES))
    # a pinned page stops a MOVE after the pages before it (EAGAIN) and
    # refuses it when it comes first (EBUSY): pages 1 and 3 need the fallback
    for call, page in ((0, 1), (1, 0), (2, 1), (3, 0)):
        kernel.fault_plan.add(FaultRule("pinned", op="move", call=call, page=page))
    kernel.fault_plan.add(FaultRule("enomem", op="copy", call=1, page=0))
    with pytest.raises(InstallInterrupted) as caught:
        install_page_range(kernel, uffd, dst, src, PAGES * ps, InstallCounters())
    assert caught.value.done == 3 * ps
    check(kernel, dst, range(3))
    assert kernel.page_info(dst + 3 * ps).state == "none"
