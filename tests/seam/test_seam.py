"""The seam (heap/kernel.py) is a leaf that declares everything a backend is:
importing a backend loads no collector, both backends subclass the bases
that hold the optional capabilities' defaults, and the accelerator is a
declared attribute, None unless a backend offers one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from heap.kernel import Accelerator, FaultServer, Kernel, KernelBase, Uffd, UffdBase

ROOT = Path(__file__).resolve().parents[2]


def test_the_seam_imports_nothing_from_the_package_or_a_backend_at_module_level():
    tree = ast.parse((ROOT / "heap" / "kernel.py").read_text())
    imported = [node.module or "." for node in tree.body if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in imported if m.startswith((".", "heap", "uffd_backend", "sim_backend"))], imported


@pytest.mark.parametrize("backend", ["sim_backend", "uffd_backend"])
def test_importing_a_backend_loads_no_collector(backend):
    child = subprocess.run([sys.executable, "-c", f"import sys, {backend}; "
                            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'heap')))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr[-2000:]
    assert set(child.stdout.split()) <= {"heap", "heap.kernel"}, child.stdout


@pytest.mark.parametrize("name", ["sim", "linux"])
def test_both_backends_subclass_the_bases_and_satisfy_the_protocols(name, request):
    kernel = request.getfixturevalue(f"{name}_kernel")
    uffd = kernel.userfaultfd()
    try:
        assert isinstance(kernel, KernelBase) and isinstance(kernel, Kernel)
        assert isinstance(uffd, UffdBase) and isinstance(uffd, Uffd)
        assert kernel.reopen_uffd_after_fork is (name == "linux")  # a Linux uffd follows its mm, not the process
        assert kernel.memory_in_place
        accel = uffd.accelerator
        assert (accel is None) if name == "sim" else isinstance(accel, Accelerator)
    finally:
        uffd.close()


def test_the_linux_accelerator_gives_a_fault_server_of_the_declared_protocol(linux_kernel):
    import numpy as np

    from heap.kernel import PROGRAM_ARRAYS

    class Empty:  # a program with no page: what load_program reads, by the declared names
        npages = 0

    for group in PROGRAM_ARRAYS.values():
        for field, dtype in group:
            setattr(Empty, field, np.zeros(0, dtype=dtype))
    uffd = linux_kernel.userfaultfd()
    try:
        program = uffd.accelerator.load_program(Empty(), arena=0, from_space=0)
        server = uffd.accelerator.fault_server(program, state=np.zeros(0, dtype=np.int8),
                                               installed=np.zeros(1, dtype=np.int64))
        assert isinstance(server, FaultServer)
        server.close()
    finally:
        uffd.close()


def test_a_wrapper_built_on_the_base_offers_no_accelerator_it_does_not_declare(linux_kernel):
    """A wrapper (e.g. one that injects MOVE failures) cannot be bypassed by a
    native walk of the uffd it wraps: the base says None until it says otherwise."""
    inner = linux_kernel.userfaultfd()

    class Wrapper(UffdBase):
        def __init__(self, inner):
            self.inner = inner

        def move(self, dst, src, length, mode=0):
            return self.inner.move(dst, src, length, mode)

    try:
        assert inner.accelerator is not None and Wrapper(inner).accelerator is None
    finally:
        inner.close()


def test_the_base_capabilities_have_their_documented_defaults():
    base = KernelBase()
    assert base.diagnostics() == {} and base.reopen_uffd_after_fork is False and base.memory_in_place is False
    base.after_fork_in_child()
    base.close()
    assert UffdBase.accelerator is None
