"""The backend-swap matrix: fixtures that run a test on each Kernel backend.

``kernel`` is parametrised over ("sim", "linux"); see tests/backends.py for
when the Linux side skips and how skips are recorded for CI.
"""

from __future__ import annotations

import pytest

from tests.backends import BACKENDS, make_kernel, skip_linux_if_unavailable


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
