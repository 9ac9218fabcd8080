"""Every kernel outcome of a self-served install, forced on the simulator's
fault plan: no compactor runs, so each page is installed by the thread that
faulted on it, which meets the forced answer, settles it as the handler
thread would, and counts it in the cycle's stats; nothing is lost."""

from __future__ import annotations

import random

import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent
from heap.errors import HeapCorrupted
from sim_backend import FaultRule, SimKernel
from tests.concurrent.model import Model, garbage, populate

MiB = 1 << 20


def self_served_cycle(rule: FaultRule, seed: int = 21, fresh: bool = False):
    kernel = SimKernel(seed=seed)
    heap = Heap(kernel=kernel, size=8 * MiB, compactor="remap", faults="self")
    rnd = random.Random(seed)
    model = Model(heap, seed=seed)
    populate(model, 60, rnd, large_every=3)
    garbage(heap, rnd, 80)
    kernel.fault_plan.add(rule)
    cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
    if fresh:  # header stores past the top: fresh pages, ZEROPAGE
        for _ in range(10):
            model.new(8000, 1, rnd)
    for obj in model.objects:
        model.read(obj)
    return heap, model, cycle, stats


OUTCOMES = [
    pytest.param(FaultRule("race", page=0), "eagain_retries", False, id="MOVE-EAGAIN-contention"),
    pytest.param(FaultRule("mmap_changing"), "eagain_retries", False, id="MOVE-EAGAIN-event-pending"),
    pytest.param(FaultRule("unreported_move", page=0), "eexist_races", False, id="MOVE-EEXIST-unreported"),
    # pinned for the MOVE and its retry (a pin outlives one call): the faulter COPYs the page
    pytest.param(FaultRule("pinned", page=0, times=2), "ebusy_fallbacks", False, id="MOVE-EBUSY-copy"),
    pytest.param(FaultRule("enomem", page=0), "install_retries", False, id="MOVE-ENOMEM-retried"),
    # EINTR after the step: the page went in unreported; the faulter sees it did (no counter: nothing to redo)
    pytest.param(FaultRule("fatal_signal", page=0), None, False, id="MOVE-EINTR-moved-unreported"),
    pytest.param(FaultRule("enomem", op="copy", page=0), "install_retries", False, id="COPY-ENOMEM-retried"),
    pytest.param(FaultRule("race", op="copy", page=0), "install_retries", False, id="COPY-EAGAIN-retried"),
    pytest.param(FaultRule("enomem", op="zeropage", page=0), "install_retries", True, id="ZEROPAGE-ENOMEM-retried"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rule, counter, fresh", OUTCOMES)
def test_a_forced_outcome_is_settled_by_the_faulting_thread_and_counted(rule, counter, fresh):
    heap, model, cycle, stats = self_served_cycle(rule, fresh=fresh)
    with heap:
        end_concurrent(heap, cycle)
        assert any(f.outcome == rule.outcome for f in heap.kernel.fault_plan.fired), "the forced outcome never fired"
        assert counter is None or getattr(stats, counter) >= 1, stats
        assert stats.pages_installed_by_faults > 0
        model.check_all()
        heap.verify()
        assert heap.kernel.counters.sigbus_raised > 0 and heap.kernel.counters.faults_raised == 0  # never queued


@pytest.mark.timeout(60)
def test_a_page_filled_from_outside_breaks_the_heap_instead_of_returning_its_bytes():
    """EEXIST with the source still there: another hand filled the to-space page."""
    with pytest.raises(HeapCorrupted):
        heap, model, cycle, stats = self_served_cycle(FaultRule("dst_populated", page=0))
        try:
            end_concurrent(heap, cycle)
            model.check_all()
        finally:
            heap.close()
