"""VMAs on the simulator: placement, split and merge, and the errnos of the mmap family.

The plain errnos of each call (unaligned, zero length, unmapped, unknown flag)
are tested on every backend in tests/bad_input/test_bad_kernel_calls.py; here
are the partial and ordering cases beyond them.
"""

from __future__ import annotations

import errno

import pytest

from heap.kernel import (
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)

from .conftest import HP, PS, errno_of

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def a(k):
    """16 pages with nothing mapped for 240 pages after them."""
    base = k.mmap(256 * PS)
    k.munmap(base + 16 * PS, 240 * PS)
    return base


ERRNOS = [
    ("mprotect unaligned", lambda k, a: k.mprotect(a + 1, PS, PROT_READ), errno.EINVAL),
    ("mprotect zero length", lambda k, a: k.mprotect(a, 0, PROT_READ), 0),
    ("mprotect running off the end", lambda k, a: k.mprotect(a + 15 * PS, 2 * PS, PROT_READ), errno.ENOMEM),
    ("madvise unaligned", lambda k, a: k.madvise(a + 1, PS, MADV_DONTNEED), errno.EINVAL),
    ("madvise unknown advice, zero length", lambda k, a: k.madvise(a, 0, 77), errno.EINVAL),
    ("madvise partly unmapped", lambda k, a: k.madvise(a + 15 * PS, 2 * PS, MADV_DONTNEED), errno.ENOMEM),
    ("madvise DONTNEED on locked memory", lambda k, a: (k.mlock(a, PS), k.madvise(a, PS, MADV_DONTNEED)), errno.EINVAL),
    ("madvise FREE on shared memory", lambda k, a: k.madvise(k.mmap(PS, shared=True), PS, MADV_FREE), errno.EINVAL),
    ("mlock unaligned is rounded", lambda k, a: k.mlock(a + 1, PS), 0),
    ("mlock PROT_NONE cannot populate", lambda k, a: k.mlock(k.mmap(PS, PROT_NONE), PS), errno.ENOMEM),
    ("munlock running off the end", lambda k, a: k.munlock(a + 15 * PS, 2 * PS), errno.ENOMEM),
    ("munmap of nothing", lambda k, a: k.munmap(a + 16 * PS, PS), 0),
    ("mremap onto itself", lambda k, a: k.mremap(a, PS, a), errno.EINVAL),
    ("mremap overlapping", lambda k, a: k.mremap(a, 8 * PS, a + 4 * PS), errno.EINVAL),
    ("mremap starting in a gap", lambda k, a: k.mremap(a - PS, 2 * PS, a + 100 * PS), errno.EFAULT),
    ("mremap past the end of the last VMA", lambda k, a: k.mremap(a, 32 * PS, a + 100 * PS), 0),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in ERRNOS], ids=[c[0] for c in ERRNOS])
def test_errno(k, a, call, expected):
    assert errno_of(lambda: call(k, a)) == expected


def test_mappings_grow_down_and_merge(k):
    a = k.mmap(4 * PS)
    b = k.mmap(4 * PS)
    assert b == a - 4 * PS
    assert len(k.vma_list()) == 1


def test_length_multiple_of_2mib_is_2mib_aligned(k):
    k.mmap(PS)
    assert k.mmap(HP) % HP == 0


def test_align_and_at(k):
    assert k.mmap(3 * PS, align=1 << 20) % (1 << 20) == 0
    base = k.mmap(64 * PS)
    k.munmap(base, 64 * PS)
    assert k.mmap(PS, at=base + 8 * PS) == base + 8 * PS


def test_mprotect_splits_then_merges_back(k):
    a = k.mmap(8 * PS)
    k.mprotect(a + 2 * PS, 2 * PS, PROT_READ)
    assert [(v["start"] - a) // PS for v in k.vma_list()] == [0, 2, 4]
    k.mprotect(a + 2 * PS, 2 * PS, PROT_READ | PROT_WRITE)
    assert len(k.vma_list()) == 1


def test_mprotect_changes_the_vmas_before_a_hole(k, a):
    assert errno_of(lambda: k.mprotect(a + 8 * PS, 16 * PS, PROT_READ)) == errno.ENOMEM
    assert [v["prot"] for v in k.vma_list()] == [PROT_READ | PROT_WRITE, PROT_READ]


def test_madvise_applies_to_the_mapped_part_despite_enomem(k, a):
    k.store(a + 15 * PS, b"x")
    assert errno_of(lambda: k.madvise(a + 15 * PS, 2 * PS, MADV_DONTNEED)) == errno.ENOMEM
    assert k.page_info(a + 15 * PS).state == "none"


def test_vmas_with_different_anon_vmas_do_not_merge(k):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    k.mmap(4 * PS, at=a + 4 * PS)
    assert len(k.vma_list()) == 1  # a fresh VMA (no anon_vma yet) merges
    base = k.mmap(8 * PS)
    k.munmap(base, 8 * PS)
    c = k.mmap(4 * PS, at=base)
    d = k.mmap(4 * PS, at=base + 4 * PS, prot=PROT_READ | PROT_WRITE | 4)
    k.store(c, b"c")
    k.store(d, b"d")  # each now has its own anon_vma
    k.mprotect(d, 4 * PS, PROT_READ | PROT_WRITE)
    assert len(k.vma_list()) == 3


def test_register_splits_and_advertises_ioctls(k, uffd):
    a = k.mmap(8 * PS)
    assert uffd.register(a + 2 * PS, 2 * PS) == 0x13C
    assert [v["uffd"] is not None for v in k.vma_list()] == [False, True, False]
    uffd.unregister(a + 2 * PS, 2 * PS)
    assert len(k.vma_list()) == 1


REGISTER = [
    ("zero length", lambda k, u, a: u.register(a, 0), errno.EINVAL),
    ("MINOR on anonymous memory", lambda k, u, a: u.register(a, PS, 4), errno.EINVAL),
    ("registered with another uffd", lambda k, u, a: (u.register(a, PS), k.userfaultfd().register(a, PS)), errno.EBUSY),
    ("unregister through another uffd", lambda k, u, a: (u.register(a, PS), k.userfaultfd().unregister(a, PS)), errno.EINVAL),
    ("unregister nothing mapped", lambda k, u, a: u.unregister(a + 16 * PS, PS), errno.EINVAL),
    ("wake unaligned", lambda k, u, a: u.wake(a + 1, PS), errno.EINVAL),
    ("wake anywhere", lambda k, u, a: u.wake(0x1000, PS), 0),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in REGISTER], ids=[c[0] for c in REGISTER])
def test_uffd_errno(k, uffd, a, call, expected):
    assert errno_of(lambda: call(k, uffd, a)) == expected


def test_register_wp_and_missing_advertises_writeprotect(k, uffd, a):
    assert uffd.register(a, PS, 3) == 0x17C


def test_munmap_frees_page_tables_nothing_else_uses(k):
    a = k.mmap(2 * HP, align=HP)
    k.store(a, b"x")
    k.munmap(a + PS, PS)
    assert k.pmd_kind(a) == "table"
    k.munmap(a, 2 * HP)
    assert k.pmd_kind(a) == "none"


def test_mlock_populates_with_write_faults(k):
    a = k.mmap(4 * PS)
    k.mlock(a, 4 * PS)
    assert {k.page_info(a + i * PS).state for i in range(4)} == {"present"}
    b = k.mmap(4 * PS, PROT_READ)
    k.mlock(b, 4 * PS)
    assert k.page_info(b).state == "zero"


def test_mlock_onfault_populates_nothing(k):
    a = k.mmap(4 * PS)
    k.mlock(a, 4 * PS, onfault=True)
    assert k.page_info(a).state == "none"
    assert k.vma_list()[0]["lockonfault"]


def test_mlock_of_a_registered_range_fails_after_locking(k, uffd):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    uffd.register(a + PS, 3 * PS)
    assert errno_of(lambda: k.mlock(a, 4 * PS)) == errno.ENOMEM
    assert all(v["locked"] for v in k.vma_list())


def test_mremap_moves_pages_and_drops_registration(k, uffd):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    frame = k.page_info(a).frame
    uffd.register(a, 4 * PS)
    target = k.mmap(64 * PS)
    k.munmap(target, 64 * PS)
    assert k.mremap(a, 4 * PS, target) == target
    assert k.page_info(target).frame == frame
    assert k.vma_list()[0]["uffd"] is None
    assert errno_of(lambda: k.load(a, 1)) == errno.EFAULT


def test_mremap_dontunmap_keeps_the_old_range_registered_and_empty(k, uffd):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    k.mlock(a, 4 * PS)
    uffd.register(a, 4 * PS)
    target = k.mmap(64 * PS)
    k.munmap(target, 64 * PS)
    k.mremap(a, 4 * PS, target, dontunmap=True)
    old = [v for v in k.vma_list() if v["start"] == a][0]
    assert old["uffd"] is not None and not old["locked"]
    assert k.page_info(a).state == "none"
    assert k.load(target, 1) == b"x"


def test_mremap_spanning_vmas_keeps_the_gaps(k, a):
    b = k.mmap(4 * PS, at=a + 20 * PS)
    k.store(b, b"b")
    target = a + 100 * PS
    assert k.mremap(a, 24 * PS, target) == target
    assert k.load(target + 20 * PS, 1) == b"b"
    assert errno_of(lambda: k.load(target + 17 * PS, 1)) == errno.EFAULT


def test_mremap_of_several_vmas_refuses_a_registered_one(k, uffd, a):
    k.mmap(4 * PS, at=a + 16 * PS, prot=PROT_READ)
    uffd.register(a, 16 * PS)
    assert errno_of(lambda: k.mremap(a, 20 * PS, a + 100 * PS)) == errno.EFAULT


def test_dontfork_vma_is_not_shared_with_the_child(k):
    a = k.mmap(4 * PS)
    k.store(a, b"x")
    k.store(a + PS, b"y")
    k.madvise(a, PS, MADV_DONTFORK)
    child = k.fork()
    assert k.page_info(a).exclusive
    assert not k.page_info(a + PS).exclusive
    child.exit()


def test_hugepage_advice_splits_vmas(k):
    a = k.mmap(8 * PS)
    k.madvise(a + 4 * PS, 4 * PS, MADV_HUGEPAGE)
    assert len(k.vma_list()) == 2


NOOP_CHANGES = [
    ("mprotect to the same protection", lambda k, u, a: k.mprotect(a + 4 * PS, 4 * PS, PROT_READ | PROT_WRITE)),
    ("MADV_HUGEPAGE again", lambda k, u, a: k.madvise(a + 4 * PS, 4 * PS, MADV_HUGEPAGE)),
    ("munlock of unlocked pages", lambda k, u, a: k.munlock(a + 4 * PS, 4 * PS)),
    ("register again in the same mode", lambda k, u, a: u.register(a + 4 * PS, 4 * PS)),
]


@pytest.mark.parametrize("change", [c[1] for c in NOOP_CHANGES], ids=[c[0] for c in NOOP_CHANGES])
def test_a_change_that_changes_nothing_splits_nothing(k, uffd, change):
    a = k.mmap(4 * HP, align=HP)
    k.madvise(a, 4 * HP, MADV_HUGEPAGE)
    k.store(a, b"x")
    uffd.register(a, 4 * HP)
    vmas = k.vma_list()
    change(k, uffd, a)
    assert k.vma_list() == vmas
    assert k.pmd_kind(a) == "thp"


def test_madv_free_leaves_a_thp_the_child_maps_too(k):
    a = k.mmap(4 * HP, align=HP)
    k.madvise(a, 4 * HP, MADV_HUGEPAGE)
    k.store(a, b"x")
    child = k.fork()
    k.madvise(a + PS, PS, MADV_FREE)
    assert k.pmd_kind(a) == "thp"
    child.exit()


def test_memmove_onto_itself_only_reads(k):
    a = k.mmap(4 * PS)
    k.memmove(a + PS, a + PS, 64)
    k.copy_ranges([a + 2 * PS], [a + 2 * PS], [64])
    assert k.page_info(a + PS).state == "zero" and k.page_info(a + 2 * PS).state == "zero"


def test_dontunmap_unlocks_the_old_vma_without_merging_it(k):
    base = k.mmap(64 * PS)
    k.munmap(base, 64 * PS)
    a = k.mmap(4 * PS, at=base)
    b = k.mmap(4 * PS, at=base + 4 * PS)
    k.mlock(b, 4 * PS)
    k.store(b, b"x")
    k.mremap(b, 4 * PS, base + 32 * PS, dontunmap=True)
    olds = [v for v in k.vma_list() if v["start"] in (a, b)]
    assert len(olds) == 2 and not olds[1]["locked"]
