"""Fixtures for the simulator's own tests (the differential suite compares it with Linux)."""

from __future__ import annotations

import pytest

from heap.kernel import MADV_HUGEPAGE, UffdError
from sim_backend import SimKernel

PS = 4096
HP = 2 << 20


def outcome(call) -> tuple[int, int]:
    """(0, what it returned) of a uffd ioctl that succeeds, (errno, bytes moved) of one that fails."""
    try:
        return 0, call()
    except UffdError as exc:
        return exc.errno, exc.moved


def errno_of(call) -> int:
    """The errno ``call`` raises, 0 if it returns."""
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def k(request) -> SimKernel:
    """A SimKernel with its compiled per-word loops (when built), and one with the numpy paths."""
    return SimKernel(seed=0, compiled=request.param)


@pytest.fixture
def uffd(k):
    u = k.userfaultfd()
    yield u
    u.close()


class Pair:
    """A src mapping and a dst mapping registered MISSING with ``uffd``."""

    def __init__(self, k: SimKernel, uffd, pages: int = 64, *, huge: bool = False):
        size = pages * PS
        self.k, self.uffd, self.size = k, uffd, size
        # 2 MiB-aligned: src and dst never share a PMD (a PTE table in one is not one in the other)
        self.src = k.mmap(size, align=HP)
        self.dst = k.mmap(size, align=HP)
        if huge:
            k.madvise(self.src, size, MADV_HUGEPAGE)
        uffd.register(self.dst, size)

    def fill(self, *pages: int, base: int | None = None) -> list[int]:
        """Write a distinct byte into each src page; returns their frames."""
        base = self.src if base is None else base
        for p in pages:
            self.k.store(base + p * PS, bytes([0x40 + p % 64]) * 8)
        return [self.k.page_info(base + p * PS).frame for p in pages]


@pytest.fixture
def pair(k, uffd) -> Pair:
    return Pair(k, uffd)


@pytest.fixture
def huge_pair(k, uffd) -> Pair:
    return Pair(k, uffd, pages=4 * 512, huge=True)
