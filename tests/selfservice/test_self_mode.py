"""Self-served faults through the heap, on both backends: mutators during
cycles, pages shared with a forked child (EBUSY -> COPY in the faulting
thread), allocation past the top, 8 mutators through many cycles, and the
SIGBUS handler's life cycle. Every test has a timeout; threads are joined
with one."""

from __future__ import annotations

import random
import threading

import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, collect_concurrent, end_concurrent
from tests.concurrent.model import Model, garbage, populate
from tests.concurrent.test_concurrent import remapgc_threads, run_threads

MiB = 1 << 20


def self_heap(kernel_name: str, size: int = 8 * MiB, seed: int = 1, objects: int = 80):
    heap = Heap(kernel=kernel_name, size=size, compactor="remap", faults="self")
    rnd = random.Random(seed)
    model = Model(heap, seed=seed)
    populate(model, objects, rnd)
    garbage(heap, rnd, 100)
    return heap, model, rnd


def sigbus_handler_of(heap) -> bool:
    """Whether the kernel's SIGBUS handler is the heap's self-service now."""
    if heap.kernel.name == "sim":
        return heap.kernel.sigbus_handler is not None
    from uffd_backend.accelerator import sigbus_handler_installed
    return sigbus_handler_installed()


@pytest.mark.timeout(120)
def test_mutators_read_through_self_served_faults_and_nothing_is_lost(kernel_name):
    heap, model, rnd = self_heap(kernel_name)
    with heap:
        assert heap._uffd.self_serving
        served = by_faults = 0
        for _ in range(6):
            cycle, stats, _ = begin_concurrent(heap, run_compactor=False)  # every page is some mutator's fault
            assert "remapgc-faults" not in remapgc_threads()  # no handler thread: the faulters serve themselves
            run_threads([lambda objs=model.objects[i::4]: [model.read(o) for o in objs] for i in range(4)])
            end_concurrent(heap, cycle)
            served += stats.faults_served
            by_faults += stats.pages_installed_by_faults
            assert stats.fault_p50_ns > 0
            model.check_all()
            heap.verify()
        assert served > 0 and by_faults > 0


@pytest.mark.timeout(120)
def test_a_forked_child_sharing_the_pages_makes_the_faulter_copy_them(kernel_name):
    """MOVE of a page shared with a child answers EBUSY: the faulting thread COPYs it."""
    heap, model, _ = self_heap(kernel_name)
    with heap:
        child = heap.kernel.fork()
        try:
            cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
            for obj in model.objects:
                model.read(obj)
            end_concurrent(heap, cycle)
        finally:
            child.exit()
        assert stats.ebusy_fallbacks >= 1, stats
        model.check_all()
        heap.verify()


@pytest.mark.timeout(120)
def test_allocation_past_the_top_during_install_gets_fresh_pages(kernel_name):
    heap, model, rnd = self_heap(kernel_name)
    with heap:
        cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
        for _ in range(30):
            model.new(rnd.randrange(2000, 9000), 1, rnd)  # the header store faults a fresh page
        for obj in model.objects:
            model.read(obj)
        end_concurrent(heap, cycle)
        assert stats.fresh_pages >= 1, stats
        model.check_all()
        heap.verify()


CYCLES = {"sim": 200, "linux": 200}


@pytest.mark.timeout(300)
def test_eight_mutators_through_many_concurrent_cycles(kernel_name):
    heap, model, rnd = self_heap(kernel_name, size=4 * MiB, seed=9, objects=60)
    with heap:
        stop = threading.Event()
        totals = {"cycles": 0, "served": 0}

        def mutator(seed: int):
            def run():
                r = random.Random(seed)
                steps = 0
                while not stop.is_set() or steps < 20:
                    model.step(r)
                    steps += 1
            return run

        def collector():
            try:
                for i in range(CYCLES[kernel_name]):
                    garbage(heap, rnd, 5)
                    # every other cycle in chunks of 4 pages: mutators meet pages nobody claimed yet
                    st = heap.collect(concurrent=True) if i % 2 else collect_concurrent(heap, chunk_pages=4)
                    totals["cycles"] += 1
                    totals["served"] += st.faults_served
            finally:
                stop.set()

        run_threads([mutator(s) for s in range(8)] + [collector], timeout=280)
        assert totals["cycles"] == CYCLES[kernel_name]
        assert totals["served"] > 0, totals
        assert not remapgc_threads()
        model.check_all()
        heap.verify()


@pytest.mark.timeout(60)
def test_the_sigbus_handler_goes_in_with_the_first_heap_and_out_with_the_last(kernel_name):
    first, _, _ = self_heap(kernel_name)
    kernel = first.kernel if kernel_name == "sim" else kernel_name  # the sim's handler is its kernel's
    second = Heap(kernel=kernel, size=4 * MiB, compactor="remap", faults="self")
    try:
        assert sigbus_handler_of(first) or kernel_name == "sim"  # sim: installed while a cycle runs
        cycle, _, _ = begin_concurrent(first, run_compactor=False)
        assert sigbus_handler_of(first)
        end_concurrent(first, cycle)
        first.close()
        if kernel_name == "linux":
            assert sigbus_handler_of(second)  # the second heap still has it
    finally:
        first.close()
        second.close()
    assert not sigbus_handler_of(second)


@pytest.mark.timeout(60)
def test_thread_mode_asked_for_opens_no_sigbus_uffd(kernel_name):
    """(The default is "auto": tests/selfservice/test_faultmode.py.)"""
    with Heap(kernel=kernel_name, size=4 * MiB, compactor="remap", faults="thread") as heap:
        assert not heap._uffd.self_serving and heap.faults == "thread"


@pytest.mark.timeout(120)
def test_a_self_serving_walk_settles_refused_moves_itself_and_leaves_no_page_to_python(kernel_name, monkeypatch):
    """Pages shared with a forked child: every MOVE of the compactor's walk is
    refused (EBUSY). Self-serving, the native walk COPYs them itself (Linux), so
    no page waits for a Python installer that a GIL-holding faulter would block;
    the simulator's walk is Python's own and settles them the same way."""
    from heap.concurrent import ConcurrentCycle

    heap, model, _ = self_heap(kernel_name)
    if kernel_name == "linux":
        def no_python_finish(*args, **kwargs):
            raise AssertionError("a refused MOVE was left to Python")
        monkeypatch.setattr(ConcurrentCycle, "_finish_refused_chunk", no_python_finish)
    with heap:
        child = heap.kernel.fork()
        try:
            stats = heap.collect(concurrent=True)
        finally:
            child.exit()
        assert stats.ebusy_fallbacks >= 1, stats
        model.check_all()
        heap.verify()
