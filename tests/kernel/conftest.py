"""The Kernel protocol tests run on the real kernel and on the simulator, the
simulator both with its compiled per-word loops ("sim") and with its numpy
paths ("sim-numpy"): one behaviour, three implementations held to it."""

from __future__ import annotations

import pytest

from tests.backends import KERNEL_MATRIX, skip_linux_if_unavailable


@pytest.fixture(params=KERNEL_MATRIX)
def kernel_name(request) -> str:
    if request.param == "linux":
        skip_linux_if_unavailable()
    return request.param
