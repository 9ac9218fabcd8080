"""The fault-injection soak (bench/soak.py), a bounded slice for CI.

Every cycle: random fault rules armed on the SimKernel, a collection
(stop-the-world, concurrent with the fault handler installing, or the public
collect(concurrent=True) with a mutator thread), then verify() and every
reachable object checked against the Python shadow model. The full count is
``python -m bench.soak --cycles 10000``.
"""

from __future__ import annotations


import pytest

from bench.soak import FAULT_KINDS, Scenario, SoakFailure, run_seed, soak
from heap import Heap
from heap.errors import HeapCorrupted
from sim_backend import FaultPlan, FaultRule, SimKernel

SLICE_CYCLES = 1000  # 15-70 s depending on load; every fault kind shows up well before
THREADED_CYCLES = 600
MOVES_CYCLES = 1500  # ~20 s; the claim bug showed up once per ~750 of these
SLICE_FIRST_SEED = 100_000  # apart from the seeds the full soak runs
# Seeds that once failed, replayed for good (seed, cycles). None has failed yet
# on the current heap; these two are the ones the replay test pins.
REPLAY_SEEDS = [(7, 25), (31, 25)]


def failures_text(tally) -> str:
    return "\n".join(f"seed {f['seed']} cycle {f['cycle']} ({f['mode']}, fired {f['fired']}): {f['error']}\n"
                     f"{f['traceback']}" for f in tally.failures)


@pytest.mark.timeout(200)
def test_a_slice_of_the_soak_loses_nothing_and_sees_every_fault_kind():
    """Stop-the-world and handler-installed concurrent cycles (deterministic per seed)."""
    tally = soak(SLICE_CYCLES, first_seed=SLICE_FIRST_SEED, modes=("stw", "handler"))
    assert tally.failures == [], failures_text(tally)
    assert tally.losses == 0
    assert tally.cycles == SLICE_CYCLES
    missing = [k for k in FAULT_KINDS if not tally.faults.get(k)]
    assert not missing, f"the slice never injected {missing}: {dict(tally.faults)}"
    assert sum(tally.clean_errors.values()) > 0  # some cycles did end in CompactionAborted and recovered
    assert set(tally.by_mode) == {"stw", "handler"}
    assert tally.objects_checked > 10 * SLICE_CYCLES


@pytest.mark.timeout(200)
@pytest.mark.parametrize("menu,cycles,first_seed", [("all", THREADED_CYCLES, SLICE_FIRST_SEED + 50_000),
                                                    ("moves", MOVES_CYCLES, SLICE_FIRST_SEED + 60_000)],
                         ids=["every-fault", "moves-refused"])
def test_a_threaded_slice_of_the_soak_loses_nothing(menu, cycles, first_seed):
    """collect(concurrent=True) in a thread while the caller reads and writes:
    the compactor thread and the fault handler race the mutator.

    The ``moves`` menu only refuses or cuts short MOVEs, so compactor chunks
    are put back while the handler claims their pages: before the claim fix
    (heap.concurrent.Claim) about one such cycle in 750 ended in
    HeapCorrupted, two installers having installed one page."""
    tally = soak(cycles, first_seed=first_seed, modes=("threaded",), menu=menu)
    assert tally.failures == [], failures_text(tally)
    assert tally.losses == 0
    assert tally.cycles == cycles
    assert tally.objects_checked > 10 * cycles


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed,cycles", REPLAY_SEEDS, ids=[f"seed{s}" for s, _ in REPLAY_SEEDS])
def test_a_seed_replays_exactly(seed, cycles):
    """Without the threaded mode a scenario is deterministic: a printed seed
    reproduces the same faults, errors and checks."""
    modes = ("stw", "handler")
    first = run_seed(seed, cycles, modes=modes)
    again = run_seed(seed, cycles, modes=modes)
    assert first.failures == [] and again.failures == []
    assert first.as_dict() == again.as_dict()
    assert sum(first.faults.values()) > 0


@pytest.mark.timeout(60)
def test_the_soak_notices_a_byte_changed_behind_the_heap():
    """The checker can fail: one byte of one object changed directly in memory."""
    sc = Scenario(3, modes=("stw",))
    try:
        for i in range(3):
            sc.cycle(i)
        oid = next(o for o, obj in sc.objs.items() if obj.nbytes and o in sc.roots)
        ref = sc.roots[oid]
        addr = ref.address + sc.heap.object_model.payload_offset(ref.nrefs)
        old = sc.kernel.load(addr, 1)
        sc.kernel.store(addr, bytes([old[0] ^ 0xFF]))
        with pytest.raises(SoakFailure, match=f"object {oid}: payload differs"):
            sc.check_all()
        assert sc.tally.losses == 1
    finally:
        sc.close()


@pytest.mark.timeout(60)
def test_the_soak_notices_a_dropped_reference():
    sc = Scenario(4, modes=("stw",))
    try:
        for i in range(3):
            sc.cycle(i)
        oid = next(o for o, obj in sc.objs.items() if any(t is not None for t in obj.refs) and o in sc.roots)
        slot = next(s for s, t in enumerate(sc.objs[oid].refs) if t is not None)
        ref = sc.roots[oid]
        where = int(sc.heap.object_model.slot_addresses(
            __import__("numpy").array([ref.address]), __import__("numpy").array([ref.nrefs]))[slot])
        sc.kernel.store(where, bytes(8))
        with pytest.raises(SoakFailure, match=f"object {oid} slot {slot} is None"):
            sc.check_all()
    finally:
        sc.close()


@pytest.mark.timeout(60)
def test_a_to_space_page_filled_from_outside_is_reported_not_accepted():
    """EEXIST with the source page still there means someone else filled the
    to-space: the stop-the-world install must refuse it as HeapCorrupted
    rather than keep a foreign page in place of an object's."""
    k = SimKernel(seed=1)
    with Heap(kernel=k, size=8 << 20, compactor="remap") as h:
        h.alloc(5000)  # dead: the objects above it move down, so the collection installs pages
        keep = [h.alloc(5000) for _ in range(8)]
        for i, r in enumerate(keep):
            r.write(bytes([i + 1]) * 5000)
        k.fault_plan = FaultPlan([FaultRule("dst_populated", op="move", call=None, page=0, times=1)])
        with pytest.raises(HeapCorrupted, match="install"):
            h.collect()
        assert [f.outcome for f in k.fault_plan.fired] == ["dst_populated"]
