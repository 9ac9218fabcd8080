"""Physical memory of the simulated kernel: frames and their contents.

A frame is one 4 KiB physical page. Its metadata lives in parallel numpy
arrays indexed by frame id (so a run of frames is checked or updated in one
vectorised step); its contents live in a lazily allocated pool of 4 KiB
slots. A frame that was never written has content slot 0, the shared
all-zero slot, so allocating a frame costs no host memory until something is
stored into it.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np

PAGE_SIZE = 4096
PTRS_PER_PMD = 512  # 4 KiB pages per 2 MiB PMD

NO_FRAME = -1  # a PTE that maps nothing
ZERO_FRAME = 1  # the shared zero page (id 0 is never used: frame 0 reads as "no frame")
HUGE_ZERO_BASE = 512  # the huge zero folio: frames 512..1023
FIRST_FRAME = 1024  # ordinary frames start here

ZERO_SLOT = 0  # content slot of every never-written frame and of the zero pages

# MAP_NORESERVE (Linux value): the pool's reservation is address space only.
_MAP_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0
# Reservation sizes tried in order; the pool is a bump allocator inside it.
_RESERVATIONS = (64 << 30, 16 << 30, 4 << 30, 1 << 30, 256 << 20)


class OutOfMemory(MemoryError):
    """The content pool's reservation is exhausted (the kernel reports ENOMEM)."""


class ContentPool:
    """Page contents, one 4 KiB slot per written frame.

    The backing store is one large anonymous reservation mapped
    MAP_NORESERVE: the host only commits memory for slots actually written,
    so a simulated address space costs host RSS in proportion to the bytes
    stored into it, never to its size. Slot 0 is the zero page and is never
    written.
    """

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self.bytes: np.ndarray | None = None  # flat uint8 view
        self.pages: np.ndarray | None = None  # [slot, 4096] uint8
        self.words: np.ndarray | None = None  # [slot, 512] uint64
        self.flat_words: np.ndarray | None = None  # flat uint64 view
        self._capacity = 0
        self._next = 1
        self._free: list[int] = []

    def _reserve(self) -> None:
        last: Exception | None = None
        for size in _RESERVATIONS:
            try:
                self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
            except (OSError, OverflowError, ValueError) as exc:
                last = exc
                continue
            break
        else:
            raise OutOfMemory(f"cannot reserve a content pool: {last}")
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._capacity = self.bytes.size // PAGE_SIZE
        self.pages = self.bytes.reshape(self._capacity, PAGE_SIZE)
        self.words = self.bytes.view(np.uint64).reshape(self._capacity, PAGE_SIZE // 8)
        self.flat_words = self.bytes.view(np.uint64)

    def ensure(self) -> None:
        if self._map is None:
            self._reserve()

    def alloc(self, n: int) -> np.ndarray:
        """``n`` zero-filled slots."""
        self.ensure()
        reused = min(n, len(self._free))
        out = np.empty(n, dtype=np.int64)
        if reused:
            out[:reused] = self._free[len(self._free) - reused:]
            del self._free[len(self._free) - reused:]
            self.pages[out[:reused]] = 0
        fresh = n - reused
        if fresh:
            if self._next + fresh > self._capacity:
                raise OutOfMemory("the simulated kernel's content pool is exhausted")
            out[reused:] = np.arange(self._next, self._next + fresh)
            self._next += fresh
        return out

    def free(self, slots: np.ndarray) -> None:
        slots = slots[slots != ZERO_SLOT]
        if slots.size:
            self._free.extend(slots.tolist())

    @property
    def slots_in_use(self) -> int:
        return self._next - 1 - len(self._free)


class Frames:
    """Frame metadata in parallel arrays, indexed by frame id.

    * ``mapcount``: page-table entries mapping the frame, over every
      simulated address space (parent and forked children); a PMD mapping
      counts once for each of its 512 pages.
    * ``pins``: long-term pins (FOLL_PIN); a pinned page cannot be moved.
    * ``excl``: PageAnonExclusive: the page may be written without COW and
      moved by UFFDIO_MOVE. fork() clears it; a write fault sets it again.
    * ``slot``: content slot (ZERO_SLOT until first written).
    * ``head`` / ``nr``: the folio: its first frame and its size in pages
      (1 for an order-0 page, 512 for a THP), stored at every page.
    * ``anon_vma``: the anon_vma the page is filed under (UFFDIO_MOVE batches
      stop where it changes).
    * ``shmem``: the frame backs a MAP_SHARED|MAP_ANONYMOUS mapping.
    """

    def __init__(self) -> None:
        cap = 4096
        self.mapcount = np.zeros(cap, dtype=np.int32)
        self.pins = np.zeros(cap, dtype=np.int32)
        self.excl = np.zeros(cap, dtype=bool)
        self.slot = np.zeros(cap, dtype=np.int64)
        self.head = np.arange(cap, dtype=np.int64)
        self.nr = np.ones(cap, dtype=np.int32)
        self.anon_vma = np.zeros(cap, dtype=np.int64)
        self.shmem = np.zeros(cap, dtype=bool)
        self.content = ContentPool()
        self._next = FIRST_FRAME
        self._free: list[int] = []
        self.head[HUGE_ZERO_BASE:HUGE_ZERO_BASE + PTRS_PER_PMD] = HUGE_ZERO_BASE
        self.nr[HUGE_ZERO_BASE:HUGE_ZERO_BASE + PTRS_PER_PMD] = PTRS_PER_PMD

    # -- capacity --------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self.mapcount.size
        if need <= cap:
            return
        new = max(need, cap * 2)

        def grown(arr: np.ndarray, fill) -> np.ndarray:
            out = np.empty(new, dtype=arr.dtype)
            out[:cap] = arr
            out[cap:] = fill
            return out

        self.mapcount = grown(self.mapcount, 0)
        self.pins = grown(self.pins, 0)
        self.excl = grown(self.excl, False)
        self.slot = grown(self.slot, ZERO_SLOT)
        self.head = grown(self.head, 0)
        self.head[cap:] = np.arange(cap, new)
        self.nr = grown(self.nr, 1)
        self.anon_vma = grown(self.anon_vma, 0)
        self.shmem = grown(self.shmem, False)

    @property
    def allocated(self) -> int:
        """Frames currently in use (not counting the zero pages)."""
        return self._next - FIRST_FRAME - len(self._free)

    # -- allocation ----------------------------------------------------------------
    def _init(self, ids: np.ndarray, anon_vma: int, shmem: bool, nr: int) -> None:
        self.mapcount[ids] = 1
        self.pins[ids] = 0
        self.excl[ids] = not shmem
        self.slot[ids] = ZERO_SLOT
        self.head[ids] = ids[0] if nr > 1 else ids
        self.nr[ids] = nr
        self.anon_vma[ids] = anon_vma
        self.shmem[ids] = shmem

    def alloc_pages(self, n: int, *, anon_vma: int = 0, shmem: bool = False) -> np.ndarray:
        """``n`` zero-filled order-0 frames, each mapped once and exclusive."""
        reused = min(n, len(self._free))
        ids = np.empty(n, dtype=np.int64)
        if reused:
            ids[:reused] = self._free[len(self._free) - reused:][::-1]
            del self._free[len(self._free) - reused:]
        fresh = n - reused
        if fresh:
            self._grow(self._next + fresh)
            ids[reused:] = np.arange(self._next, self._next + fresh)
            self._next += fresh
        self._init(ids, anon_vma, shmem, 1)
        return ids

    def alloc_page(self, *, anon_vma: int = 0, shmem: bool = False) -> int:
        return int(self.alloc_pages(1, anon_vma=anon_vma, shmem=shmem)[0])

    def alloc_thp(self, *, anon_vma: int = 0) -> int:
        """A zero-filled 512-page folio on a 512-aligned run of frame ids; returns its head."""
        base = -(-self._next // PTRS_PER_PMD) * PTRS_PER_PMD
        # The frames skipped to align the folio are handed out as order-0 pages later.
        self._free[:0] = list(range(base - 1, self._next - 1, -1))
        self._grow(base + PTRS_PER_PMD)
        self._next = base + PTRS_PER_PMD
        ids = np.arange(base, base + PTRS_PER_PMD, dtype=np.int64)
        self._init(ids, anon_vma, False, PTRS_PER_PMD)
        return base

    def unmap(self, ids: np.ndarray) -> None:
        """Drop one mapping of each of ``ids`` (distinct ordinary frames); free those left unmapped.

        A page of a large folio is freed only with the whole folio, once none of
        its pages is mapped: a partly unmapped folio keeps its size (and its
        unmapped pages) until it is split or wholly unmapped.
        """
        if ids.size == 0:
            return
        self.mapcount[ids] -= 1
        dead = ids[self.mapcount[ids] <= 0]
        if dead.size == 0:
            return
        large = self.nr[dead] > 1
        if large.any():
            whole = [np.arange(h, h + int(self.nr[h]), dtype=np.int64)
                     for h in np.unique(self.head[dead[large]]).tolist()
                     if not self.mapcount[h:h + int(self.nr[h])].any()]
            dead = np.concatenate([dead[~large], *whole])
        if dead.size:
            self.free(dead)

    def free(self, ids: np.ndarray) -> None:
        self.content.free(self.slot[ids])
        self.slot[ids] = ZERO_SLOT
        self.mapcount[ids] = 0
        self.excl[ids] = False
        self.head[ids] = ids
        self.nr[ids] = 1
        self._free.extend(ids.tolist())

    # -- contents ----------------------------------------------------------------------
    def writable_slots(self, ids: np.ndarray) -> np.ndarray:
        """Content slots of ``ids`` (ordinary frames), giving a slot to those without one."""
        slots = self.slot[ids]
        fresh = slots == ZERO_SLOT
        if fresh.any():
            # A frame may repeat in ``ids``: give each distinct frame one slot.
            need = np.unique(ids[fresh])
            self.slot[need] = self.content.alloc(need.size)
            slots = self.slot[ids]
        return slots

    def copy_contents(self, dst: np.ndarray, src: np.ndarray) -> None:
        """Make each ``dst`` frame's content a copy of the matching ``src`` frame's."""
        src_slots = self.slot[src]
        has = src_slots != ZERO_SLOT
        if has.any():
            dslots = self.writable_slots(dst[has])
            self.content.pages[dslots] = self.content.pages[src_slots[has]]

    def split_folio(self, head: int) -> int:
        """Turn a large folio into order-0 pages, freeing those no longer mapped;
        returns how many pages it had."""
        nr = int(self.nr[head])
        ids = np.arange(head, head + nr, dtype=np.int64)
        self.head[ids] = ids
        self.nr[ids] = 1
        unmapped = ids[self.mapcount[ids] <= 0]
        if unmapped.size:
            self.free(unmapped)
        return nr

    def written(self, ids: np.ndarray) -> np.ndarray:
        """Whether each frame holds a nonzero byte."""
        slots = self.slot[ids]
        out = slots != ZERO_SLOT
        if out.any():
            self.content.ensure()
            out[out] = self.content.pages[slots[out]].any(axis=1)
        return out
