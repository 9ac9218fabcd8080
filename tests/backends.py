"""Which Kernel backends a test can run on, and the recorded Linux skips.

The Linux side is skipped only where it cannot run (not Linux, userfaultfd
refused, no UFFDIO_MOVE, or REMAPGC_DISABLE_LINUX=1), and the skip says why.
Every Linux skip is also appended to the file named by REMAPGC_SKIP_REPORT,
so that .ci/run can fail when Linux tests were skipped on a machine where
`remapgc doctor` says MOVE works.

Import it as ``from tests.backends import make_kernel`` (a plain module, so
no test file has to import a conftest).
"""

from __future__ import annotations

import functools
import os

import pytest

from heap.backends import open_kernel, probe_move
from heap.kernel import KernelUnsupported

BACKENDS = ("sim", "linux")


@functools.lru_cache(maxsize=None)
def linux_unavailable_reason() -> str | None:
    try:
        kernel = open_kernel("linux")
        probe_move(kernel)
    except KernelUnsupported as exc:
        return str(exc)
    return None


def skip_linux_if_unavailable() -> None:
    reason = linux_unavailable_reason()
    if reason is None:
        return
    report = os.environ.get("REMAPGC_SKIP_REPORT")
    if report:
        with open(report, "a") as fh:
            fh.write(reason + "\n")
    pytest.skip(f"Linux backend unavailable: {reason}")


# the simulator's numpy paths (its compiled per-word loops off): a second
# implementation of the same behaviour, run by the Kernel protocol tests too
SIM_VARIANTS = {"sim-numpy": {"compiled": False}}
KERNEL_MATRIX = ("sim", "sim-numpy", "linux")  # what tests of the Kernel protocol itself run on


def make_kernel(name: str, **options):
    if name == "linux":
        skip_linux_if_unavailable()
    if name in SIM_VARIANTS:
        return open_kernel("sim", **SIM_VARIANTS[name], **options)
    return open_kernel(name, **options)
