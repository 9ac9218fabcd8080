"""The concurrent cycle's native parts on the real kernel, both in C without
the GIL and claiming pages with the Python installers' compare-and-swap:

* the chunk walk (LinuxUffd.chunk_walker): the compactor's loop over the
  chunks; it goes around pages a fault handler holds and hands a refused
  MOVE back to Python;
* the fault server (LinuxUffd.fault_server): installs the common fault (a
  page that moves whole) and forwards the rest to the Python handler.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from heap import Heap
from heap.concurrent import INSTALLED, PROCESSING, UNPROCESSED, begin_concurrent, end_concurrent

CHUNK = 4


@pytest.fixture
def cycle_on_linux(linux_kernel):
    """A heap of page-owning objects, every one live, in a concurrent cycle
    nobody installs (no compactor thread): the test drives the walk. The
    handler-thread mode, asked for: a self-serving cycle's walk settles a
    refused MOVE itself instead of handing it back (tests/selfservice)."""
    heap = Heap(kernel=linux_kernel, size=8 << 20, compactor="remap", faults="thread")
    heap._pause.keep_prefix = False  # every page installed: nothing died, the dense prefix would be all of them
    refs = [heap.alloc(5000, 1) for _ in range(12)]
    for i, r in enumerate(refs):
        r.write(bytes([i + 1]) * 5000)
        r.set_ref(0, refs[(i + 1) % len(refs)])
    npages = heap._alloc.used_pages
    frames_before = linux_kernel.page_frames(heap.base, npages)
    cycle, _, _ = begin_concurrent(heap, chunk_pages=CHUNK, run_compactor=False)
    walk = cycle._native_walk(cycle.scratch)
    assert walk is not None, "LinuxUffd offers the chunk walker and the page claims are compare-and-swap"
    yield heap, refs, cycle, walk, frames_before
    if heap._cycle is cycle:
        end_concurrent(heap, cycle)
    heap.verify()
    for i, r in enumerate(refs):
        assert r.read(5000) == bytes([i + 1]) * 5000
        assert r.get_ref(0).same_object(refs[(i + 1) % len(refs)])
    heap.close()


@pytest.mark.timeout(30)
def test_the_walk_installs_every_chunk_zero_copy(cycle_on_linux, linux_kernel):
    heap, _, cycle, walk, frames_before = cycle_on_linux
    w = walk(0)
    assert w.status == "done" and w.pages == cycle.program.npages
    assert cycle.states.all_installed() and (cycle.states.state == INSTALLED).all()
    after = linux_kernel.page_frames(heap.base, cycle.program.npages)
    assert (after == frames_before[: after.size]).all()  # every page kept its frame


@pytest.mark.timeout(30)
def test_the_walk_goes_around_a_page_a_fault_handler_holds(cycle_on_linux, linux_kernel):
    heap, _, cycle, walk, frames_before = cycle_on_linux
    taken = CHUNK + 2  # a page of chunk 1, claimed as a fault handler would
    assert cycle.states.claim(taken) == UNPROCESSED
    w = walk(0)
    assert w.status == "done" and w.pages == cycle.program.npages - 1
    state = cycle.states.state
    assert state[taken] == PROCESSING  # still its claimer's: the walk left it alone
    assert (np.delete(state, taken) == INSTALLED).all()
    npages = cycle.program.npages
    after = linux_kernel.page_frames(heap.base, npages)
    assert (np.delete(after, taken) == np.delete(frames_before[:npages], taken)).all()  # zero-copy around it
    cycle.states.settle_one(taken, False)  # the claimer gives it back; the next walk takes it
    assert walk(0).pages == 1 and cycle.states.all_installed()


@pytest.mark.timeout(30)
def test_a_move_the_walk_is_refused_is_finished_by_the_python_path(cycle_on_linux):
    """A forked child shares the pages: the walk's first MOVE gets EBUSY and
    stops with the chunk still claimed; the Python path copies it in."""
    heap, _, cycle, walk, _ = cycle_on_linux
    child = heap.kernel.fork()
    try:
        w = walk(0)
        assert (w.status, w.chunk, w.run_page, w.pages) == ("refused", 0, 0, 0)
        assert walk.mine[:CHUNK].all()  # it claimed the whole chunk
        assert (cycle.states.state[:CHUNK] == PROCESSING).all()  # still the walk's claim
        cycle._finish_refused_chunk(0, w, cycle.scratch, cycle.counters)
        assert (cycle.states.state[:CHUNK] == INSTALLED).all()
        assert cycle.counters.ebusy_fallbacks >= 1
        cycle._install_all(cycle.scratch, cycle.counters)  # the other chunks: each refused, each copied
        assert cycle.states.all_installed()
    finally:
        child.exit()


@pytest.mark.timeout(30)
def test_the_walk_stops_before_a_chunk_when_asked(cycle_on_linux):
    _, _, cycle, walk, _ = cycle_on_linux
    cycle.stop_flag[0] = 1
    w = walk(0)
    assert (w.status, w.chunk, w.pages) == ("stopped", 0, 0)
    assert (cycle.states.state == UNPROCESSED).all()
    cycle.stop_flag[0] = 0


@pytest.fixture
def faulting_cycle(linux_kernel):
    """Objects each on pages of their own, all live: every page moves whole.
    A cycle with no compactor thread: only faults install pages, served by
    the fault server (the handler-thread mode, asked for)."""
    heap = Heap(kernel=linux_kernel, size=8 << 20, compactor="remap", faults="thread")
    heap._pause.keep_prefix = False  # every page installed: nothing died, the dense prefix would be all of them
    refs = [heap.alloc(5000) for _ in range(6)]
    for i, r in enumerate(refs):
        r.write(bytes([i + 1]) * 5000)
    frames = {i: linux_kernel.page_frames(r.address, 1)[0] for i, r in enumerate(refs)}
    cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
    yield heap, refs, cycle, stats, frames
    heap.close()


def _read_in_a_thread(ref, n):
    out = []
    t = threading.Thread(target=lambda: out.append(ref.read(n)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the faulting read never returned"
    return out[0]


@pytest.mark.timeout(30)
def test_the_fault_server_installs_a_whole_page_zero_copy(faulting_cycle, linux_kernel):
    heap, refs, cycle, stats, frames = faulting_cycle
    assert _read_in_a_thread(refs[2], 5000) == bytes([3]) * 5000
    assert linux_kernel.page_frames(refs[2].address, 1)[0] == frames[2]  # the frame moved, no copy
    end_concurrent(heap, cycle)  # counters read after it: the server counts after the MOVE that wakes
    assert cycle.handler.served_natively() >= 1
    assert stats.faults_served >= 1 and stats.pages_installed_by_faults >= 1 and stats.fault_p50_ns > 0
    heap.verify()


@pytest.mark.timeout(30)
def test_a_move_the_kernel_refuses_is_finished_by_the_python_handler(faulting_cycle):
    """Pages shared with a forked child: the server's MOVE gets EBUSY, it
    forwards the still-claimed page, and the Python handler copies it in."""
    heap, refs, cycle, stats, _ = faulting_cycle
    child = heap.kernel.fork()
    try:
        assert _read_in_a_thread(refs[4], 5000) == bytes([5]) * 5000
    finally:
        child.exit()
    end_concurrent(heap, cycle)  # counters read after it: each side counts after the install that wakes
    assert cycle.handler.served_natively() == 0
    assert cycle.handler.counters.ebusy_fallbacks >= 1
    heap.verify()
    for i, r in enumerate(refs):
        assert r.read(5000) == bytes([i + 1]) * 5000


@pytest.mark.timeout(30)
def test_an_allocation_during_the_cycle_gets_a_zero_page_from_the_server(faulting_cycle):
    """Past the to-space top nothing is planned: the header store of a new
    object faults, and the server puts a zero page there."""
    heap, refs, cycle, stats, _ = faulting_cycle
    fresh = heap.alloc(5000)
    fresh.write(b"new" * 100)
    # the server counts a zero page after the ZEROPAGE that woke the writer:
    # read its counters once end_concurrent has stopped it (1 run in 6 raced)
    end_concurrent(heap, cycle)
    assert stats.fresh_pages >= 1
    assert fresh.read(300) == b"new" * 100
    heap.verify()
