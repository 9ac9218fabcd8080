"""Heap(faults=...): the fault mode asked for, or chosen by measurement, and
what remapgc doctor says about it."""

from __future__ import annotations

import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent
from heap.faultmode import SELF_MARGIN, choose_fault_mode, measure, pick
from tests.backends import make_kernel, skip_linux_if_unavailable

MiB = 1 << 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("faults", ["self", "thread"])
def test_the_mode_asked_for_is_the_mode_the_uffd_is_opened_in(kernel_name, faults):
    with Heap(kernel=kernel_name, size=4 * MiB, compactor="remap", faults=faults) as heap:
        assert heap._uffd.self_serving == (faults == "self")


@pytest.mark.timeout(60)
def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="faults must be one of"):
        Heap(kernel="sim", size=4 * MiB, faults="signal")


@pytest.mark.timeout(60)
def test_auto_on_linux_measures_both_modes_and_takes_the_faster():
    skip_linux_if_unavailable()
    kernel = make_kernel("linux")
    m = measure(kernel)
    assert m is not None and all(m[k] > 0 for k in ("self_p50_ns", "thread_p50_ns", "self_p99_ns", "thread_p99_ns"))
    mode, why = choose_fault_mode("auto", kernel)
    assert mode in ("self", "thread") and "measured" in why and "self-served" in why
    with Heap(kernel="linux", size=4 * MiB, compactor="remap", faults="auto") as heap:
        assert heap._uffd.self_serving == (mode == "self")  # measured once per process: the same choice


@pytest.mark.timeout(60)
def test_a_heap_that_asks_for_no_mode_runs_what_auto_picks(kernel_name):
    """The default is "auto": measured on Linux (self-served where faster), the handler thread on the simulator."""
    kernel = make_kernel(kernel_name)
    try:
        mode, why = choose_fault_mode("auto", kernel)
        with Heap(kernel=kernel, size=4 * MiB, compactor="remap") as heap:
            assert (heap.faults, heap.faults_reason) == (mode, why)
            assert heap._uffd.self_serving == (mode == "self")
    finally:
        kernel.close()


@pytest.mark.parametrize("self_us, thread_us, mode", [
    (7.8, 12.5, "self"),  # faster
    (12.1, 12.6, "self"),  # a near tie
    (12.5, 12.5 / SELF_MARGIN + 0.1, "self"),  # just inside the margin
    (12.5, 12.5 / SELF_MARGIN - 0.1, "thread"),  # just outside it
    (30.0, 10.0, "thread"),  # clearly slower
], ids=["self faster", "near tie", "inside the margin", "outside the margin", "thread clearly faster"])
def test_auto_keeps_self_served_faults_unless_the_handler_thread_is_clearly_faster(self_us, thread_us, mode):
    m = {"self_p50_ns": int(self_us * 1000), "thread_p50_ns": int(thread_us * 1000), "self_p99_ns": 1,
         "thread_p99_ns": 1}
    picked, why = pick(m)
    assert picked == mode and f"{self_us:.1f} us self-served" in why


@pytest.mark.timeout(60)
def test_auto_on_the_simulator_keeps_the_handler_thread_and_says_why():
    mode, why = choose_fault_mode("auto", make_kernel("sim"))
    assert mode == "thread" and "no native fault service" in why


@pytest.mark.timeout(120)
def test_doctor_reports_the_choice_and_its_reason():
    skip_linux_if_unavailable()
    from heap.doctor import report

    rep = report()
    assert rep["sigbus_offered"] is True
    assert rep["faults_auto"] in ("self", "thread") and "measured" in rep["faults_reason"]


@pytest.mark.timeout(60)
def test_a_wrapper_that_hides_the_native_parts_self_serves_only_where_python_can(kernel_name):
    """bench.wrappers hide the accelerator: on Linux nothing could then serve the
    SIGBUS (no native handler, no Python hook), so the heap falls back to the
    handler thread and says why; the simulator's SIGBUS hook serves it in Python."""
    import random

    from bench.concurrent import PythonOnly
    from heap.kernel import open_kernel
    from tests.concurrent.model import Model, populate

    with Heap(kernel=PythonOnly(open_kernel(kernel_name)), size=4 * MiB, compactor="remap", faults="self") as heap:
        if kernel_name == "linux":
            assert not heap._uffd.self_serving
            assert heap.faults == "thread" and "can serve a SIGBUS" in heap.faults_reason
        else:
            assert heap._uffd.self_serving and heap.faults == "self"
        model = Model(heap, seed=2)
        populate(model, 30, random.Random(2))
        cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
        for obj in model.objects:
            model.read(obj)
        end_concurrent(heap, cycle)
        assert stats.faults_served > 0
        model.check_all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("asked", ["thread", "self"])
def test_the_heap_says_which_fault_mode_it_runs_and_why(kernel_name, asked):
    with Heap(kernel=kernel_name, size=4 * MiB, compactor="remap", faults=asked) as heap:
        assert heap.faults == asked  # both backends serve both modes natively or in Python
        assert heap.faults_reason
