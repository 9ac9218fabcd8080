"""Self-served faults on the real kernel, each case in a child process
(tests/selfservice/child.py) under a watchdog: the GIL hazard turned around,
a refused MOVE settled in the handler, a signal during a self-served fault,
and SIGBUS chaining to the handler installed before."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import skip_linux_if_unavailable

ROOT = Path(__file__).resolve().parents[2]


def run_child(mode: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-m", "tests.selfservice.child", mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def field(out: str, name: str) -> int:
    return int(out.split(f"{name}=")[1].split()[0])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["raw-whole", "raw-rebuilt", "raw-cext", "raw-forked"])
def test_a_numpy_access_holding_the_gil_completes_when_faults_are_self_served(mode):
    """The access the handler-thread mode deadlocks on (tests/concurrent/test_gil_hazard:
    raw-forwarded) completes: the faulting thread installs its page in C."""
    skip_linux_if_unavailable()
    child = run_child(mode)
    assert child.returncode == 0, child.stdout + child.stderr[-3000:]
    assert f"{mode}: done" in child.stdout
    assert field(child.stdout, "faults_served") >= 1
    if mode == "raw-forked":  # shared with the child: EBUSY, settled by COPY in the handler
        assert field(child.stdout, "ebusy_fallbacks") >= 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kernel", ["linux", "sim"])
def test_a_signal_during_a_self_served_fault_runs_its_handler_and_the_access_completes(kernel):
    if kernel == "linux":
        skip_linux_if_unavailable()
    child = run_child("signal-during-fault" if kernel == "linux" else "sim-signal-during-fault")
    assert child.returncode == 0, child.stdout + child.stderr[-3000:]
    assert f"{kernel} signal-during-fault: done" in child.stdout
    assert field(child.stdout, "alarms") >= 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode, installed", [
    pytest.param("outside", "installed-open=True", id="heap-open"),
    pytest.param("outside-after-close", "installed-closed=False", id="after-last-close"),
])
def test_a_sigbus_outside_the_heap_reaches_the_previous_handler(mode, installed):
    """faulthandler's handler (installed before the heap's) sees it: stacks dumped, death by SIGBUS."""
    skip_linux_if_unavailable()
    child = run_child(mode, "-X", "faulthandler")
    assert installed in child.stdout
    assert "touching" in child.stdout and "survived" not in child.stdout
    assert child.returncode == -signal.SIGBUS, child.stderr[-2000:]
    assert "Fatal Python error: Bus error" in child.stderr
    assert "sigbus_outside_the_heap" in child.stderr  # faulthandler's traceback of the faulting frame


@pytest.mark.timeout(90)
def test_a_sigbus_outside_the_heap_with_no_previous_handler_takes_the_default_action():
    skip_linux_if_unavailable()
    child = run_child("outside-default")
    assert "installed-open=True" in child.stdout and "survived" not in child.stdout
    assert child.returncode == -signal.SIGBUS, child.stderr[-2000:]
    assert "Fatal Python error" not in child.stderr


@pytest.mark.timeout(90)
def test_os_fork_settles_a_background_collection_and_the_child_collects_self_serving():
    skip_linux_if_unavailable()
    child = run_child("fork-settles")
    assert child.returncode == 0, child.stdout + child.stderr[-3000:]
    assert "fork-settles: done child=0 settled=True" in child.stdout
