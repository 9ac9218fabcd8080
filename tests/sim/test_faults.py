"""Userfaults on the simulator: blocking, events, and which operations wake which threads.

The fault protocol every backend keeps (a blocked access is reported and woken
by MOVE, DONTWAKE + WAKE, ZEROPAGE, close, read_events' waiting) is tested on
all of them in tests/kernel/test_kernel_faults.py; here are the accesses and
wake rules beyond it, with the simulator's fault counters.
"""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest

from heap.kernel import (
    MADV_HUGEPAGE,
    UFFDIO_COPY_MODE_DONTWAKE,
    FaultEvent,
)

from tests.kernel.kernel_helpers import Faulter

from .conftest import HP, PS

pytestmark = pytest.mark.timeout(30)


def wait_blocked(k, n=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with k._lock:
            if len(k._waiters) >= n:
                return
        time.sleep(0.001)
    raise AssertionError("the access did not block")


@pytest.fixture
def area(k, uffd):
    a = k.mmap(16 * PS, align=HP)
    src = k.mmap(16 * PS, align=HP)
    for i in range(16):
        k.store(src + i * PS, bytes([i + 1]) * 8)
    uffd.register(a, 16 * PS)
    return a, src


ACCESSES = [
    ("memmove into it", lambda k, a, spare: k.memmove(a, spare, 8), True),
    ("copy_ranges from it", lambda k, a, spare: k.copy_ranges([spare], [a], [8]), False),
]


@pytest.mark.parametrize("access,write", [c[1:] for c in ACCESSES], ids=[c[0] for c in ACCESSES])
def test_missing_page_blocks_and_reports_one_event(k, uffd, area, access, write):
    a, src = area
    spare = k.mmap(PS)
    t = Faulter(lambda: access(k, a + 3 * PS + 8, spare))
    events = uffd.read_events(timeout=5)
    assert events == [FaultEvent(address=a + 3 * PS, write=write)]
    assert t.blocked(0.05)
    assert uffd.read_events(timeout=0) == []  # each fault is reported once
    uffd.move(a + 3 * PS, src + 3 * PS, PS)
    t.finish(5)
    assert k.counters.faults_raised == 1 and k.counters.faults_served == 1


def test_move_wakes_only_the_moved_prefix(k, uffd, area):
    a, src = area
    uffd.copy(a + 2 * PS, src, PS)  # dst page 2 populated: the move will stop there
    t1 = Faulter(lambda: k.load(a + PS, 1))
    t3 = Faulter(lambda: k.load(a + 3 * PS, 1))
    wait_blocked(k, 2)
    err = None
    try:
        uffd.move(a, src, 4 * PS)
    except OSError as exc:
        err = exc
    assert err.errno == errno.EAGAIN and err.moved == 2 * PS
    t1.finish(5)
    assert t3.blocked(0.05)
    # the woken fault left the queue unread; the other is still pending
    assert [e.address for e in uffd.read_events(timeout=0)] == [a + 3 * PS]
    uffd.wake(a + 3 * PS, PS)  # woken with nothing there: it faults again
    assert uffd.read_events(timeout=5) == [FaultEvent(a + 3 * PS, False)]
    uffd.zeropage(a + 3 * PS, PS)
    t3.finish(5)


def test_copy_dontwake_then_wake(k, uffd, area):
    a, src = area
    t = Faulter(lambda: k.load(a + PS, 1))
    wait_blocked(k)
    uffd.copy(a + PS, src + 4 * PS, PS, UFFDIO_COPY_MODE_DONTWAKE)
    assert t.blocked(0.05)
    uffd.wake(a, 16 * PS)
    t.finish(5)
    assert t.result == bytes([5])


def test_nothing_moved_wakes_nobody(k, uffd, area):
    a, src = area
    t = Faulter(lambda: k.load(a, 1))
    wait_blocked(k)
    with pytest.raises(OSError):
        uffd.move(a, src + 20 * PS, PS)  # src outside its VMA: nothing moved
    assert t.blocked(0.05)
    uffd.zeropage(a, PS)
    t.finish(5)


def test_wake_of_a_page_still_missing_refaults(k, uffd, area):
    a, _ = area
    t = Faulter(lambda: k.load(a, 1))
    assert uffd.read_events(timeout=5) == [FaultEvent(a, False)]
    uffd.wake(a, PS)
    assert uffd.read_events(timeout=5) == [FaultEvent(a, False)]
    assert k.counters.faults_raised == 2
    uffd.zeropage(a, PS)
    t.finish(5)


def test_unregister_wakes_and_the_access_is_demand_filled(k, uffd, area):
    a, _ = area
    t = Faulter(lambda: k.load(a, 1))
    wait_blocked(k)
    uffd.unregister(a, 16 * PS)
    t.finish(5)
    assert t.result == b"\0" and k.page_info(a).state == "zero"


def test_many_threads_each_report_their_fault(k, uffd, area):
    a, src = area
    threads = [Faulter(lambda i=i: k.load(a + i * PS, 1)) for i in range(4)]
    wait_blocked(k, 4)
    events = uffd.read_events(timeout=5)
    assert sorted(e.address for e in events) == [a + i * PS for i in range(4)]
    uffd.move(a, src, 4 * PS)
    for i, t in enumerate(threads):
        t.finish(5)
        assert t.result == bytes([i + 1])


def test_store_words_writes_before_the_blocking_page_first(k, uffd):
    a = k.mmap(4 * PS, align=HP)
    k.store(a, b"\0")  # page 0 present, page 1 missing once registered
    uffd.register(a, 4 * PS)
    addrs = np.array([a, a + PS, a + 8], dtype=np.uint64)
    t = Faulter(lambda: k.store_words(addrs, np.array([1, 2, 3], dtype=np.uint64)))
    wait_blocked(k)
    assert k.load_words(np.array([a], dtype=np.uint64))[0] == 1  # done before blocking
    assert k.load_words(np.array([a + 8], dtype=np.uint64))[0] == 0  # not yet
    uffd.zeropage(a + PS, PS)
    t.finish(5)
    assert list(k.load_words(addrs)) == [1, 2, 3]


def test_thp_eligible_region_userfaults_without_a_pte_table(k, uffd):
    a = k.mmap(2 * HP, align=HP)
    k.madvise(a, 2 * HP, MADV_HUGEPAGE)
    uffd.register(a, 2 * HP)
    t = Faulter(lambda: k.load(a, 1))
    wait_blocked(k)
    assert k.pmd_kind(a) == "none"  # the PMD fault path asked userspace first
    uffd.zeropage(a, PS)
    t.finish(5)
    assert k.pmd_kind(a) == "table"


def test_kernel_mode_fault_of_user_mode_only_uffd_is_efault(k, uffd, area):
    a, src = area
    d = k.mmap(4 * PS)
    uffd.register(d, 4 * PS)
    with pytest.raises(OSError) as exc:
        uffd.copy(d, a, PS)  # the source is a registered missing page
    assert exc.value.errno == errno.EFAULT


def test_kernel_mode_fault_blocks_without_user_mode_only(k, area):
    a, src = area
    u2 = k.userfaultfd(user_mode_only=False)
    s2 = k.mmap(4 * PS)
    u2.register(s2, 4 * PS)
    d = k.mmap(4 * PS)
    u2.register(d, 4 * PS)
    t = Faulter(lambda: u2.copy(d, s2, PS))
    assert u2.read_events(timeout=5) == [FaultEvent(s2, False)]
    u2.zeropage(s2, PS)
    t.finish(5)
    assert t.result == PS
    u2.close()


# --- non-cooperative events --------------------------------------------------------------
EVENTS = [
    # name, feature, the call that raises the event, what must hold once it completed
    ("REMOVE on MADV_DONTNEED", "remove", lambda k, a: k.madvise(a + 4 * PS, 4 * PS, 4),
     lambda k, a, done: k.page_info(a + 4 * PS).state == "none"),
    ("UNMAP on munmap", "unmap", lambda k, a: k.munmap(a + 8 * PS, 8 * PS),
     lambda k, a, done: k.page_info(a + 8 * PS).state == "none"),
    ("REMAP on mremap", "remap", lambda k, a: k.mremap(a + 8 * PS, 8 * PS, a + 64 * PS),
     lambda k, a, done: k.page_info(a + 64 * PS).state == "present"),
]


@pytest.mark.parametrize("feature,call,after", [c[1:] for c in EVENTS], ids=[c[0] for c in EVENTS])
def test_non_cooperative_event_blocks_its_caller_and_moves_until_read(k, feature, call, after):
    from heap.kernel import (
        UFFD_FEATURE_EVENT_REMAP,
        UFFD_FEATURE_EVENT_REMOVE,
        UFFD_FEATURE_EVENT_UNMAP,
        UFFD_FEATURE_MOVE,
    )

    bit = {"remove": UFFD_FEATURE_EVENT_REMOVE, "unmap": UFFD_FEATURE_EVENT_UNMAP,
           "remap": UFFD_FEATURE_EVENT_REMAP}[feature]
    u = k.userfaultfd(UFFD_FEATURE_MOVE | bit)
    base = k.mmap(128 * PS, align=HP)
    k.munmap(base + 16 * PS, 112 * PS)
    src = k.mmap(4 * PS)
    k.store(src, b"s")
    for i in range(16):
        k.store(base + i * PS, b"x")
    u.register(base, 16 * PS)
    t = Faulter(lambda: call(k, base))
    deadline = time.monotonic() + 5
    while u.mmap_changing == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert t.blocked(0.05)
    with pytest.raises(OSError) as exc:
        u.move(base + 2 * PS, src, PS)  # never reached: the event is pending
    assert (exc.value.errno, exc.value.moved) == (errno.EAGAIN, 0)
    assert u.read_events(timeout=0) == []  # read (so completed), but not a page fault
    t.finish(5)
    assert after(k, base, t.result)
    u.unregister(base, 8 * PS)
    k.madvise(base + 2 * PS, PS, 4)
    u.register(base, 8 * PS)
    assert u.move(base + 2 * PS, src, PS) == PS
    u.close()


def test_event_not_asked_for_is_not_raised(k, uffd, area):
    a, _ = area
    k.madvise(a, 16 * PS, 4)  # no EVENT_REMOVE requested: returns at once
    assert uffd.mmap_changing == 0


def test_kernel_close_releases_every_blocked_thread(k):
    u1, u2 = k.userfaultfd(), k.userfaultfd()
    a = k.mmap(4 * PS)
    b = k.mmap(4 * PS)
    u1.register(a, 4 * PS)
    u2.register(b, 4 * PS)
    threads = [Faulter(lambda: k.load(a, 1)), Faulter(lambda: k.store(b, b"z"))]
    wait_blocked(k, 2)
    k.close()
    for t in threads:
        t.finish(5)
    assert k.load(b, 1) == b"z"
