"""LinuxKernel.fork(): a child that holds our pages copy-on-write, and is always reaped."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from heap.kernel import PAGE_SIZE

PS = PAGE_SIZE


def process_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (S, Z, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def wait_until_gone(pid: int, timeout: float = 10.0) -> str | None:
    """Poll until ``pid`` no longer runs; its last state (None: gone, "Z": dead, unreaped)."""
    deadline = time.monotonic() + timeout
    state = process_state(pid)
    while state not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.02)
        state = process_state(pid)
    return state


def settles_asleep(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` sleeps (it runs briefly after the fork, closing descriptors)."""
    deadline = time.monotonic() + timeout
    while process_state(pid) != "S" and time.monotonic() < deadline:
        time.sleep(0.01)
    return process_state(pid) == "S"


def is_our_child_alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z") and os.waitpid(pid, os.WNOHANG) == (0, 0)


def test_child_shares_pages_until_exit(k, mem):
    page = mem.filled(1)
    assert k.page_info(page).exclusive
    child = k.fork()
    assert is_our_child_alive(child.pid)
    assert not k.page_info(page).exclusive

    child.exit()

    assert process_state(child.pid) is None  # killed and reaped: no zombie left
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_child_runs_no_python_and_sleeps(k):
    child = k.fork()
    try:
        assert settles_asleep(child.pid)
        with open(f"/proc/{child.pid}/status") as fh:
            threads = next(line for line in fh if line.startswith("Threads:"))
        assert threads.split()[1] == "1"
        assert len(os.listdir(f"/proc/{child.pid}/fd")) == 1  # only its keep-alive pipe
    finally:
        child.exit()


def test_exit_twice_is_harmless(k):
    child = k.fork()
    child.exit()
    child.exit()
    assert process_state(child.pid) is None


def test_dropped_child_is_reaped_by_garbage_collection(k):
    pid = k.fork().pid
    gc.collect()
    assert process_state(pid) is None


def test_closing_the_kernel_reaps_its_children(linux_kernel):
    child = linux_kernel.fork()
    linux_kernel.close()
    assert process_state(child.pid) is None


SCRIPT = textwrap.dedent("""
    import sys, time
    from uffd_backend import LinuxKernel
    k = LinuxKernel()
    child = k.fork()
    print(child.pid, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
""")


@pytest.mark.timeout(60)
def test_children_are_reaped_at_interpreter_exit(linux_kernel):
    out = subprocess.run([sys.executable, "-c", SCRIPT, "exit"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert process_state(pid) is None


@pytest.mark.timeout(60)
def test_child_exits_by_itself_when_its_parent_is_killed(linux_kernel):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "hang"], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert settles_asleep(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until_gone(pid) in (None, "Z")  # Z: dead, waiting for init to reap it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
