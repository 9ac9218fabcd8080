"""Fault injection on the real kernel, no simulator: make Linux itself refuse
the MOVEs the heap asks for, the way the simulator's FaultPlan does.

What Linux 6.18 can be made to answer here, and how:

* ``fork`` -> EBUSY: a forked child (``Kernel.fork``) maps the source pages
  while the MOVE runs; it exits right after. The heap copies those pages.
* ``race`` -> EEXIST with the source gone: another thread moves the first
  page of the batch first, as a second installer would. The heap counts a
  race and goes on.
* ENOMEM: a thread in a memory cgroup with no room and the OOM killer
  disabled (``LimitedCgroup``; cgroup v1 places single threads) has the page
  tables a MOVE needs refused. The heap's install stops and installs the rest
  later (tests/regressions/test_real_kernel_faults.py, in a child process).
  Not in the soak: any page fault of that thread that needs a page table
  while it is in the cgroup waits for memory for good (measured: the
  interpreter's own faults did, within a few cycles).

``RealFaults`` arms ``fork`` and ``race`` per cycle, just before a MOVE of
the heap's (``python -m bench.soak --kernel linux``).

What Linux cannot be made to give a process that survives it: EINTR (a MOVE
checks only for a *fatal* signal) and EAGAIN from mmap_changing (only a
non-cooperative event feature, which remapgc never requests). A page filled
from outside (EEXIST with the source still there) is the heap refusing to go
on (HeapCorrupted), tested apart: the soak leaves it out, as on the simulator.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from heap.kernel import UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UffdError

REAL_MENU = ("fork", "race")
MEMCG_V1 = Path("/sys/fs/cgroup/memory")


def own_memory_cgroup() -> Path | None:
    """This process's cgroup-v1 memory cgroup directory, or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = MEMCG_V1 / path.lstrip("/")
            return d if (d / "memory.limit_in_bytes").exists() and os.access(d, os.W_OK) else None
    return None


class LimitedCgroup:
    """A memory cgroup nested in ours with ``limit`` bytes and no OOM killer
    (a charge refused inside an ioctl fails with ENOMEM instead of killing);
    removed on exit, its tasks sent back first."""

    def __init__(self, limit: int = 0):
        parent = own_memory_cgroup()
        if parent is None:
            raise OSError("no writable cgroup-v1 memory controller for this process")
        self.parent = parent
        self.path = parent / f"remapgc-faults-{os.getpid()}"
        self.limit = limit

    def __enter__(self) -> "LimitedCgroup":
        self.path.mkdir()
        try:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            (self.path / "memory.oom_control").write_text("1")
        except BaseException:
            self.path.rmdir()
            raise
        return self

    def join_thread(self, tid: int | None = None) -> None:
        (self.path / "tasks").write_text(str(tid or threading.get_native_id()))

    def leave_thread(self, tid: int | None = None) -> None:
        (self.parent / "tasks").write_text(str(tid or threading.get_native_id()))

    def __exit__(self, *exc) -> None:
        for tid in (self.path / "tasks").read_text().split():
            try:
                self.leave_thread(int(tid))
            except OSError:
                pass
        self.path.rmdir()


class RealFaults:
    """Per cycle, which real refusals a MOVE of the heap's may meet."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.lock = threading.Lock()
        self.rng = random.Random(0)
        self.rules: list[tuple[str, float, int]] = []  # (outcome, probability, times left)
        self.fired: Counter = Counter()

    def arm(self, rng: random.Random) -> None:
        self.rng = random.Random(rng.randrange(1 << 30))
        self.rules = [(rng.choice(REAL_MENU), rng.choice((0.2, 0.5, 1.0)), rng.randrange(1, 4))
                      for _ in range(rng.choice((0, 1, 1, 2, 3)))]

    def disarm(self) -> Counter:
        fired, self.fired, self.rules = self.fired, Counter(), []
        return fired

    def _draw(self) -> str | None:
        with self.lock:
            for i, (outcome, p, left) in enumerate(self.rules):
                if left and self.rng.random() < p:
                    self.rules[i] = (outcome, p, left - 1)
                    self.fired[outcome] += 1
                    return outcome
        return None

    def move(self, inner, call, dsts, srcs, lengths, mode):
        """``call()`` (the heap's MOVE through ``inner``), with a real refusal arranged first, maybe."""
        outcome = self._draw() if self.rules else None
        if outcome == "fork":
            child = self.kernel.fork()  # maps every page we have: MOVE refuses them (EBUSY)
            try:
                return call()
            finally:
                child.exit()
        if outcome == "race":
            self._install_first_page(inner, dsts, srcs, mode)
            return call()
        return call()

    def _install_first_page(self, inner, dsts, srcs, mode) -> None:
        """The other installer: moves the batch's first page from another thread, before the heap does."""
        dst, src = int(np.atleast_1d(dsts)[0]), int(np.atleast_1d(srcs)[0])
        ps = self.kernel.page_size

        def other():
            try:
                inner.move(dst, src, ps, mode | UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)
            except UffdError:
                pass  # already there, or refused: the heap meets whatever is

        t = threading.Thread(target=other, name="soak-other-installer")
        t.start()
        t.join()
