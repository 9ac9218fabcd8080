"""The GIL hazard (ARCHITECTURE.md): the faults the native server forwards
(a page someone holds, a refused MOVE) are served by a Python thread, so a mutator blocked in a userfault must not hold the GIL. The heap
prevents it by design: every access to heap memory is a compiled call that
releases the GIL, and no numpy view of heap memory is handed out. Each case
runs in a child process with a watchdog, so the test never hangs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import skip_linux_if_unavailable

ROOT = Path(__file__).resolve().parents[2]


def run_child(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.concurrent.gil_child", mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_mutators_through_the_heap_api_never_block_the_python_handler():
    skip_linux_if_unavailable()
    child = run_child("api")
    assert child.returncode == 0, child.stderr[-3000:]
    assert "api: done" in child.stdout
    served = int(child.stdout.split("faults_served=")[1].split()[0])
    assert served > 0  # the pages really were installed under faults


@pytest.mark.timeout(90)
def test_a_numpy_access_holding_the_gil_deadlocks_the_python_handler():
    """The control: what the design avoids does hang (and the watchdog ends it)."""
    skip_linux_if_unavailable()
    child = run_child("raw-forwarded")
    assert child.returncode != 0 and "raw-forwarded: done" not in child.stdout, child.stdout + child.stderr[-2000:]
    assert "Timeout" in child.stderr  # the watchdog ended it
    source = (ROOT / "tests/concurrent/gil_child.py").read_text().splitlines()
    store = next(i for i, line in enumerate(source, 1) if line.strip().startswith("arr[8] = arr[8]"))
    # the mutator is stuck on the numpy store, the handler waiting for the GIL inside read_events
    assert f'gil_child.py", line {store} in main' in child.stderr
    waiting = "in read_forwarded" in child.stderr or "in read_events" in child.stderr  # native server or not
    assert waiting and "faults.py" in child.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("page", ["whole", "rebuilt"])
def test_the_native_fault_server_serves_even_a_gil_holding_access(page):
    """The common faults (a page that moves whole, a rebuilt page) never need
    Python: the C fault server installs them, so even the access the heap
    forbids completes."""
    skip_linux_if_unavailable()
    child = run_child(f"raw-{page}")
    assert child.returncode == 0, child.stderr[-3000:]
    assert f"raw-{page}: done" in child.stdout
    assert int(child.stdout.split("faults_served=")[1].split()[0]) >= 1
