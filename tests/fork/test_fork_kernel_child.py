"""Kernel.fork(): a child that holds our pages copy-on-write, and is always reaped.

What the protocol promises (pages shared until the child exits, exit twice
harmless) runs on both backends; the process facts (a real child that runs no
Python, is reaped, and dies with its parent) are the Linux backend's
(``test_linux_*``, on ``linux_kernel``).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest


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


def test_child_shares_pages_until_a_write_makes_them_ours(k, mem):
    page = mem.filled(1)
    assert k.page_info(page).exclusive
    child = k.fork()
    assert not k.page_info(page).exclusive
    child.exit()
    k.store(page + 100, b"mine")  # the write fault takes the page back (a copy or reuse)
    assert k.page_info(page).exclusive
    assert k.load(page, 10) == b"page000000"


def test_exit_twice_is_harmless(k, mem):
    page = mem.filled(1)
    child = k.fork()
    child.exit()
    child.exit()
    k.store(page, b"x")
    assert k.page_info(page).exclusive


def test_linux_child_is_a_live_process_until_exit_reaps_it(linux_kernel):
    child = linux_kernel.fork()
    assert is_our_child_alive(child.pid)

    child.exit()

    assert process_state(child.pid) is None  # killed and reaped: no zombie left
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_linux_child_runs_no_python_and_sleeps(linux_kernel):
    child = linux_kernel.fork()
    try:
        assert settles_asleep(child.pid)
        with open(f"/proc/{child.pid}/status") as fh:
            threads = next(line for line in fh if line.startswith("Threads:"))
        assert threads.split()[1] == "1"
        assert len(os.listdir(f"/proc/{child.pid}/fd")) == 1  # only its keep-alive pipe
    finally:
        child.exit()


def test_linux_exit_twice_leaves_no_process(linux_kernel):
    child = linux_kernel.fork()
    child.exit()
    child.exit()
    assert process_state(child.pid) is None


def test_linux_dropped_child_is_reaped_by_garbage_collection(linux_kernel):
    pid = linux_kernel.fork().pid
    gc.collect()
    assert process_state(pid) is None


def test_linux_closing_the_kernel_reaps_its_children(linux_kernel):
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
def test_linux_children_are_reaped_at_interpreter_exit(linux_kernel):
    out = subprocess.run([sys.executable, "-c", SCRIPT, "exit"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert process_state(pid) is None


@pytest.mark.timeout(60)
def test_linux_child_exits_by_itself_when_its_parent_is_killed(linux_kernel):
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
