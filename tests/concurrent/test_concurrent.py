"""Concurrent compaction on both backends: mutators run while pages are installed."""

from __future__ import annotations

import random
import threading

import pytest

from heap import Heap
from heap.concurrent import ConcurrentGCStats, begin_concurrent, collect_concurrent, end_concurrent
from tests.concurrent.model import Model, garbage, populate

MiB = 1 << 20
JOIN_S = 30


def run_threads(targets, timeout: float = JOIN_S) -> None:
    """Start the threads, join them with a timeout, re-raise the first failure."""
    errors: list[BaseException] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guard(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"
    if errors:
        raise errors[0]


def remapgc_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("remapgc-") and t.is_alive()]


@pytest.mark.timeout(120)
def test_mutators_read_and_write_during_50_cycles(kernel_name):
    rnd = random.Random(5)
    with Heap(kernel=kernel_name, size=16 * MiB, compactor="remap") as heap:
        model = Model(heap, seed=5)
        populate(model, 160, rnd)
        stop = threading.Event()
        started = threading.Barrier(7)
        totals = {"faults": 0, "by_faults": 0, "cycles": 0, "fresh": 0}

        def mutator(seed: int):
            def run():
                r = random.Random(seed)
                started.wait()
                steps = 0
                while not stop.is_set() or steps < 50:
                    model.step(r)
                    steps += 1
                    if steps % 97 == 0:  # allocation while pages are being installed
                        model.new(r.randrange(16, 200), r.randrange(0, 3), r)
            return run

        def collector():
            started.wait()
            try:
                for i in range(50):
                    garbage(heap, rnd, 40)
                    # every other cycle in chunks of 4 pages: mutators meet pages nobody claimed yet,
                    # and the handler installs them
                    st = heap.collect(concurrent=True) if i % 2 else collect_concurrent(heap, chunk_pages=4)
                    assert isinstance(st, ConcurrentGCStats)
                    totals["faults"] += st.faults_served
                    totals["by_faults"] += st.pages_installed_by_faults
                    totals["fresh"] += st.fresh_pages
                    totals["cycles"] += 1
                    assert st.pages_moved + st.pages_kept_in_place > 0 and st.pause_ns > 0
            finally:
                stop.set()

        run_threads([mutator(s) for s in range(6)] + [collector], timeout=100)
        assert totals["cycles"] == 50
        assert totals["faults"] > 0 and totals["by_faults"] > 0, totals
        assert not remapgc_threads()
        model.check_all()
        heap.verify()


@pytest.mark.timeout(60)
def test_every_page_can_be_installed_by_the_fault_handler(kernel_name):
    """No compactor thread: each first touch of a to-space page is a fault
    the handler serves by building and installing that page."""
    rnd = random.Random(2)
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        model = Model(heap, seed=2)
        populate(model, 120, rnd)
        garbage(heap, rnd, 200)
        cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
        chunks = [model.objects[i::4] for i in range(4)]

        def reader(objs):
            return lambda: [model.read(o) for o in objs]

        run_threads([reader(c) for c in chunks])
        assert stats.faults_served == 0  # filled in at the end
        end_concurrent(heap, cycle)
        assert stats.pages_installed_by_faults > 0 and stats.faults_served >= stats.pages_installed_by_faults
        assert stats.fault_p50_ns > 0
        model.check_all()
        heap.verify()


@pytest.mark.timeout(60)
def test_allocation_past_the_top_during_install(kernel_name):
    """New objects land on pages no plan installs: the handler zero-fills them."""
    rnd = random.Random(3)
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        model = Model(heap, seed=3)
        populate(model, 40, rnd, large_every=5)
        cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
        fresh = [model.new(9000, 1, rnd) for _ in range(4)]  # large: each opens new pages past the top
        for obj in fresh:
            model.read(obj)
        end_concurrent(heap, cycle)
        assert stats.fresh_pages > 0
        model.check_all()
        heap.verify()


@pytest.mark.timeout(60)
def test_close_during_a_cycle_leaves_no_thread_and_no_blocked_mutator(kernel_name):
    rnd = random.Random(4)
    # the handler-thread mode (a self-serving cycle has no thread to leave): asked for, not the default
    heap = Heap(kernel=kernel_name, size=8 * MiB, compactor="remap", faults="thread")
    model = Model(heap, seed=4)
    populate(model, 80, rnd)
    begin_concurrent(heap, run_compactor=False)
    assert remapgc_threads()
    outcome = []

    def mutator():
        try:
            for obj in model.objects:
                model.read(obj)
            outcome.append("read all")
        except Exception as exc:  # HeapClosed once the heap is gone
            outcome.append(type(exc).__name__)

    t = threading.Thread(target=mutator, daemon=True)
    t.start()
    heap.close()
    t.join(JOIN_S)
    assert not t.is_alive() and outcome and outcome[0] in ("read all", "HeapClosed")
    assert not remapgc_threads()


@pytest.mark.timeout(60)
def test_an_exception_in_the_compactor_reaches_collect_and_the_heap_recovers(kernel_name, monkeypatch):
    from heap import concurrent

    rnd = random.Random(6)
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        model = Model(heap, seed=6)
        populate(model, 80, rnd)
        garbage(heap, rnd, 100)
        def failing(self, *args):  # the compactor thread's walk, native or not
            raise RuntimeError("injected compactor failure")

        monkeypatch.setattr(concurrent.ConcurrentCycle, "_install_all", failing)
        with pytest.raises(RuntimeError, match="injected"):
            heap.collect(concurrent=True)
        monkeypatch.undo()
        model.check_all()  # the next operation installs the rest first
        assert not remapgc_threads()
        heap.verify()


@pytest.mark.timeout(60)
def test_a_failure_inside_the_pause_puts_every_page_back(kernel_name, monkeypatch):
    from heap import concurrent

    rnd = random.Random(7)
    with Heap(kernel=kernel_name, size=8 * MiB, compactor="remap") as heap:
        model = Model(heap, seed=7)
        populate(model, 60, rnd)

        def broken(*args, **kwargs):
            raise MemoryError("injected: no room for the install program")

        monkeypatch.setattr(concurrent, "make_program", broken)
        with pytest.raises(MemoryError, match="injected"):
            heap.collect(concurrent=True)
        monkeypatch.undo()
        model.check_all()
        heap.verify()
        assert heap.collect(concurrent=True).live_objects == len(model.objects)


@pytest.mark.timeout(90)
def test_huge_page_units_with_mutators(kernel_name):
    """With THP the unit is 2 MiB: whole units move by PMD, evacuees may span
    pages; mutators fault pages in one at a time meanwhile."""
    rnd = random.Random(8)
    with Heap(kernel=kernel_name, size=32 * MiB, compactor="remap", thp=True) as heap:
        heap._pause.keep_prefix = False  # every unit installed (a dense prefix would stay: tests/heap/test_dense_prefix)
        model = Model(heap, seed=8)
        for i in range(120):
            size = rnd.randrange(20000, 300000) if i % 4 == 0 else rnd.randrange(16, 3000)
            model.new(size, rnd.randrange(0, 3), rnd)
        for obj in model.objects:
            for _ in obj.refs:
                model.link(obj, rnd)
        garbage(heap, rnd, 300)
        cycle, stats, _ = begin_concurrent(heap, chunk_pages=256)
        run_threads([lambda objs=model.objects[i::3]: [model.read(o) for o in objs] for i in range(3)])
        cycle.wait_compactor(JOIN_S)
        end_concurrent(heap, cycle)
        assert stats.pages_moved > 0
        model.check_all()
        heap.verify()
        assert heap.collect(concurrent=True).live_objects == len(model.objects)
        model.check_all()
