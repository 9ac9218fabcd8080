"""Userfaults on each backend: a user-mode access to a missing registered page
blocks, is reported by read_events, and is resolved by MOVE (woken at once) or
by MOVE with DONTWAKE plus UFFDIO_WAKE.

Each faulting access runs in a thread (LinuxKernel's compiled accessors release
the GIL; the simulator blocks the thread on its condition variable), so the
test thread can serve the fault. Every test has a
timeout, and closing the uffd at teardown releases a thread left blocked.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from heap.kernel import PAGE_SIZE, UFFDIO_MOVE_MODE_DONTWAKE, FaultEvent, UffdError

from tests.kernel.kernel_helpers import Faulter

PS = PAGE_SIZE
STILL_BLOCKED_AFTER = 0.3  # seconds a woken-too-early thread would need to finish


def _load(k, page):
    return lambda: k.load(page + 16, 8)


def _store(k, page):
    return lambda: k.store(page + 16, b"written!")


def _load_words(k, page):
    return lambda: k.load_words(np.array([page + 16], dtype=np.uint64)).tobytes()


def _store_words(k, page):
    return lambda: k.store_words(np.array([page + 16], dtype=np.uint64), np.frombuffer(b"written!", np.uint64))


def _memmove_from(k, page):
    return lambda: k.memmove(page - PS, page + 16, 8)  # page - PS: a populated scratch page


ACCESSES = [
    (_load, False, b"resolved"),
    (_load_words, False, b"resolved"),
    (_memmove_from, False, None),
    (_store, True, b"written!"),
    (_store_words, True, b"written!"),
]


@pytest.fixture
def fault_setup(k, mem, uffd):
    """(scratch+target region, the registered missing target page, a populated src page)."""
    region = mem(2)
    k.store(region, b"scratch")
    target = region + PS
    uffd.register(target, PS)
    src = mem.filled(1)
    k.store(src + 16, b"resolved")
    faulters: list[Faulter] = []
    yield target, src, faulters
    uffd.close()  # wakes any thread still blocked in a userfault
    for f in faulters:
        f.thread.join(10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("access,write,expected", ACCESSES, ids=lambda v: getattr(v, "__name__", repr(v)).lstrip("_"))
def test_fault_is_reported_and_a_move_wakes_the_thread(k, uffd, fault_setup, access, write, expected):
    target, src, faulters = fault_setup
    frame = k.page_info(src).frame
    f = Faulter(access(k, target))
    faulters.append(f)

    events = uffd.read_events(timeout=10)

    assert events == [FaultEvent(address=target, write=write)]
    assert f.blocked(0.05)
    assert uffd.move(target, src, PS) == PS
    result = f.finish()
    assert k.page_info(target).frame == frame
    if write:
        assert k.load(target + 16, 8) == expected
    elif expected is not None:
        assert result == expected
    else:
        assert k.load(target - PS, 8) == b"resolved"


@pytest.mark.timeout(30)
def test_dontwake_move_installs_the_page_but_the_thread_sleeps_until_wake(k, uffd, fault_setup):
    target, src, faulters = fault_setup
    f = Faulter(_load(k, target))
    faulters.append(f)
    assert uffd.read_events(timeout=10) == [FaultEvent(address=target, write=False)]

    assert uffd.move(target, src, PS, UFFDIO_MOVE_MODE_DONTWAKE) == PS

    assert k.page_info(target).state == "present"
    assert f.blocked(STILL_BLOCKED_AFTER), "DONTWAKE woke the faulting thread"
    uffd.wake(target, PS)
    assert f.finish() == b"resolved"


@pytest.mark.timeout(30)
def test_wake_covers_only_the_moved_prefix(k, mem, uffd):
    dst = mem(4)
    k.store(dst + 2 * PS, b"occupied")  # page 2 populated: a 4-page move stops there
    uffd.register(dst, 4 * PS)
    src = mem.filled(4)
    early, late = Faulter(_load(k, dst + PS)), Faulter(_load(k, dst + 3 * PS))
    try:
        seen = set()
        while len(seen) < 2:
            seen |= {e.address for e in uffd.read_events(timeout=10)}
        assert seen == {dst + PS, dst + 3 * PS}

        with pytest.raises(UffdError) as exc:
            uffd.move(dst, src, 4 * PS)
        assert (exc.value.errno, exc.value.moved) == (errno.EAGAIN, 2 * PS)

        assert early.finish() == bytes(8)  # "page000001" has zeros at +16
        assert late.blocked(STILL_BLOCKED_AFTER)
        uffd.move(dst + 3 * PS, src + 3 * PS, PS)
        assert late.finish() == bytes(8)
    finally:
        uffd.close()
        for f in (early, late):
            f.thread.join(10)


@pytest.mark.timeout(30)
def test_zeropage_and_copy_resolve_faults_too(k, mem, uffd):
    dst = mem(2)
    uffd.register(dst, 2 * PS)
    src = mem.filled(1)
    a, b = Faulter(_load(k, dst)), Faulter(lambda: k.load(dst + PS, 10))
    try:
        seen = set()
        while len(seen) < 2:
            seen |= {e.address for e in uffd.read_events(timeout=10)}
        assert uffd.zeropage(dst, PS) == PS
        assert uffd.copy(dst + PS, src, PS) == PS
        assert a.finish() == bytes(8)
        assert b.finish() == b"page000000"
        assert k.page_info(dst).state == "zero"
        assert k.page_info(dst + PS).frame != k.page_info(src).frame  # COPY copies
    finally:
        uffd.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", [0, 0.05], ids=["poll", "short_wait"])
def test_read_events_returns_empty_after_its_timeout(uffd, timeout):
    assert uffd.read_events(timeout=timeout) == []


@pytest.mark.timeout(30)
def test_read_events_waits_for_a_fault_that_comes_later(k, uffd, fault_setup):
    target, src, faulters = fault_setup
    import threading

    starter = threading.Timer(0.1, lambda: faulters.append(Faulter(_load(k, target))))
    starter.start()
    try:
        assert uffd.read_events(timeout=None) == [FaultEvent(address=target, write=False)]
    finally:
        starter.join(5)
    uffd.move(target, src, PS)
    assert faulters[0].finish() == b"resolved"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("access,write,seen", [(_load, False, bytes(8)), (_store, True, b"written!")],
                         ids=["load", "store"])
def test_closing_the_uffd_releases_a_blocked_thread(k, mem, access, write, seen):
    """The access is retried without userfaultfd: a load reads the zero page, a store lands."""
    uffd = k.userfaultfd()
    page = mem(1)
    uffd.register(page, PS)
    f = Faulter(access(k, page))
    assert uffd.read_events(timeout=10) == [FaultEvent(address=page, write=write)]
    uffd.close()
    f.finish()
    assert k.load(page + 16, 8) == seen
    assert uffd.closed
    with pytest.raises(OSError) as exc:
        uffd.read_events()
    assert exc.value.errno == errno.EBADF


@pytest.mark.timeout(30)
def test_close_while_another_thread_waits_in_read_events(k, mem):
    uffd = k.userfaultfd()
    waiter = Faulter(lambda: uffd.read_events(timeout=None))
    assert waiter.blocked(0.1)
    uffd.close()
    with pytest.raises(OSError) as exc:
        waiter.finish()
    assert exc.value.errno == errno.EBADF
    if not k.simulated:  # a real descriptor is released once the waiter left: its number is free again
        with pytest.raises(OSError):
            os.fstat(uffd.fd)
