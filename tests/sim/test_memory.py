"""User-mode memory access, introspection, fork/COW and memory cost on the simulator.

First touch and the EFAULT of each access are tested on every backend in
tests/kernel/test_kernel_memory.py and tests/bad_input/.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from heap.kernel import PROT_READ
from sim_backend import SimKernel
from sim_backend.kernel import _LONG_RANGE_PAGES

from .conftest import HP, PS, errno_of

pytestmark = pytest.mark.timeout(60)


def test_store_load_round_trip_across_pages(k):
    a = k.mmap(4 * PS)
    data = bytes(range(256)) * 40
    k.store(a + 100, data)
    assert k.load(a + 100, len(data)) == data
    assert k.load(a, 100) == b"\0" * 100


def test_read_maps_the_zero_page_and_costs_nothing(k):
    a = k.mmap(64 * PS)
    assert k.load(a, 64 * PS) == b"\0" * 64 * PS
    assert k.resident_bytes(a, 64 * PS) == 0
    assert k.host_bytes() == 0


def test_store_words_writes_the_words_before_the_faulting_one(k):
    a = k.mmap(4 * PS)
    k.mprotect(a + 2 * PS, 2 * PS, PROT_READ)
    addrs = np.array([a, a + PS, a + 2 * PS, a + 8], np.uint64)
    assert errno_of(lambda: k.store_words(addrs, np.array([1, 2, 3, 4], np.uint64))) == errno.EFAULT
    assert list(k.load_words(np.array([a, a + PS, a + 8], np.uint64))) == [1, 2, 0]


def test_words_vectorised_and_in_order(k):
    a = k.mmap(2 * HP)
    rng = np.random.default_rng(1)
    addrs = (a + rng.integers(0, 2 * HP // 8, 5000) * 8).astype(np.uint64)
    values = rng.integers(0, 1 << 63, 5000).astype(np.uint64)
    k.store_words(addrs, values)
    last = {int(x): int(v) for x, v in zip(addrs, values)}  # a repeated address keeps the last value
    got = k.load_words(np.array(sorted(last), np.uint64))
    assert list(got) == [last[x] for x in sorted(last)]


def test_unaligned_words(k):
    a = k.mmap(2 * PS)
    k.store_words(np.array([a + PS - 4], np.uint64), np.array([0x1122334455667788], np.uint64))
    assert k.load(a + PS - 4, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert k.load_words(np.array([a + PS - 4], np.uint64))[0] == 0x1122334455667788


COPIES = [
    ("aligned, disjoint", [0, 64, 128], [4096, 4160, 8000], [64, 64, 64]),
    ("crossing page boundaries", [4000, 12280], [20480, 28664], [200, 48]),
    ("unaligned lengths", [3, 70], [9000, 9100], [5, 17]),
    ("overlapping, in order", [100, 50], [0, 100], [200, 200]),
    ("large", [0], [40960], [3 * PS + 8]),
    ("sliding down, overlapping earlier sources", [0, 64, 128], [32, 160, 300], [64, 64, 100]),
    ("sliding up inside one range", [40], [0], [5000]),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dsts,srcs,lengths", [c[1:] for c in COPIES], ids=[c[0] for c in COPIES])
def test_copy_ranges_is_a_sequence_of_memmoves(dsts, srcs, lengths, compiled):
    k1, k2 = SimKernel(compiled=compiled), SimKernel()
    blob = np.random.default_rng(2).integers(0, 256, 16 * PS, dtype=np.uint8).tobytes()
    bases = []
    for kk in (k1, k2):
        b = kk.mmap(16 * PS)
        kk.store(b, blob)
        bases.append(b)
    k1.copy_ranges([bases[0] + d for d in dsts], [bases[0] + s for s in srcs], lengths)
    for d, s, n in zip(dsts, srcs, lengths):
        k2.memmove(bases[1] + d, bases[1] + s, n)
    assert k1.load(bases[0], 16 * PS) == k2.load(bases[1], 16 * PS)


@pytest.mark.parametrize("call", [lambda k, d, s, n: k.memmove(d, s, n), lambda k, d, s, n: k.copy_ranges([d], [s], [n])],
                         ids=["memmove", "copy_ranges"])
def test_a_huge_copy_faults_in_the_pages_before_its_hole_then_efaults(k, call):
    # the sim cuts a long range after its first unmapped page instead of listing 2**28 pages
    n = 2 * _LONG_RANGE_PAGES
    src = k.mmap((n + 1) * PS)
    k.munmap(src + n * PS, PS)
    dst = k.mmap(PS)
    assert errno_of(lambda: call(k, dst, src, 1 << 40)) == errno.EFAULT
    assert {k.page_info(src + i * PS).state for i in (0, n // 2, n - 1)} == {"zero"}


def test_memmove_overlapping_forward_and_back(k):
    a = k.mmap(2 * PS)
    k.store(a, bytes(range(100)))
    k.memmove(a + 10, a, 50)
    assert k.load(a + 10, 50) == bytes(range(50))
    k.memmove(a, a + 10, 50)
    assert k.load(a, 50) == bytes(range(50))


def test_page_frames_and_resident_bytes(k):
    a = k.mmap(8 * PS)
    k.store(a + PS, b"x")
    k.load(a + 2 * PS, 1)
    frames = k.page_frames(a, 4)
    assert frames[0] == -1 and frames[1] == k.page_info(a + PS).frame and frames[2] == k.page_info(a + 2 * PS).frame
    assert k.resident_bytes(a, 8 * PS) == PS  # the zero page is not resident


# --- fork and copy-on-write ---------------------------------------------------------------
def test_fork_shares_pages_and_a_write_copies(k):
    a = k.mmap(4 * PS)
    k.store(a, b"before")
    frame = k.page_info(a).frame
    child = k.fork()
    assert not k.page_info(a).exclusive and k.page_info(a).frame == frame
    k.store(a, b"after!")
    info = k.page_info(a)
    assert info.exclusive and info.frame != frame
    assert k.counters.bytes_copied == PS
    child.exit()


def test_after_child_exit_page_is_single_mapped_but_not_anon_exclusive(k):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    frame = k.page_info(a).frame
    k.fork().exit()
    assert k.page_info(a).exclusive  # pagemap's view: mapped once
    assert not k.frames.excl[frame]  # but MOVE still sees it shared (EBUSY) until written
    k.store(a, b"y")
    assert k.page_info(a).frame == frame and k.frames.excl[frame]
    assert k.counters.bytes_copied == 0  # reused, not copied


def test_child_exit_frees_frames_the_parent_dropped(k):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    child = k.fork()
    in_use = k.frames.allocated
    k.munmap(a, 4 * PS)
    assert k.frames.allocated == in_use  # the child still holds the page
    child.exit()
    assert k.frames.allocated == in_use - 1
    child.exit()  # idempotent


def test_pinned_page_is_copied_for_the_child_at_fork(k):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    k.pin(a)
    child = k.fork()
    assert k.page_info(a).exclusive and k.frames.excl[k.page_info(a).frame]
    child.exit()


def test_shared_mapping_is_not_cow(k):
    a = k.mmap(4 * PS, shared=True)
    k.store(a, b"x")
    frame = k.page_info(a).frame
    child = k.fork()
    k.store(a, b"y")
    assert k.page_info(a).frame == frame
    child.exit()


def test_large_address_space_costs_only_what_is_written():
    k = SimKernel()
    a = k.mmap(1 << 30)
    pages = np.arange(a, a + (64 << 20), PS, dtype=np.uint64)
    k.store_words(pages, pages)
    k.load(a + (512 << 20), 1 << 20)
    assert k.host_bytes() == 64 << 20
    assert k.resident_bytes(a, 1 << 30) == 64 << 20


def test_demand_fill_counter(k):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    k.load(a + PS, 1)
    assert k.counters.demand_faults == 2
    assert k.counters.as_dict()["demand_faults"] == 2 == k.counters["demand_faults"]


def _layout(k):
    """A THP-advised VMA, a plain one with one page already COW-shared, and a read-only one."""
    from heap.kernel import MADV_HUGEPAGE

    a = k.mmap(4 * HP, align=HP)
    k.madvise(a, 2 * HP, MADV_HUGEPAGE)
    k.store(a + 2 * HP + 5 * PS, b"x")
    child = k.fork()
    r = k.mmap(64 * PS, PROT_READ)
    return a, r, child


@pytest.mark.parametrize("write", [True, False], ids=["stores", "loads"])
def test_many_faults_at_once_match_one_at_a_time(write):
    one, many = SimKernel(), SimKernel()
    (a1, r1, c1), (a2, r2, c2) = _layout(one), _layout(many)
    offsets = np.arange(0, 4 * HP, 3 * PS + 8, dtype=np.uint64)
    for off in offsets.tolist():
        if write:
            one.store_words(np.array([a1 + off], np.uint64), np.array([off], np.uint64))
        else:
            one.load_words(np.array([a1 + off], np.uint64))
    if write:
        many.store_words(a2 + offsets, offsets)
    else:
        many.load_words(a2 + offsets)
        many.load(r2, 64 * PS)
        one.load(r1, 64 * PS)
    states = lambda k, a: [(i.state, i.huge, i.exclusive) for i in (k.page_info(a + p * PS) for p in range(0, 2048, 7))]
    assert states(one, a1) == states(many, a2)
    assert one.load(a1, 4 * HP) == many.load(a2, 4 * HP)
    assert one.counters.bytes_copied == many.counters.bytes_copied
    c1.exit()
    c2.exit()
