"""The backend-swap matrix: fixtures that run a test on each Kernel backend.

``kernel`` is parametrised over ("sim", "linux"); see tests/backends.py for
when the Linux side skips and how skips are recorded for CI.

Tests that drive the Kernel protocol directly use ``k`` (a kernel of each
backend, closed at teardown), ``mem`` (mappings through ``k``, unmapped at
teardown) and ``uffd`` (a userfaultfd of ``k``). A folder whose tests hold
for one backend only overrides ``k`` in its conftest (tests/linux: the real
kernel), and ``mem`` and ``uffd`` follow it; tests/kernel widens
``kernel_name`` to the simulator's numpy paths too (tests.backends.KERNEL_MATRIX).
"""

from __future__ import annotations

import pytest

from tests.backends import BACKENDS, make_kernel, skip_linux_if_unavailable
from tests.kernel.kernel_helpers import Mappings


@pytest.fixture(params=BACKENDS)
def kernel_name(request) -> str:
    if request.param == "linux":
        skip_linux_if_unavailable()
    return request.param


@pytest.fixture
def kernel(kernel_name):
    """A fresh Kernel of each backend."""
    return make_kernel(kernel_name)


@pytest.fixture
def linux_kernel():
    return make_kernel("linux")


@pytest.fixture
def sim_kernel():
    return make_kernel("sim")


@pytest.fixture
def k(kernel):
    """The kernel under test (each backend), closed at teardown: its children reaped, its uffds closed."""
    yield kernel
    kernel.close()


@pytest.fixture
def mem(k):
    m = Mappings(k)
    yield m
    m.close()


@pytest.fixture
def uffd(k):
    u = k.userfaultfd()
    yield u
    u.close()
