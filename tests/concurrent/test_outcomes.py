"""Every kernel outcome of an install, forced on the simulator's fault plan:
the path runs (its counter moves) and nothing is lost."""

from __future__ import annotations

import errno
import random
import threading

import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, collect_concurrent, end_concurrent
from heap.errors import CompactionAborted
from sim_backend import FaultRule, SimKernel
from tests.concurrent.model import Model, garbage, populate

MiB = 1 << 20


def sim_heap(seed: int):
    heap = Heap(kernel=SimKernel(seed=seed), size=8 * MiB, compactor="remap")
    heap._pause.keep_prefix = False  # every page installed: the outcomes are the install's (no dense prefix kept)
    rnd = random.Random(seed)
    model = Model(heap, seed=seed)
    populate(model, 60, rnd, large_every=3)  # large objects: multi-page runs for the compactor
    garbage(heap, rnd, 80)
    return heap, model


def check_nothing_lost(heap, model, rule_outcome: str) -> None:
    assert any(f.outcome == rule_outcome for f in heap.kernel.fault_plan.fired), "the forced outcome never fired"
    model.check_all()
    heap.verify()
    assert not [t for t in threading.enumerate() if t.name.startswith("remapgc-")]


COMPACTOR_OUTCOMES = [
    pytest.param(FaultRule("race", page=2), "partial_moves", id="EAGAIN-partial"),
    pytest.param(FaultRule("race", page=0), "eagain_retries", id="EAGAIN-0-contention"),
    pytest.param(FaultRule("mmap_changing"), "eagain_retries", id="EAGAIN-0-event-pending"),
    pytest.param(FaultRule("unreported_move", page=1), "eexist_races", id="EEXIST-race"),
    pytest.param(FaultRule("pinned", page=0), "ebusy_fallbacks", id="EBUSY-copy"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rule, counter", COMPACTOR_OUTCOMES)
def test_compactor_outcome_is_handled_and_counted(rule, counter):
    heap, model = sim_heap(11)
    with heap:
        heap.kernel.fault_plan.add(rule)
        stats = heap.collect(concurrent=True)
        assert getattr(stats, counter) >= 1, stats
        check_nothing_lost(heap, model, rule.outcome)


ABORTS = [
    pytest.param(FaultRule("enomem", page=0), errno.ENOMEM, id="ENOMEM"),
    pytest.param(FaultRule("fatal_signal", page=0), errno.EINTR, id="EINTR"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rule, err", ABORTS)
def test_refused_install_aborts_the_cycle_cleanly(rule, err):
    heap, model = sim_heap(12)
    with heap:
        heap.kernel.fault_plan.add(rule)
        with pytest.raises(CompactionAborted) as info:
            heap.collect(concurrent=True)
        assert info.value.errno == err
        assert info.value.stats.install_aborts == 1
        check_nothing_lost(heap, model, rule.outcome)  # the next operation installed the rest
        assert heap.collect(concurrent=True).pages_moved > 0  # and the heap collects again


@pytest.mark.timeout(60)
def test_refused_fault_service_is_retried_and_the_mutator_woken():
    heap, model = sim_heap(13)
    with heap:
        cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
        heap.kernel.fault_plan.add(FaultRule("enomem", op="move", page=0))
        heap.kernel.fault_plan.add(FaultRule("enomem", op="copy", page=0))
        big = [o for o in model.objects if o.size > 4096]
        done = threading.Event()
        t = threading.Thread(target=lambda: (model.read(big[0]), done.set()), daemon=True)
        t.start()
        t.join(30)
        assert done.is_set(), "the mutator stayed blocked"
        end_concurrent(heap, cycle)
        assert stats.install_retries >= 1 and stats.faults_served >= 1
        check_nothing_lost(heap, model, "enomem")


@pytest.mark.timeout(60)
def test_source_hole_is_zero_filled_on_a_fault():
    """A large object's page never written is a hole in the from-space: the
    handler's MOVE meets ENOENT and installs a zero page."""
    heap, model = sim_heap(14)
    with heap:
        obj = heap.alloc(6 * 4096)
        obj.write(b"head")
        cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
        assert obj.read(8, offset=4 * 4096) == bytes(8)
        assert obj.read(4) == b"head"
        end_concurrent(heap, cycle)
        assert stats.zero_filled >= 1
        model.check_all()
        heap.verify()


@pytest.mark.timeout(90)
def test_random_outcomes_under_concurrent_mutators():
    """Transient outcomes fire at random on moves and copies while six mutators
    run through 20 cycles: every one is absorbed, nothing is lost."""
    kernel = SimKernel(seed=21)
    plan = kernel.fault_plan
    for outcome in ("race", "mmap_changing", "pinned", "unreported_move"):
        plan.add(FaultRule(outcome, op="move", page=None, probability=0.05, times=None))
    plan.add(FaultRule("race", op="copy", page=None, probability=0.05, times=None))
    rnd = random.Random(21)
    with Heap(kernel=kernel, size=8 * MiB, compactor="remap") as heap:
        heap._pause.keep_prefix = False  # every page installed: the outcomes are the install's
        model = Model(heap, seed=21)
        populate(model, 80, rnd, large_every=4)
        stop = threading.Event()
        errors = []

        def mutator(seed):
            r = random.Random(seed)
            try:
                while not stop.is_set():
                    model.step(r)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=mutator, args=(s,), daemon=True) for s in range(6)]
        for t in threads:
            t.start()
        counts = dict(partial_moves=0, eagain_retries=0, ebusy_fallbacks=0, eexist_races=0)
        try:
            for i in range(20):
                garbage(heap, rnd, 30)
                st = collect_concurrent(heap, chunk_pages=4 if i % 2 else 64)
                for name in counts:
                    counts[name] += getattr(st, name)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not errors, errors[0]
        assert not any(t.is_alive() for t in threads)
        assert {f.outcome for f in plan.fired} >= {"race", "mmap_changing", "pinned", "unreported_move"}
        assert all(counts.values()), counts
        plan.rules.clear()
        model.check_all()
        heap.verify()
