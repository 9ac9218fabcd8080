"""Choosing the compactor, the copy fallback, and an install the kernel interrupts."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from tests.heap.logs import capture_events

from bench.wrappers import KernelWrapper, UffdWrapper
from heap import CompactionAborted, Heap
from heap.kernel import KernelUnsupported, UffdError
from tests.conftest import make_kernel


class NoUserfaultfd(KernelWrapper):
    """A kernel where userfaultfd is refused (as without permission)."""

    def userfaultfd(self, *args, **kwargs):
        raise KernelUnsupported("userfaultfd is refused: EPERM (test)")


class FlakyUffd(UffdWrapper):
    """A userfaultfd whose MOVE fails with ``err`` ``times`` times, from the ``after``-th call
    (batched MOVEs too: UffdWrapper's move_ranges is one ``self.move`` per range)."""

    def __init__(self, inner, err: int, after: int, times: int):
        super().__init__(inner)
        self.err, self.after, self.times = err, after, times
        self.calls = 0

    def move(self, dst, src, length, mode=0):
        self.calls += 1
        if self.calls >= self.after and self.times > 0:
            self.times -= 1
            raise UffdError(self.err, "injected by the test", 0)
        return self.inner.move(dst, src, length, mode)


class FlakyKernel(KernelWrapper):
    def __init__(self, inner, **flaky):
        super().__init__(inner)
        self.flaky = flaky
        self.uffd = None

    def wrap_uffd(self, uffd):
        self.uffd = FlakyUffd(uffd, **self.flaky)
        return self.uffd


def scattered_heap(heap, n=300):
    block = heap.alloc_many(np.arange(n) % 7 * 40 + 16, 1)
    block.set_refs(0, np.arange(1, n), block, np.arange(n - 1))  # a chain
    keep = block[n - 1]
    for i in range(0, n, 50):
        block[i].write(i.to_bytes(4, "little"))
    junk = heap.alloc_many(np.full(n, 600), 0)  # dies
    more = heap.alloc(1 << 20)
    more.write(b"big")
    keep.set_ref(0, block[n - 2])
    del block, junk
    return keep, more


def chain_length(ref):
    n = 0
    while ref is not None:
        n, ref = n + 1, ref.get_ref(0)
    return n


@pytest.mark.timeout(30)
def test_auto_falls_back_to_copy_and_says_why(kernel_name):
    with capture_events() as logs:
        heap = Heap(kernel=NoUserfaultfd(make_kernel(kernel_name)), size=8 << 20, compactor="auto")
    with heap:
        assert heap.compactor == "copy"
        event = [e for e in logs if e["event"] == "compactor_fallback"]
        assert event and "EPERM" in event[0]["reason"]
        keep, more = scattered_heap(heap)
        stats = heap.collect()
        assert stats.pages_moved == 0 and stats.bytes_copied > 0
        assert chain_length(keep) == 300 and more.read(3) == b"big"
        heap.verify()


def test_remap_demanded_without_userfaultfd_is_refused(kernel_name):
    with pytest.raises(KernelUnsupported, match="remap"):
        Heap(kernel=NoUserfaultfd(make_kernel(kernel_name)), size=1 << 20, compactor="remap")


@pytest.mark.timeout(30)
def test_auto_picks_remap_where_move_works(kernel_name):
    with Heap(kernel=kernel_name, size=8 << 20) as heap:
        assert heap.compactor == "remap"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EINTR], ids=["ENOMEM", "EINTR"])
def test_interrupted_install_keeps_the_heap_consistent(kernel_name, err):
    # fails twice: in the batched call, and again when that run is retried alone
    kernel = FlakyKernel(make_kernel(kernel_name), err=err, after=2, times=2)
    with Heap(kernel=kernel, size=8 << 20, compactor="remap") as heap:
        keep, more = scattered_heap(heap)
        with pytest.raises(CompactionAborted) as info:
            heap.collect()
        assert info.value.errno == err
        # the next operation installs the rest; nothing is lost
        assert chain_length(keep) == 300 and more.read(3) == b"big"
        heap.verify()
        assert heap.collect().live_objects == 301


@pytest.mark.timeout(30)
def test_pending_event_eagain_is_retried(kernel_name):
    kernel = FlakyKernel(make_kernel(kernel_name), err=errno.EAGAIN, after=1, times=3)
    with Heap(kernel=kernel, size=8 << 20, compactor="remap") as heap:
        keep, more = scattered_heap(heap)
        stats = heap.collect()
        assert stats.eagain_retries == 3
        assert chain_length(keep) == 300 and more.read(3) == b"big"
        heap.verify()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compactor", ["remap", "copy"])
def test_both_compactors_give_the_same_heap(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor) as heap:
        keep, more = scattered_heap(heap)
        stats = heap.collect()
        assert stats.live_objects == 301 and stats.freed_objects == 300
        assert chain_length(keep) == 300
        assert keep.get_ref(0).get_ref(0).read(4) != b""
        heap.verify()


class FailingCopy(KernelWrapper):
    """A kernel whose next copy_ranges fails (as a memmove into memory that could not be allocated)."""

    # the evacuation goes through copy_ranges only without the C core (heap.core.slide moves the
    # objects itself, in place): this kernel offers no in-place memory, so that is the path taken
    memory_in_place = False

    def __init__(self, inner):
        super().__init__(inner)
        self.fail = False

    def wrap_uffd(self, uffd):
        return uffd  # only copy_ranges is injected: the backend's own userfaultfd

    def copy_ranges(self, *args):
        if self.fail:
            self.fail = False
            raise OSError(errno.ENOMEM, "injected by the test")
        return self.inner.copy_ranges(*args)


@pytest.mark.timeout(30)
def test_failed_evacuation_puts_every_page_back(kernel_name):
    kernel = FailingCopy(make_kernel(kernel_name))
    with Heap(kernel=kernel, size=8 << 20, compactor="remap") as heap:
        keep, more = scattered_heap(heap)
        frames = heap.kernel.page_frames(more.address, 4)
        kernel.fail = True
        with pytest.raises(OSError) as info:
            heap.collect()
        assert info.value.errno == errno.ENOMEM
        heap.verify()  # nothing moved: same addresses, same frames, same contents
        assert np.array_equal(heap.kernel.page_frames(more.address, 4), frames)
        assert chain_length(keep) == 300 and more.read(3) == b"big"
        stats = heap.collect()  # and the next collection works
        assert stats.live_objects == 301
        assert chain_length(keep) == 300 and more.read(3) == b"big"
        heap.verify()


class RefusingRegister(KernelWrapper):
    """userfaultfd opens, but registering memory is refused (as under a seccomp or LSM policy)."""

    def wrap_uffd(self, uffd):
        return RefuseRegisterUffd(uffd)


class RefuseRegisterUffd(UffdWrapper):
    def register(self, *args, **kwargs):
        raise OSError(errno.EPERM, "injected by the test")


@pytest.mark.timeout(30)
def test_auto_switches_to_copy_when_registering_is_refused(kernel_name):
    with Heap(kernel=RefusingRegister(make_kernel(kernel_name)), size=8 << 20) as heap:
        assert heap.compactor == "remap"
        keep, more = scattered_heap(heap)
        with capture_events() as logs:
            stats = heap.collect()
        assert heap.compactor == "copy" and stats.live_objects == 301
        assert any(e["event"] == "compactor_fallback" and "registering the arena failed" in e["reason"]
                   for e in logs)
        assert chain_length(keep) == 300 and more.read(3) == b"big"
        heap.verify()


def test_remap_demanded_and_registering_refused_raises(kernel_name):
    with Heap(kernel=RefusingRegister(make_kernel(kernel_name)), size=8 << 20, compactor="remap") as heap:
        keep, more = scattered_heap(heap)
        with pytest.raises(OSError) as info:
            heap.collect()
        assert info.value.errno == errno.EPERM
        assert chain_length(keep) == 300
        heap.verify()
