"""Virtual memory areas of the simulated address space, split and merged like Linux."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
TASK_SIZE = (1 << 47) - PAGE_SIZE  # x86-64, 4-level paging
MMAP_BASE = 0x7F0000000000  # top of the mmap area; mappings grow down from here
MMAP_MIN_ADDR = 0x10000


@dataclass(eq=False)
class Vma:
    start: int
    end: int
    prot: int
    shared: bool = False  # MAP_SHARED|MAP_ANONYMOUS (shmem)
    noreserve: bool = False  # VM_NORESERVE (MAP_NORESERVE): no commit charge, part of vm_flags
    locked: bool = False  # VM_LOCKED
    lockonfault: bool = False  # VM_LOCKONFAULT
    hugepage: int = 0  # 0, or the last of MADV_HUGEPAGE / MADV_NOHUGEPAGE applied
    dontfork: bool = False
    uffd: Any = None  # the SimUffd this VMA is registered with
    uffd_mode: int = 0  # UFFDIO_REGISTER_MODE_* bits
    anon_vma: int | None = None  # assigned on first fault (anon_vma_prepare)
    pgoff: int = 0  # page offset: start >> PAGE_SHIFT when created, kept by mremap

    def flags_key(self) -> tuple:
        """Everything two neighbours must share to merge (vm_flags, uffd ctx)."""
        return (self.prot, self.shared, self.noreserve, self.locked, self.lockonfault, self.hugepage,
                self.dontfork, id(self.uffd) if self.uffd is not None else 0, self.uffd_mode)

    def can_merge_with_next(self, nxt: "Vma") -> bool:
        if self.end != nxt.start or self.flags_key() != nxt.flags_key():
            return False
        if self.shared:
            return False  # each shmem mapping is its own file
        if self.anon_vma is not None and nxt.anon_vma is not None and self.anon_vma != nxt.anon_vma:
            return False
        return self.pgoff + ((self.end - self.start) >> PAGE_SHIFT) == nxt.pgoff

    def copy(self, **changes) -> "Vma":
        return dataclasses.replace(self, **changes)


class AddressSpace:
    """The sorted, non-overlapping VMAs of one simulated process."""

    def __init__(self) -> None:
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.version = 0
        self._arrays_version = -1
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _changed(self) -> None:
        self._starts = [v.start for v in self.vmas]
        self.version += 1

    # -- lookups -----------------------------------------------------------------
    def find(self, addr: int) -> Vma | None:
        """The VMA containing ``addr``."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def overlapping(self, start: int, end: int) -> list[Vma]:
        """VMAs that intersect ``[start, end)``, in address order."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for vma in self.vmas[i:]:
            if vma.start >= end:
                break
            if vma.end > start:
                out.append(vma)
        return out

    def any_in(self, start: int, end: int) -> bool:
        return bool(self.overlapping(start, end))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ends, prot) as numpy arrays, for vectorised access checks."""
        if self._arrays_version != self.version:
            self._arrays = (np.array([v.start for v in self.vmas], dtype=np.int64),
                            np.array([v.end for v in self.vmas], dtype=np.int64),
                            np.array([v.prot for v in self.vmas], dtype=np.int64))
            self._arrays_version = self.version
        return self._arrays

    # -- changes ---------------------------------------------------------------
    def insert(self, vma: Vma) -> None:
        i = bisect.bisect_left(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._changed()

    def remove(self, vma: Vma) -> None:
        self.vmas.remove(vma)
        self._changed()

    def split_at(self, addr: int) -> None:
        """Make ``addr`` a VMA boundary if a VMA straddles it."""
        vma = self.find(addr)
        if vma is None or vma.start == addr:
            return
        tail = vma.copy(start=addr, pgoff=vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT))
        vma.end = addr
        self.insert(tail)

    def isolate(self, start: int, end: int) -> list[Vma]:
        """Split so that ``[start, end)`` is covered by whole VMAs; returns them."""
        self.split_at(start)
        self.split_at(end)
        return self.overlapping(start, end)

    def update(self, vma: Vma, changes: dict) -> None:
        """Change flags of ``vma`` in place (a whole-VMA mprotect, registration...);
        the cached arrays are rebuilt on their next use."""
        for name, value in changes.items():
            setattr(vma, name, value)
        self.version += 1

    def merge_at(self, addr: int) -> Vma | None:
        """Merge the VMA containing ``addr`` with its neighbours where compatible
        (vma_merge: only the VMA just created or changed is merged, never others);
        returns the VMA now containing ``addr``."""
        vma = self.find(addr)
        if vma is None:
            return None
        i = bisect.bisect_right(self._starts, addr) - 1
        changed = False
        if i + 1 < len(self.vmas) and vma.can_merge_with_next(self.vmas[i + 1]):
            self._absorb_next(i)
            changed = True
        if i > 0 and self.vmas[i - 1].can_merge_with_next(vma):
            self._absorb_next(i - 1)
            vma = self.vmas[i - 1]
            changed = True
        if changed:
            self._changed()
        return vma

    def _absorb_next(self, i: int) -> None:
        cur, nxt = self.vmas[i], self.vmas[i + 1]
        cur.end = nxt.end
        if cur.anon_vma is None:
            cur.anon_vma = nxt.anon_vma
        del self.vmas[i + 1]

    # -- placement ---------------------------------------------------------------
    def free_area(self, length: int, align: int) -> int | None:
        """The highest ``align``-aligned address below MMAP_BASE where ``length`` fits (top-down)."""
        top = MMAP_BASE
        for vma in reversed(self.vmas):
            if vma.start >= top:
                continue
            gap_lo = max(vma.end, MMAP_MIN_ADDR)
            addr = (top - length) & ~(align - 1)
            if addr >= gap_lo and top - length >= 0:
                return addr
            top = min(top, vma.start)
        addr = (top - length) & ~(align - 1)
        if addr >= MMAP_MIN_ADDR:
            return addr
        return None
