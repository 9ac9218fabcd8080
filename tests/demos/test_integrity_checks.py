"""The demos' integrity checks can fail: each catches the corruption it exists for, and a failed
check makes the command exit 1."""

import numpy as np
import pytest
from rich.console import Console

from demos.bigarrays import ArraySpec, read_back, store_arrays
from demos.common import DemoContext, DemoReport
from demos.concurrent import Mutator, Shared
from demos.fragmentation import Population, allocate, check_survivors
from tests.demos.conftest import failed_checks, run_demo_json


@pytest.fixture
def ctx(kernel_name):
    return DemoContext(backend=kernel_name, backend_note="", size="small", seed=1, plot=None,
                       console=Console(quiet=True))


@pytest.fixture
def heap(ctx):
    with ctx.heap(size=16 << 20) as heap:
        yield heap


def failed_names(report: DemoReport) -> set[str]:
    return {check.name for check in report.checks if not check.ok}


@pytest.mark.timeout(120)
def test_fragmentation_catches_a_corrupt_payload_and_a_misdirected_reference(ctx, heap):
    population = Population.generate(80, seed=2)
    refs = allocate(ctx, heap, population, "remap")
    for index in np.flatnonzero(population.dies):
        refs[index] = None
    clean = DemoReport("t", "t")
    check_survivors(heap, population, refs, "remap", clean)
    assert failed_names(clean) == set()

    survivors = [int(i) for i in population.survivors]
    refs[survivors[0]].write(b"\xff" * 8)  # behind the demo's back
    linked = next(i for i in survivors if population.slot_targets[i])
    wrong_target = next(i for i in survivors if i != population.slot_targets[linked][0])
    refs[linked].set_ref(0, refs[wrong_target])
    report = DemoReport("t", "t")
    check_survivors(heap, population, refs, "remap", report)
    assert failed_names(report) == {"every survivor's payload intact", "every survivor's references intact"}


@pytest.mark.timeout(120)
def test_concurrent_mutator_catches_a_changed_payload_and_a_broken_ring(heap):
    mutator = Mutator(0, heap, Shared(), seed=1)
    mutator.populate(20, np.random.default_rng(0))
    assert mutator.check_all() == 0
    mutator.refs[3].write(b"\xff" * 16)
    mutator.refs[7].set_ref(0, mutator.refs[2])
    mutator.check_all()
    assert any("slot 3: payload differs" in m for m in mutator.mismatches)
    assert any("slot 7: reference does not lead to slot 8" in m for m in mutator.mismatches)


@pytest.mark.timeout(120)
def test_bigarrays_read_back_catches_one_changed_byte(ctx, heap):
    spec = ArraySpec((1000, 3), np.dtype(np.float32), seed=4)
    refs, checksums = store_arrays(ctx, heap, [spec], "t")
    assert read_back(refs[0], spec, checksums[0])
    middle = spec.nbytes // 2
    refs[0].write(bytes([refs[0].read(1, offset=middle)[0] ^ 0xFF]), offset=middle)
    assert not read_back(refs[0], spec, checksums[0])


@pytest.mark.timeout(300)
def test_a_failed_check_fails_the_command(capsys, monkeypatch):
    import demos.lisp.demo

    monkeypatch.setattr(demos.lisp.demo, "expected_answer", lambda size: "(not the answer)")
    code, summary = run_demo_json(capsys, "lisp", "auto")
    assert code == 1 and summary["ok"] is False
    assert [name.split(":")[0] for name in failed_checks(summary)] == ["the program printed the known answer"]


@pytest.mark.timeout(120)
def test_a_demo_that_raises_reports_the_error_and_exits_1(capsys, monkeypatch):
    import demos.bigarrays

    def broken(*args, **kwargs):
        raise RuntimeError("the heap went away")

    monkeypatch.setattr(demos.bigarrays, "plan_arrays", broken)
    code, summary = run_demo_json(capsys, "bigarrays", "sim")
    assert code == 1 and summary["ok"] is False
    assert failed_checks(summary) == ["the demo ran to completion: RuntimeError: the heap went away"]
