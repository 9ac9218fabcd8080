"""Facts of the real kernel only: here ``k`` (and so ``mem`` and ``uffd``) is the Linux backend."""

from __future__ import annotations

import pytest


@pytest.fixture
def k(linux_kernel):
    yield linux_kernel
    linux_kernel.close()
