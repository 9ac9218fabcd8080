"""Real-kernel fault injection without the simulator: make Linux itself give
the answers the simulator's FaultPlan injects.

* EBUSY: a forked child still maps the source pages (``Kernel.fork``).
* EEXIST, source gone: another thread installed the page first (two installers).
* EEXIST, source present: another thread filled the destination from outside.
* ENOMEM: a memory cgroup limit (cgroup v1 ``memory.limit_in_bytes`` with the
  OOM killer disabled, so a charge the kernel makes inside an ioctl fails
  instead of killing the process). The destination lies in a fresh 2 MiB
  region, so a MOVE needs a page table and its charge is refused.

What Linux cannot be made to give a process that survives it: EINTR (the MOVE
checks for a *fatal* signal) and EAGAIN from mmap_changing (only a
non-cooperative event feature, which remapgc never requests).
"""

from __future__ import annotations

import os
from pathlib import Path

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
            return d if (d / "memory.limit_in_bytes").exists() else None
    return None


class LimitedCgroup:
    """A memory cgroup nested in ours with ``limit`` bytes and no OOM killer;
    removed on exit (its tasks must have left)."""

    def __init__(self, limit: int):
        parent = own_memory_cgroup()
        if parent is None:
            raise OSError("no cgroup-v1 memory controller for this process")
        self.parent = parent
        self.path = parent / f"remapgc-test-{os.getpid()}"
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

    def join(self, pid: int | None = None) -> None:
        (self.path / "cgroup.procs").write_text(str(pid or os.getpid()))

    def leave(self, pid: int | None = None) -> None:
        (self.parent / "cgroup.procs").write_text(str(pid or os.getpid()))

    def __exit__(self, *exc) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                self.leave(int(pid))
            except OSError:
                pass
        self.path.rmdir()
