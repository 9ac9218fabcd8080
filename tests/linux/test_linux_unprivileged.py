"""userfaultfd without privileges: the /dev/userfaultfd fallback and KernelUnsupported's reasons.

Each case runs a small script in a subprocess that drops every capability
(setpriv), and in a private mount namespace where /dev/userfaultfd is masked
when the case needs both ways refused. The machine itself is left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    from heap.kernel import KernelUnsupported, probe_move
    from uffd_backend import LinuxKernel, open_userfaultfd

    out = {}
    for user_mode_only in (True, False):
        try:
            u = open_userfaultfd(user_mode_only=user_mode_only)
            out[str(user_mode_only)] = u.via
            u.close()
        except KernelUnsupported as exc:
            out[str(user_mode_only)] = "unsupported: " + str(exc)
    k = LinuxKernel()
    a = k.mmap(4096)
    k.store(a, b"x")
    out["frame"] = k.page_info(a).frame
    z = k.mmap(4096)
    k.load(z, 1)
    out["zero_state"] = k.page_info(z).state
    h = k.mmap(2 << 20, align=2 << 20)
    k.madvise(h, 2 << 20, 14)  # MADV_HUGEPAGE
    k.store(h, b"x")
    info = k.page_info(h)
    out["thp"] = [info.state, info.huge]
    try:
        probe_move(k)
        out["probe"] = "ok"
    except KernelUnsupported as exc:
        out["probe"] = str(exc)
    print(json.dumps(out))
""")

NEEDS = pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("unshare")),
                           reason="needs root with setpriv and unshare to drop privileges")
DROP_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]


def run(argv: list[str]) -> dict:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@NEEDS
@pytest.mark.timeout(90)
def test_without_cap_sys_ptrace_all_fault_contexts_fall_back_to_dev_userfaultfd(linux_kernel):
    if open("/proc/sys/vm/unprivileged_userfaultfd").read().strip() != "0":
        pytest.fail("this case assumes vm.unprivileged_userfaultfd=0, as on this machine")
    res = run(DROP_CAPS + [sys.executable, "-c", SCRIPT])
    assert res["True"] == "syscall"  # user-mode-only contexts need no privilege
    assert res["False"] == "/dev/userfaultfd"  # the syscall is refused, the device is not
    assert res["frame"] is None  # without CAP_SYS_ADMIN pagemap hides frame numbers
    assert res["zero_state"] == "zero"  # ...but PAGEMAP_SCAN still tells the zero page
    assert res["thp"] == ["thp", True]  # ...and a PMD-mapped THP
    assert res["probe"] == "ok"


@NEEDS
@pytest.mark.timeout(90)
def test_with_both_ways_refused_the_reason_says_how_to_allow_it(linux_kernel):
    masked = ("mount --bind /dev/null /dev/userfaultfd && exec " + " ".join(DROP_CAPS)
              + f" {sys.executable} -c \"$0\"")
    res = run(["unshare", "--mount", "sh", "-c", masked, SCRIPT])
    assert res["True"] == "syscall"
    reason = res["False"]
    assert reason.startswith("unsupported: userfaultfd is refused")
    assert "EPERM" in reason and "vm.unprivileged_userfaultfd" in reason
    assert "user_mode_only=True" in reason
    assert res["probe"] == "ok"  # remapgc's own contexts are user-mode-only, so MOVE still works


@NEEDS
@pytest.mark.timeout(120)
def test_doctor_without_privileges_reports_user_mode_only(linux_kernel):
    masked = ("mount --bind /dev/null /dev/userfaultfd && exec " + " ".join(DROP_CAPS)
              + f" {sys.executable} -m heap.doctor --json")
    out = subprocess.run(["unshare", "--mount", "sh", "-c", masked], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["userfaultfd_user_mode_only_required"] is True
    assert rep["userfaultfd_syscall"] is True
    assert rep["move_works"] is True and rep["auto_backend"] == "linux"
    assert rep["pagemap_frames_visible"] is False
