"""Background concurrent collection: collect(concurrent=True, wait=False)
returns a handle right after the pause; the compactor thread ends the
cycle; a later collect, close or fork (heap.quiesce) settles it. Both
backends, both fault modes."""

from __future__ import annotations

import random
import threading

import pytest

from heap import Heap
from heap.background import BackgroundCollection
from heap.concurrent import ConcurrentCycle, ConcurrentGCStats
from tests.concurrent.model import Model, garbage, populate
from tests.concurrent.test_concurrent import remapgc_threads

MiB = 1 << 20
MODES = ["thread", "self"]


def heap_with_garbage(kernel_name: str, faults: str, seed: int = 3):
    heap = Heap(kernel=kernel_name, size=16 * MiB, compactor="remap", faults=faults)
    rnd = random.Random(seed)
    model = Model(heap, seed=seed)
    populate(model, 120, rnd, large_every=4)
    garbage(heap, rnd, 150)
    return heap, model, rnd


@pytest.mark.timeout(120)
@pytest.mark.parametrize("faults", MODES)
def test_the_handle_gives_the_cycles_stats_once_every_page_is_installed(kernel_name, faults):
    heap, model, rnd = heap_with_garbage(kernel_name, faults)
    with heap:
        handle = heap.collect(concurrent=True, wait=False)
        assert isinstance(handle, BackgroundCollection)
        for obj in model.objects:  # the caller runs on meanwhile
            model.read(obj)
        stats = handle.wait(60)
        assert handle.done()
        assert isinstance(stats, ConcurrentGCStats) and stats.pages_moved > 0 and stats.install_ns > 0
        assert stats.total_ns > 0  # the collection ended: from-space released, totals in
        assert not remapgc_threads()
        model.check_all()
        heap.verify()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settle", ["collect", "quiesce", "close"])
def test_a_running_background_cycle_is_settled_by_what_comes_next(kernel_name, settle, monkeypatch):
    """The compactor thread is held back, so the cycle is still running when
    the next collect, a fork's quiesce (heap.forksafety) or close comes: that
    settles it (waiting for the compactor), and the handle reports it done."""
    release = threading.Event()
    install_all = ConcurrentCycle._install_all

    def held_back(self, scratch, counters):
        if threading.current_thread().name == "remapgc-compactor":
            release.wait(30)
        return install_all(self, scratch, counters)

    monkeypatch.setattr(ConcurrentCycle, "_install_all", held_back)
    heap, model, rnd = heap_with_garbage(kernel_name, "self")
    with heap:
        handle = heap.collect(concurrent=True, wait=False)
        assert not handle.done()  # the compactor waits: the cycle runs on
        for obj in model.objects[::3]:  # self-served meanwhile
            model.read(obj)
        threading.Timer(0.2, release.set).start()  # while what follows waits for the compactor
        if settle == "collect":
            heap.collect(concurrent=True)
        elif settle == "quiesce":
            heap.quiesce()
        else:
            heap.close()
        stats = handle.wait(60)
        assert handle.done()
        assert settle == "close" or stats.pages_moved > 0  # close drops what was not installed
        assert not remapgc_threads()
        if settle != "close":
            model.check_all()
            heap.verify()


@pytest.mark.timeout(120)
def test_a_copying_heap_collects_at_once_and_says_so(kernel_name):
    with Heap(kernel=kernel_name, size=4 * MiB, compactor="copy") as heap:
        heap.alloc(100)
        handle = heap.collect(concurrent=True, wait=False)
        assert handle.done() and handle.wait(0).stop_the_world == 1
