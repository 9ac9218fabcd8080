"""Helpers for tests that drive a Kernel directly (any backend).

``Mappings`` maps through the kernel under test and unmaps at teardown (the
``mem`` fixture of tests/conftest.py); ``Faulter`` runs an access that may
block in a userfault in its own thread.
"""

from __future__ import annotations

import threading

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


def layout_pages(k, a, n, layout):
    """Touch page i of [a, a + n pages) per layout[i % len(layout)]: w write, r read (zero page), . nothing."""
    for i in range(n):
        c = layout[i % len(layout)]
        if c == "w":
            k.store(a + i * PS, b"\x01")
        elif c == "r":
            k.load(a + i * PS, 1)


RESIDENT_LAYOUTS = [("untouched", "."), ("all-written", "w"), ("zero-page-reads", "r"),
                    ("every-other-written", "w."), ("mixed", "wwr.w..r"),
                    ("more-regions-than-one-scan-vector", "w.r")]
