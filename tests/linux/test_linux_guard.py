"""The SIGSEGV/SIGBUS guard around user-mode accesses coexists with other handlers.

A fault inside load/store becomes EFAULT; a real crash anywhere else still ends
the process (never a hang, never swallowed), whatever order faulthandler and
LinuxKernel installed their handlers in. Each scenario runs in a subprocess.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest


SCRIPT = textwrap.dedent("""
    import ctypes, faulthandler, sys
    order = sys.argv[1]
    from uffd_backend import LinuxKernel
    if order == "faulthandler_first":
        faulthandler.enable()
    k = LinuxKernel()
    if order in ("faulthandler_after", "faulthandler_between_kernels"):
        faulthandler.enable()
    if order == "faulthandler_between_kernels":
        LinuxKernel()  # re-installs the guard over faulthandler's handler
    for _ in range(2):
        try:
            k.load(8, 8)
        except OSError as exc:
            print("guarded", exc.errno, flush=True)
    ctypes.string_at(8)  # a real crash, outside any guarded call
    print("survived a real segfault", flush=True)
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("order", ["no_faulthandler", "faulthandler_first", "faulthandler_after",
                                   "faulthandler_between_kernels"])
def test_guarded_faults_are_efault_and_real_crashes_still_crash(linux_kernel, order):
    out = subprocess.run([sys.executable, "-c", SCRIPT, order], capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["guarded 14", "guarded 14"], out.stderr
    assert out.returncode == -signal.SIGSEGV


@pytest.mark.timeout(30)
def test_a_guarded_fault_in_one_thread_does_not_disturb_another(k, mem):
    import threading

    page = mem.filled(1)
    errors = []

    def hammer():
        for _ in range(2000):
            try:
                k.load(8, 8)
            except OSError as exc:
                errors.append(exc.errno)

    t = threading.Thread(target=hammer)
    t.start()
    reads = [k.load(page, 10) for _ in range(2000)]
    t.join(20)
    assert not t.is_alive()
    assert errors == [14] * 2000
    assert set(reads) == {b"page000000"}
