"""remapgc as an unprivileged user (nobody, no capabilities) with vm.unprivileged_userfaultfd=0.

The sysctl is set to 0 for these tests and restored in a finally. The child
runs in a private mount namespace where the interpreter, its virtual
environment if any, and the project (under /root, which nobody cannot enter,
for all we know) are bind-mounted somewhere it can, then drops to nobody with
setpriv.

What the kernel says (and these tests hold it to): a user-mode-only
userfaultfd needs no privilege, so nobody still gets the Linux backend and the
zero-copy compactor. With the syscall also forbidden by a seccomp filter (as
container profiles do) and /dev/userfaultfd root-only, open_kernel("auto")
still picks real memory (the Linux backend) saying why, the doctor says what
to change, and the heap on it compacts with the copying compactor.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"
PROJECT = Path(__file__).resolve().parents[2]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("unshare")),
                                reason="needs root with setpriv and unshare to drop privileges")
# Linux-section tests that need what only CAP_SYS_ADMIN shows: PFNs in
# /proc/self/pagemap (zero-copy proofs compare frames) and /proc/kpageflags
# (THP and huge-zero-page detection). Unprivileged they fail by design.
NEEDS_PFNS = {
    "tests/linux/test_linux_doctor.py::test_doctor_finds_move_working_and_auto_picks_linux",
    "tests/kernel/test_kernel_faults.py::test_zeropage_and_copy_resolve_faults_too[linux]",
    "tests/kernel/test_kernel_memory.py::test_page_info_follows_first_touch[linux]",
    "tests/kernel/test_kernel_move.py::test_move_of_1024_pages_is_zero_copy[linux]",
    "tests/kernel/test_kernel_move.py::test_thp_split_by_a_move_maps_its_zero_filled_pages_to_the_zero_page[linux]",
    "tests/kernel/test_kernel_move.py::test_huge_zero_page_is_reported_zero_and_huge[linux]",
    "tests/kernel/test_kernel_move.py::test_pte_mapped_large_folio_is_thp_but_not_huge[linux]",
}

# the tests that drive the Linux backend directly (tests/linux: Linux-only facts)
LINUX_SECTION = ["tests/linux", "tests/kernel", "tests/bad_input/test_bad_kernel_calls.py",
                 "tests/bad_input/test_bad_foreign_memory_linux.py", "tests/fork/test_fork_kernel_child.py"]


@pytest.fixture
def sysctl_zero():
    with open(SYSCTL) as fh:
        before = fh.read().strip()
    try:
        with open(SYSCTL, "w") as fh:
            fh.write("0")
        yield
    finally:
        with open(SYSCTL, "w") as fh:
            fh.write(before)


MOUNTS = "/mnt"  # a tmpfs in the child's private mount namespace: what nobody may enter


def python_as_nobody() -> tuple[list[str], str]:
    """Shell steps that make this interpreter, its environment and the project visible to nobody under
    /mnt (root's home, where they may live, is closed to it), and the interpreter to run there.

    The base installation is bind-mounted at /mnt/py. From a virtual environment the child runs as one
    too: /mnt/venv gets a pyvenv.cfg whose home is /mnt/py/bin and the environment's own site-packages
    (bind-mounted), so it sees the packages this interpreter sees, .pth files included, and no others.
    The project is bind-mounted at /mnt/src, the child's working directory and first on its path.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    steps = [f"mount -t tmpfs none {MOUNTS}",
             f"mkdir {MOUNTS}/py {MOUNTS}/src",
             f"mount --bind {shlex.quote(sys.base_prefix)} {MOUNTS}/py",
             f"mount --bind {shlex.quote(str(PROJECT))} {MOUNTS}/src"]
    if sys.prefix == sys.base_prefix:
        return steps, f"env PYTHONHOME={MOUNTS}/py {MOUNTS}/py/bin/{version}"
    venv, site_packages = f"{MOUNTS}/venv", f"{MOUNTS}/venv/lib/{version}/site-packages"
    system_site = "true" if any(p.startswith(sys.base_prefix + os.sep) for p in site.getsitepackages()) else "false"
    steps += [f"mkdir -p {venv}/bin {site_packages}",
              f"ln -s {MOUNTS}/py/bin/{version} {venv}/bin/{version}",
              f"printf 'home = {MOUNTS}/py/bin\\ninclude-system-site-packages = {system_site}\\n' > {venv}/pyvenv.cfg",
              f"mount --bind {shlex.quote(sysconfig.get_paths()['purelib'])} {site_packages}"]
    return steps, f"{venv}/bin/{version}"


def as_nobody(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python <args>`` as nobody without capabilities, from the repository root, seeing the packages
    this interpreter sees (a virtual environment's included)."""
    steps, python = python_as_nobody()
    inner = " && ".join(steps + [
        f"cd {MOUNTS}/src",
        # LD_LIBRARY_PATH: the interpreter's own libpython, which its rpath (under /root) cannot reach as
        # nobody; without it the loader takes the system's, another Python with another site module.
        f"exec env PYTHONPATH={MOUNTS}/src LD_LIBRARY_PATH={MOUNTS}/py/lib HOME=/tmp PYTHONDONTWRITEBYTECODE=1 "
        "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all "
        f"{python} \"$@\""])
    return subprocess.run(["unshare", "--mount", "sh", "-c", inner, "sh", *args], capture_output=True, text=True,
                          timeout=timeout)


def script(mode: str) -> dict:
    out = as_nobody(["-m", "tests.reliability.privileges_script", mode], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@NEEDS_ROOT
@pytest.mark.timeout(150)
def test_nobody_keeps_the_zero_copy_compactor_because_faults_are_user_mode_only(sysctl_zero, linux_kernel):
    res = script("plain")
    assert res["uid"] == 65534 and res["sysctl"] == "0"
    assert res["auto"] == "linux"
    doc = res["doctor"]
    assert doc["userfaultfd_user_mode_only_required"] is True  # all-faults contexts are refused ...
    assert doc["paths"]["syscall (user-mode faults only)"][0] is True  # ... the one remapgc asks for is not
    assert res["linux_compactor"] == "remap"
    assert res["linux_whole"] and res["linux_collect"]["live"] == 300
    assert res["auto_heap"] == ["linux", "remap"] and res["auto_whole"]


@NEEDS_ROOT
@pytest.mark.timeout(150)
def test_with_userfaultfd_filtered_auto_falls_back_and_the_heap_copies(sysctl_zero, linux_kernel):
    res = script("seccomp")
    assert res["uid"] == 65534
    assert res["auto"] == "linux"  # real memory, compacted by copying (issue 14 point 7), never the simulator
    reason = res["auto_reason"]
    assert reason.startswith("real memory with the copying compactor because userfaultfd is refused")
    assert "EPERM" in reason and "EACCES" in reason and "remapgc doctor" in reason
    assert "seccomp" in reason  # EPERM for a user-mode-only context: not the sysctl, a filter
    doc = res["doctor"]
    assert doc["move_works"] is False and doc["auto_backend"] == "linux"
    assert "read/write access to /dev/userfaultfd" in doc["move_detail"]  # what to change
    assert res["linux_compactor"] == "copy"
    assert res["linux_whole"] and res["linux_collect"]["live"] == 300 and res["linux_collect"]["copied"] > 0
    assert res["linux_collect"]["moved"] == 0
    assert res["auto_heap"] == ["linux", "copy"] and res["auto_whole"]


@NEEDS_ROOT
@pytest.mark.timeout(240)
def test_the_linux_section_runs_as_nobody(sysctl_zero, linux_kernel):
    """tests/linux and the Kernel protocol tests (tests/kernel, the kernel-level
    bad-input and fork tests; both backends) as nobody: everything passes except
    the tests that need PFNs or page flags, which only CAP_SYS_ADMIN can see."""
    out = as_nobody(["-m", "pytest", *LINUX_SECTION, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                     "--timeout", "120", "-rfE"], timeout=220)
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+?)(?: - .*)?$", out.stdout, re.M))
    summary = out.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert failed <= NEEDS_PFNS, f"unprivileged failures beyond the PFN-dependent ones: {failed - NEEDS_PFNS}"
    assert passed >= 100, summary
