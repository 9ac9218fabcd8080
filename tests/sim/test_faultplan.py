"""The fault plan: each injected outcome, its record, serialisation and deterministic replay."""

from __future__ import annotations

import errno

import pytest

from sim_backend import FaultPlan, FaultRule, SimKernel

from .conftest import HP, PS, Pair, outcome

pytestmark = pytest.mark.timeout(30)




def setup(k, pages=8):
    u = k.userfaultfd()
    p = Pair(k, u, pages=64)
    p.fill(*range(pages))
    return u, p


MOVE_OUTCOMES = [
    # name, rule, (errno, moved pages), dst pages populated afterwards
    ("race at page 3", FaultRule("race", page=3), (errno.EAGAIN, 3), 3),
    ("race at page 0", FaultRule("race", page=0), (errno.EAGAIN, 0), 0),
    ("dst populated at page 2", FaultRule("dst_populated", page=2), (errno.EAGAIN, 2), 3),
    ("dst populated at page 0", FaultRule("dst_populated", page=0), (errno.EEXIST, 0), 1),
    ("enomem at page 5", FaultRule("enomem", page=5), (errno.EAGAIN, 5), 5),
    ("enomem at page 0", FaultRule("enomem", page=0), (errno.ENOMEM, 0), 0),
    # the signal is seen after the step begun at its page: that batch is moved but not counted
    ("fatal signal at page 4", FaultRule("fatal_signal", page=4), (errno.EAGAIN, 4), 8),
    ("fatal signal at page 0", FaultRule("fatal_signal", page=0), (errno.EINTR, 0), 8),
    ("mmap_changing", FaultRule("mmap_changing"), (errno.EAGAIN, 0), 0),
    ("pinned at page 6", FaultRule("pinned", page=6), (errno.EAGAIN, 6), 6),
    ("pinned at page 0", FaultRule("pinned", page=0), (errno.EBUSY, 0), 0),
    ("6.18 unreported move at page 2", FaultRule("unreported_move", page=2), (errno.EAGAIN, 2), 8),
    ("6.18 unreported move at page 0", FaultRule("unreported_move", page=0), (errno.EEXIST, 0), 8),
]


@pytest.mark.parametrize("rule,expected,populated", [c[1:] for c in MOVE_OUTCOMES], ids=[c[0] for c in MOVE_OUTCOMES])
def test_move_outcome(rule, expected, populated):
    k = SimKernel(seed=1)
    u, p = setup(k)
    k.fault_plan.add(rule)
    err, moved = outcome(lambda: u.move(p.dst, p.src, 8 * PS))
    assert (err, moved if err else 0) == (expected[0], expected[1] * PS)
    assert sum(k.page_info(p.dst + i * PS).state != "none" for i in range(8)) == populated
    assert [f.outcome for f in k.fault_plan.fired] == [rule.outcome]
    # a second move of the rest behaves normally (the rule fired its one time)
    k.fault_plan.rules.clear()


def test_rule_targets_the_nth_call_only():
    k = SimKernel()
    u, p = setup(k)
    k.fault_plan.add(FaultRule("race", call=1, page=1))
    assert u.move(p.dst, p.src, 2 * PS) == 2 * PS  # call 0: untouched
    assert outcome(lambda: u.move(p.dst + 2 * PS, p.src + 2 * PS, 4 * PS)) == (errno.EAGAIN, PS)
    assert u.move(p.dst + 3 * PS, p.src + 3 * PS, PS) == PS  # call 2
    assert [(f.call, f.page) for f in k.fault_plan.fired] == [(1, 1)]


def test_times_bounds_how_often_a_rule_fires():
    k = SimKernel()
    u, p = setup(k)
    k.fault_plan.add(FaultRule("mmap_changing", times=2))
    results = [outcome(lambda i=i: u.move(p.dst + i * PS, p.src + i * PS, PS)) for i in range(3)]
    assert results == [(errno.EAGAIN, 0), (errno.EAGAIN, 0), (0, PS)]


def test_copy_and_zeropage_outcomes():
    k = SimKernel()
    u, p = setup(k)
    k.fault_plan.add(FaultRule("race", op="copy", page=2))
    k.fault_plan.add(FaultRule("dst_populated", op="zeropage", page=1))
    assert outcome(lambda: u.copy(p.dst, p.src, 4 * PS)) == (errno.EAGAIN, 2 * PS)
    assert outcome(lambda: u.zeropage(p.dst + 8 * PS, 4 * PS)) == (errno.EAGAIN, PS)
    assert k.page_info(p.dst + 9 * PS).state == "present"  # the concurrent fill


def test_move_only_outcomes_are_refused_for_copy():
    with pytest.raises(ValueError):
        FaultRule("pinned", op="copy")
    with pytest.raises(ValueError):
        FaultRule("sideways")


def test_plan_round_trips_through_json():
    plan = FaultPlan(seed=9, rules=[FaultRule("race", page=3, call=2), FaultRule("enomem", op="copy", probability=0.5, page=None)])
    again = FaultPlan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()


def run_random(seed):
    plan = FaultPlan(seed=seed, rules=[FaultRule("race", probability=0.5, page=None, times=None)])
    k = SimKernel(seed=seed, fault_plan=plan)
    u, p = setup(k, pages=32)
    results = []
    for i in range(16):
        results.append(outcome(lambda i=i: u.move(p.dst + 2 * i * PS, p.src + 2 * i * PS, 2 * PS)))
    return results, [(f.call, f.page) for f in plan.fired], list(k.page_frames(p.dst, 32))


def test_same_seed_and_plan_replay_exactly():
    first = run_random(5)
    assert first == run_random(5)
    assert any(r[0] for r in first[0]) and any(r[0] == 0 for r in first[0])


def test_another_seed_gives_another_run():
    assert run_random(5)[1] != run_random(6)[1]


def test_reset_replays_the_plan_from_the_start():
    k = SimKernel(seed=3)
    k.fault_plan.add(FaultRule("race", call=0, page=1))
    u, p = setup(k)
    assert outcome(lambda: u.move(p.dst, p.src, 2 * PS)) == (errno.EAGAIN, PS)
    k.fault_plan.reset()
    assert outcome(lambda: u.move(p.dst + 4 * PS, p.src + 4 * PS, 2 * PS)) == (errno.EAGAIN, PS)


def test_race_inside_a_pmd_move_fires_at_the_next_step():
    k = SimKernel()
    u = k.userfaultfd()
    p = Pair(k, u, pages=4 * 512, huge=True)
    k.store(p.src, b"a")
    k.store(p.src + HP, b"b")
    k.fault_plan.add(FaultRule("race", page=100))
    assert outcome(lambda: u.move(p.dst, p.src, 2 * HP)) == (errno.EAGAIN, HP)
    assert k.page_info(p.dst).huge
