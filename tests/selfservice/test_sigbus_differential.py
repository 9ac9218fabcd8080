"""UFFD_FEATURE_SIGBUS on the simulator against the real kernel: UFFDIO_API
reports the feature, a missing fault in a registered range is never queued,
and the access fails in the faulting thread (SIGBUS: through a guarded
accessor EFAULT, a raw touch on Linux kills the process with SIGBUS, the
simulator's default action is that EFAULT); with a handler (the simulator's
sigaction_sigbus) the faulting thread resolves it and the access completes."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap

import pytest

from heap.kernel import UFFD_FEATURE_MOVE, UFFD_FEATURE_SIGBUS, UFFDIO_REGISTER_MODE_MISSING
from tests.backends import make_kernel, skip_linux_if_unavailable

PS = 4096


def registered(kernel, npages: int = 4):
    """A SIGBUS userfaultfd and an anonymous range registered with it, page 1 populated."""
    uffd = kernel.userfaultfd(UFFD_FEATURE_MOVE | UFFD_FEATURE_SIGBUS)
    addr = kernel.mmap(npages * PS)
    kernel.store(addr + PS, b"here")
    uffd.register(addr, npages * PS, UFFDIO_REGISTER_MODE_MISSING)
    return uffd, addr


def outcome(kernel) -> dict:
    uffd, addr = registered(kernel)
    try:
        present = kernel.load(addr + PS, 4)
        try:
            kernel.load(addr + 2 * PS, 8)
            missing = "read"
        except OSError as exc:
            missing = errno.errorcode[exc.errno]
        return {"feature_reported": bool(uffd.features & UFFD_FEATURE_SIGBUS), "present": present,
                "missing": missing, "queued": uffd.read_events(timeout=0),
                "still_missing": kernel.page_info(addr + 2 * PS).state}
    finally:
        uffd.close()
        kernel.munmap(addr, 4 * PS)


@pytest.mark.timeout(60)
def test_a_missing_fault_is_never_queued_and_fails_in_the_faulting_thread_on_both():
    skip_linux_if_unavailable()
    sim, linux = outcome(make_kernel("sim")), outcome(make_kernel("linux"))
    assert sim == linux
    assert linux == {"feature_reported": True, "present": b"here", "missing": "EFAULT", "queued": [],
                     "still_missing": "none"}


RAW_TOUCH = textwrap.dedent("""
    import faulthandler, sys
    faulthandler.disable()
    from heap.kernel import open_kernel, UFFD_FEATURE_MOVE, UFFD_FEATURE_SIGBUS
    from uffd_backend._native import ffi
    k = open_kernel("linux")
    uffd = k.userfaultfd(UFFD_FEATURE_MOVE | UFFD_FEATURE_SIGBUS)
    addr = k.mmap(4096)
    uffd.register(addr, 4096)
    print("touching", flush=True)
    ffi.cast("volatile char *", addr)[0]
    print("survived", flush=True)
""")


@pytest.mark.timeout(60)
def test_a_raw_touch_on_linux_is_killed_by_sigbus_and_the_simulators_default_action_fails_the_access():
    skip_linux_if_unavailable()
    child = subprocess.run([sys.executable, "-c", RAW_TOUCH], capture_output=True, text=True, timeout=30,
                           cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert "touching" in child.stdout and "survived" not in child.stdout
    assert child.returncode == -signal.SIGBUS, child.stderr[-2000:]
    sim = make_kernel("sim")
    uffd, addr = registered(sim)
    assert sim.sigbus_handler is None  # the default action
    with pytest.raises(OSError) as info:
        sim.load(addr, 1)
    assert info.value.errno == errno.EFAULT and "SIGBUS" in str(info.value)
    assert sim.counters.sigbus_raised == 1 and sim.counters.faults_raised == 0


@pytest.mark.timeout(60)
def test_the_simulators_sigbus_handler_runs_in_the_faulting_thread_and_the_access_completes():
    import threading

    sim = make_kernel("sim")
    uffd, addr = registered(sim)
    seen = []

    def handler(fault_addr: int) -> None:
        seen.append((fault_addr, threading.current_thread().name))
        uffd.zeropage(fault_addr & ~(PS - 1), PS)  # the faulting thread resolves its own fault

    assert sim.sigaction_sigbus(handler) is None
    assert sim.load(addr + 2 * PS, 8) == bytes(8)
    assert seen == [(addr + 2 * PS, threading.current_thread().name)]
    assert sim.sigaction_sigbus(None) is handler
    assert uffd.read_events(timeout=0) == []
