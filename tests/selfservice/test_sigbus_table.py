"""The SIGBUS handler's table on Linux (csrc/sigbus.c): a heap's entry leaves
it when its cycle stops, when it is dropped without stopping (its finalizer),
or when a newer entry claims an overlapping range (an arena unmapped and its
addresses reused): a stale entry never serves another heap's faults."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from heap.faultmode import _ProbeProgram
from heap.kernel import UFFD_FEATURE_MOVE, UFFD_FEATURE_SIGBUS
from tests.backends import make_kernel, skip_linux_if_unavailable

PAGES = 8


@pytest.fixture
def served():
    skip_linux_if_unavailable()
    from uffd_backend.accelerator import sigbus_table

    kernel = make_kernel("linux")
    uffd = kernel.userfaultfd(UFFD_FEATURE_MOVE | UFFD_FEATURE_SIGBUS)
    arena, src = kernel.mmap(PAGES * 4096), kernel.mmap(PAGES * 4096)
    before = sigbus_table()["entries"]

    def entry():
        program = uffd.accelerator.load_program(_ProbeProgram(PAGES), arena, src)
        service = uffd.accelerator.self_service(program, state=np.zeros(PAGES, dtype=np.int8),
                                                installed=np.zeros(1, dtype=np.int64))
        service.start()
        return service

    yield entry, lambda: sigbus_table()["entries"] - before
    uffd.close()
    kernel.munmap(arena, PAGES * 4096)
    kernel.munmap(src, PAGES * 4096)
    kernel.close()


@pytest.mark.timeout(60)
def test_stop_takes_the_entry_out(served):
    entry, entries = served
    service = entry()
    assert entries() == 1
    service.stop()
    assert entries() == 0


@pytest.mark.timeout(60)
def test_an_entry_dropped_without_stop_leaves_the_table(served):
    entry, entries = served
    service = entry()
    assert entries() == 1
    del service
    gc.collect()
    assert entries() == 0


@pytest.mark.timeout(60)
def test_a_newer_entry_over_the_same_range_evicts_the_stale_one(served):
    entry, entries = served
    stale = entry()
    fresh = entry()
    assert entries() == 1  # only the newer one serves the range
    stale.stop()  # its entry is already gone: nothing breaks
    assert entries() == 1
    fresh.stop()
    assert entries() == 0
