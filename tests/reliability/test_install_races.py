"""Concurrent installers racing over one page, and what the heap does when an
install finds a page it did not put there.

Two installers run during a concurrent cycle: the compactor thread (chunks of
pages) and the fault handler (the page a mutator touched). Each page is
claimed by exactly one of them (``PageStates``). These tests pin the claim
rules that once broke (a chunk given up after a refused MOVE returned a page
the handler had claimed meanwhile, and both installed it), and the fail-safe
for a to-space page filled from outside the heap: the heap refuses every
further operation with HeapCorrupted instead of blocking the faulting mutator
or handing it foreign bytes.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from heap import Heap
from heap.concurrent import INSTALLED, PROCESSING, UNPROCESSED, PageStates, begin_concurrent, end_concurrent
from heap.errors import HeapCorrupted
from sim_backend import FaultPlan, FaultRule, SimKernel
from tests.concurrent.test_concurrent import remapgc_threads

JOIN_S = 10.0


def test_a_page_put_back_and_claimed_by_another_installer_stays_theirs():
    """The compactor's chunk: MOVE refused, its pages settled back to
    unprocessed; the fault handler claims one of them before the compactor
    gives its claim up. Giving it up must leave the handler's page alone."""
    states = PageStates(16)
    chunk = states.claim_range(0, 16)
    states.settle(chunk, np.arange(16), np.zeros(16, dtype=bool))  # the MOVE was refused: all back
    assert states.claim(15) == UNPROCESSED  # the fault handler takes page 15
    states.release(chunk)  # the compactor gives up its claim
    assert states.state_of(15) == PROCESSING  # still the handler's
    assert states.claim_range(0, 16).held[15] == np.False_  # nobody else can claim it
    states.settle_one(15, True)
    assert states.state_of(15) == INSTALLED


def test_giving_up_a_claim_returns_only_the_pages_it_still_holds():
    states = PageStates(8)
    chunk = states.claim_range(0, 8)
    states.settle(chunk, np.array([0, 1, 2]), np.array([True, True, False]))
    states.release(chunk)
    assert states.state.tolist() == [INSTALLED, INSTALLED] + [UNPROCESSED] * 6
    assert states.installed == 2


def test_settling_a_page_twice_is_refused():
    states = PageStates(4)
    chunk = states.claim_range(0, 4)
    states.settle(chunk, np.array([1]), np.array([False]))
    assert states.claim(1) == UNPROCESSED  # someone else's now
    with pytest.raises(AssertionError, match="not held"):
        states.settle(chunk, np.array([1]), np.array([True]))
    assert states.state_of(1) == PROCESSING


def _heap_with_objects(kernel, n=8):
    h = Heap(kernel=kernel, size=8 << 20, compactor="remap")
    h._pause.keep_prefix = False  # every page installed (nothing died: the dense prefix would be all of them)
    keep = [h.alloc(5000) for _ in range(n)]  # page-owning objects: each moves whole, by the handler's MOVE
    for i, r in enumerate(keep):
        r.write(bytes([i + 1]) * 5000)
    return h, keep


@pytest.mark.timeout(60)
def test_a_foreign_page_met_by_the_fault_handler_fails_the_heap_instead_of_blocking_the_mutator():
    """A to-space page filled from outside while a mutator waits on it: the
    handler's MOVE meets EEXIST with the source still there. The mutator is
    let go and its read raises HeapCorrupted (no foreign bytes returned, no
    hang); every later operation refuses; close() still works."""
    k = SimKernel(seed=2)
    h, keep = _heap_with_objects(k)
    try:
        cycle, _, _ = begin_concurrent(h, run_compactor=False)  # every page waits for a fault
        k.fault_plan = FaultPlan([FaultRule("dst_populated", op="move", call=None, page=0, times=1)])
        outcome: list = []

        def mutator():
            try:
                outcome.append(keep[3].read(5000))
            except BaseException as exc:  # noqa: BLE001 -- handed to the test
                outcome.append(exc)

        t = threading.Thread(target=mutator, daemon=True)
        t.start()
        t.join(JOIN_S)
        assert not t.is_alive(), "the faulting mutator was left blocked"
        assert [f.outcome for f in k.fault_plan.fired] == ["dst_populated"]
        assert isinstance(outcome[0], HeapCorrupted), outcome
        for op in (lambda: keep[0].read(10), lambda: h.alloc(10), h.verify, h.collect):
            with pytest.raises(HeapCorrupted, match="refuses every operation"):
                op()
        with pytest.raises(HeapCorrupted):
            end_concurrent(h, cycle)
    finally:
        h.close()
    assert not remapgc_threads()


@pytest.mark.timeout(60)
def test_a_foreign_page_met_by_the_compactor_fails_collect_and_the_heap():
    k = SimKernel(seed=3)
    h, keep = _heap_with_objects(k)
    try:
        k.fault_plan = FaultPlan([FaultRule("dst_populated", op="move", call=0, page=0, times=1)])
        with pytest.raises(HeapCorrupted, match="populated"):
            h.collect(concurrent=True)
        with pytest.raises(HeapCorrupted, match="refuses every operation"):
            keep[0].read(10)
    finally:
        h.close()
    assert not remapgc_threads()
