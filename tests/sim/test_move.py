"""UFFDIO_MOVE on the simulator: validation order, the per-PMD / per-PTE loop, return convention.

Each case names one behaviour of shared/design/uffdio_move_semantics.md. What
every backend must do (zero-copy, the partial-move convention, each errno) is
tested once on all of them in tests/kernel/test_kernel_move.py and
tests/bad_input/; this file keeps the orderings and corner cases beyond those,
and what only the simulator can show (its counters, pmd_kind).
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from heap.kernel import (
    MADV_DONTNEED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES as HOLES,
    UFFDIO_REGISTER_MODE_WP,
)

from .conftest import HP, PS, outcome

# a store into a registered missing page would block: fail fast instead of hanging
pytestmark = pytest.mark.timeout(30)




# --- validation: V4..V6 and M1..M8, in order ------------------------------------------


def _v_dst_beyond_task_size(k, u, p):
    return u.move(1 << 47, p.src, PS)


def _v_unknown_mode_before_unmapped_dst(k, u, p):
    return u.move(0x10000, p.src, PS, mode=1 << 5)


def _v_len_zero_before_unmapped_dst(k, u, p):
    return u.move(0x10000, p.src, 0)


def _m2_src_unmapped(k, u, p):
    return u.move(p.dst, 0x10000, PS)


def _m5_src_beyond_its_vma(k, u, p):
    return u.move(p.dst, p.src + p.size - PS, 2 * PS)


def _m7_dst_beyond_its_vma(k, u, p):
    return u.move(p.dst + p.size - PS, p.src, 2 * PS)


def _m8a_prot_differs(k, u, p):
    d = k.mmap(4 * PS, PROT_READ | PROT_WRITE | PROT_EXEC)
    u.register(d, 4 * PS)
    return u.move(d, p.src, PS)


def _m8b_locked_differs(k, u, p):
    k.store(p.src, b"x")
    k.mlock(p.src, PS)
    return u.move(p.dst, p.src, PS)


def _m8_wp_registration_is_enough(k, u, p):
    d = k.mmap(4 * PS)
    u.register(d, 4 * PS, UFFDIO_REGISTER_MODE_WP)
    k.store(p.src, b"x")
    return u.move(d, p.src, PS)


def _m8_lockonfault_not_compared(k, u, p):
    k.store(p.src, b"x")
    k.mlock(p.src, p.size)
    k.mlock(p.dst, p.size, onfault=True)
    return u.move(p.dst, p.src, PS)


VALIDATION = [
    ("V4 dst beyond TASK_SIZE", _v_dst_beyond_task_size, errno.EINVAL),
    ("V6 unknown mode before M1", _v_unknown_mode_before_unmapped_dst, errno.EINVAL),
    ("V4 len zero before M1", _v_len_zero_before_unmapped_dst, errno.EINVAL),
    ("M2 src unmapped", _m2_src_unmapped, errno.ENOENT),
    ("M5 src range leaves its VMA", _m5_src_beyond_its_vma, errno.EINVAL),
    ("M7 dst range leaves its VMA", _m7_dst_beyond_its_vma, errno.EINVAL),
    ("M8a protections differ", _m8a_prot_differs, errno.EINVAL),
    ("M8b VM_LOCKED differs", _m8b_locked_differs, errno.EINVAL),
    ("M8 WP-only registration is enough", _m8_wp_registration_is_enough, 0),
    ("M8 LOCKONFAULT is not compared", _m8_lockonfault_not_compared, 0),
]


@pytest.mark.parametrize("setup,expected", [(f, e) for _, f, e in VALIDATION], ids=[n for n, _, _ in VALIDATION])
def test_validation(k, uffd, pair, setup, expected):
    err, moved = outcome(lambda: setup(k, uffd, pair))
    assert err == expected
    if err:
        assert moved == 0


# --- the per-page loop, 4 KiB pages ----------------------------------------------------------
PTE_CASES = [
    # name, src pages written, extra setup, (dst_off, src_off, pages, mode), errno, moved pages
    ("whole untouched range with holes allowed", [], None, (0, 0, 4, HOLES), 0, None),
    ("dst populated at first page", [0, 1], "dst0", (0, 0, 2, 0), errno.EEXIST, 0),
    ("dst populated wins over src hole", [5], "dst0", (0, 0, 1, HOLES), errno.EEXIST, 0),
    ("dst populated, src never touched: src PMD wins", None, "dst0", (0, 0, 1, 0), errno.ENOENT, 0),
    ("pinned page", [0], "pin", (0, 0, 1, 0), errno.EBUSY, 0),
    ("DONTNEED'd source", [0], "dontneed0", (0, 0, 1, 0), errno.ENOENT, 0),
    ("DONTNEED'd source with holes allowed", [0], "dontneed0", (0, 0, 1, HOLES), 0, None),
    ("src == dst populated", None, "self", (0, 0, 1, 0), errno.EEXIST, 0),
]


def _prepare(k, u, p, extra):
    if extra == "dst0":
        u.unregister(p.dst, p.size)
        k.store(p.dst, b"d")
        u.register(p.dst, p.size)
    elif extra == "pin":
        k.pin(p.src)
    elif extra == "dontneed0":
        k.madvise(p.src, PS, MADV_DONTNEED)


@pytest.mark.parametrize("written,extra,call,err,moved", [c[1:] for c in PTE_CASES], ids=[c[0] for c in PTE_CASES])
def test_pte_loop(k, uffd, pair, written, extra, call, err, moved):
    if written:
        pair.fill(*written)
    _prepare(k, uffd, pair, extra)
    dst_off, src_off, pages, mode = call
    dst = pair.dst + dst_off * PS
    src = pair.src + src_off * PS
    if extra == "self":
        k.store(pair.src, b"s")
        uffd.register(pair.src, pair.size)
        dst = src
    before = k.page_frames(src, pages)
    got = outcome(lambda: uffd.move(dst, src, pages * PS, mode))
    done = pages if err == 0 else moved
    assert got == (err, done * PS)
    after = k.page_frames(dst, done)
    assert list(after) == list(before[:done]), "moved pages keep their frames (zero-copy)"


def test_overlap_dst_below_src_acts_as_forward_memmove(k, uffd, pair):
    pair.fill(4, 5, 6, 7, 8, 9, 10, 11)
    uffd.register(pair.src, pair.size)
    data = [k.load(pair.src + (4 + i) * PS, 1) for i in range(8)]
    uffd.move(pair.src + 2 * PS, pair.src + 4 * PS, 8 * PS)
    assert [k.load(pair.src + (2 + i) * PS, 1) for i in range(8)] == data
    assert k.page_info(pair.src + 10 * PS).state == "none"


def test_overlap_dst_above_src_is_eexist_at_first_page(k, uffd, pair):
    pair.fill(*range(8))
    uffd.register(pair.src, pair.size)
    assert outcome(lambda: uffd.move(pair.src + 2 * PS, pair.src, 8 * PS)) == (errno.EEXIST, 0)


def test_src_equal_dst_over_holes(k, uffd, pair):
    uffd.register(pair.src, pair.size)
    assert outcome(lambda: uffd.move(pair.src, pair.src, PS)) == (errno.ENOENT, 0)
    assert uffd.move(pair.src, pair.src, PS, HOLES) == PS


def test_batching_one_tlb_flush_per_pmd_of_src_and_dst(k, uffd):
    src = k.mmap(4 * HP, align=HP)
    dst = k.mmap(4 * HP, align=HP)
    uffd.register(dst, 4 * HP)
    n = 1024
    k.store_words(np.arange(src, src + n * PS, PS, dtype=np.uint64), np.arange(n, dtype=np.uint64))
    k.counters.reset()
    # src offset by 3 pages: batches end at the src boundary, then at the dst boundary
    uffd.move(dst + 5 * PS, src + 3 * PS, 1000 * PS)
    c = k.counters
    assert c.ptes_moved == 1000
    # dst: 5..512 | 512..1005 ; src: 3..512 | 512..1003 -> cuts at 509 (src) and 507 (dst) pages
    assert c.tlb_flushes == 3
    assert c.pmds_moved == 0


def test_batch_stops_at_a_page_shared_with_a_child(k, uffd, pair):
    pair.fill(0, 1, 2, 3)
    c = k.fork()
    k.store(pair.src, b"w")  # page 0 exclusive again (a COW copy), 1..3 still shared
    k.counters.reset()
    assert outcome(lambda: uffd.move(pair.dst, pair.src, 4 * PS)) == (errno.EAGAIN, PS)
    assert k.counters.tlb_flushes == 1
    c.exit()


def test_dst_pte_table_is_allocated_even_when_nothing_moves(k, uffd, pair):
    assert k.pmd_kind(pair.dst) == "none"
    assert outcome(lambda: uffd.move(pair.dst, pair.src + PS, PS, HOLES)) == (0, PS)
    assert k.pmd_kind(pair.dst) == "table"


