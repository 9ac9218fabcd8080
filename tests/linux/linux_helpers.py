"""Fixtures and helpers shared by the Linux-backend tests.

Test modules import what they use from here (tests/linux is on sys.path under
pytest's default import mode); there is deliberately no tests/linux/conftest.py,
so that ``import conftest`` elsewhere in the suite stays unambiguous.
"""

from __future__ import annotations

import threading

import pytest

from heap.kernel import PAGE_SIZE

PS = PAGE_SIZE


class Mappings:
    """mmap through the kernel under test; everything is unmapped at teardown."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.regions: list[tuple[int, int]] = []
        self.closers = []

    def on_close(self, fn) -> None:
        self.closers.append(fn)

    def __call__(self, npages: int, **kw) -> int:
        addr = self.kernel.mmap(npages * PS, **kw)
        self.regions.append((addr, npages * PS))
        return addr

    def filled(self, npages: int, **kw) -> int:
        """A mapping whose every page is present and holds its own index."""
        addr = self(npages, **kw)
        for i in range(npages):
            self.kernel.store(addr + i * PS, b"page%06d" % i)
        return addr

    def hole(self) -> int:
        """An unmapped page address (the middle of three, the outer two stay mapped)."""
        addr = self(3)
        self.kernel.munmap(addr + PS, PS)
        return addr + PS

    def close(self) -> None:
        for fn in self.closers:
            fn()
        for addr, length in self.regions:
            try:
                self.kernel.munmap(addr, length)
            except OSError:
                pass


class Faulter:
    """Runs one user-mode access in a thread; it may block in a userfault.

    Closing the uffd wakes it (the kernel retries the fault without
    userfaultfd), so a failed test never leaves the thread stuck.
    """

    def __init__(self, access):
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(access,), daemon=True)
        self.thread.start()

    def _run(self, access):
        try:
            self.result = access()
        except BaseException as exc:  # reported to the test
            self.error = exc

    def blocked(self, wait: float) -> bool:
        self.thread.join(wait)
        return self.thread.is_alive()

    def finish(self, timeout: float = 10.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the faulting thread is still blocked"
        if self.error is not None:
            raise self.error
        return self.result


# --- fixtures -------------------------------------------------------------------
@pytest.fixture
def k(linux_kernel):
    yield linux_kernel
    linux_kernel.close()


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
