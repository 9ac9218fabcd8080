"""Issue 16, "Hangs": host callbacks and interrupts must never leave the heap
half-flipped, an access counted in flight, or a thread running.

Each case runs in a child interpreter with a hard timeout (``support.run_child``):
before the fixes these hung for good.
"""

from __future__ import annotations

import pytest

from tests.regressions.support import run_child

SCANNER_FAULTS = [
    pytest.param("stw", "raise_in_update", id="stw-update_roots-raises"),
    pytest.param("concurrent", "raise_in_update", id="concurrent-update_roots-raises"),
    pytest.param("stw", "alloc_in_scan", id="stw-alloc-inside-scan_roots"),
    pytest.param("concurrent", "alloc_in_scan", id="concurrent-alloc-inside-scan_roots"),
    pytest.param("stw", "stats_in_update", id="stw-heap-method-inside-update_roots"),
    pytest.param("concurrent", "stats_in_update", id="concurrent-heap-method-inside-update_roots"),
    pytest.param("concurrent", "read_in_update", id="concurrent-ref-read-inside-update_roots"),
]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode, fault", SCANNER_FAULTS)
def test_a_failing_or_reentrant_root_scanner_leaves_a_whole_heap(kernel_name, mode, fault):
    """#3: the scanner's failure reaches the caller of collect(); the heap is
    not left half-flipped (every object readable, verify() passes, it collects again)."""
    out = run_child("scanner", kernel_name, mode, fault, timeout=30)
    assert out["error"] is not None, "the scanner's failure must reach the caller"
    if fault != "raise_in_update":  # a heap call from inside a scanner is refused, clearly
        assert "HeapError" in out["error_classes"] and "root scanner" in out["error"], out["error"]
    assert out["checked"] > 0


@pytest.mark.timeout(200)
def test_close_inside_a_root_scanner_gives_a_clear_heap_error(kernel_name):
    """#15 (last item): not EFAULT or AttributeError from a heap closed under the collection."""
    out = run_child("scanner", kernel_name, "stw", "close_in_scan", timeout=30)
    assert "HeapError" in out["error_classes"], out["error"]


@pytest.mark.timeout(200)
def test_ctrl_c_during_ref_accesses_while_another_thread_collects_leaves_no_access_in_flight(kernel_name):
    """#4: KeyboardInterrupt caught in the main thread during Ref.read/write/
    get_ref/set_ref while collect(concurrent=True) runs in another thread: the
    collector never waits forever for an access that ended."""
    out = run_child("sigint_during_accesses", kernel_name, "10")
    assert not out["stuck"], f"threads stuck: {out}"
    assert not out["errors"], out["errors"]
    assert out["interrupts"] > 0 and out["cycles"] > 0, out
    assert out["checked"] > 0


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode", ["stw", "concurrent"])
def test_three_sigints_right_after_the_flip_leave_a_heap_that_verifies(kernel_name, mode):
    """#5: the escape hatch (the third SIGINT goes through) never leaves the
    objects in the from-space with nobody to install them."""
    out = run_child("three_sigints_after_flip", kernel_name, mode, timeout=30)
    assert out["raised"] == "KeyboardInterrupt", "the interrupt must still reach the caller"
    assert out["checked"] > 0


@pytest.mark.timeout(250)
def test_ctrl_c_inside_close_during_a_concurrent_cycle_then_close_again_stops_every_thread(kernel_name):
    """#6: no remapgc thread outlives close(), and the collecting thread gets
    HeapClosed at once (not CompactionAborted(ETIMEDOUT) after 10 s)."""
    out = run_child("sigint_inside_close", kernel_name, "30" if kernel_name == "linux" else "12", timeout=220)
    assert out["interrupted"] > 0, f"no close() was interrupted: the test did not test anything ({out})"
    assert not out["problems"], out["problems"]
