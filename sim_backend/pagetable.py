"""Page tables of the simulated address space.

Two levels, like x86-64 below the PUD:

* a PMD entry per 2 MiB region: none, a PTE table, a THP (one PMD mapping a
  512-page folio) or the huge zero page;
* a PTE per 4 KiB page inside a PTE table: none (``NO_FRAME``), the zero
  page (``ZERO_FRAME``) or a frame id.

Every region that is not none owns a row of the 2-D array ``pte`` (a
"table slot"); a THP or huge-zero row holds the 512 frame ids it maps, so a
lookup never needs to know the PMD kind. Whether a region has a PTE table at
all is observable (an empty table forces UFFDIO_MOVE to split a THP), so an
empty table is a row of ``NO_FRAME``, distinct from no row.

The PUD level matters only for one check of UFFDIO_MOVE (a src range whose
1 GiB region has no PMD table fails before dst is examined), so it is a set
of 1 GiB region numbers that have a PMD table.
"""

from __future__ import annotations

import numpy as np

from .frames import NO_FRAME, PTRS_PER_PMD

PMD_SHIFT = 21
PUD_SHIFT = 30
PMD_SIZE = 1 << PMD_SHIFT

NONE, TABLE, THP, HUGE_ZERO = 0, 1, 2, 3
KIND_NAMES = {NONE: "none", TABLE: "table", THP: "thp", HUGE_ZERO: "huge_zero"}


class PageTables:
    def __init__(self) -> None:
        cap = 64
        self.pte = np.full((cap, PTRS_PER_PMD), NO_FRAME, dtype=np.int64)
        self.kind = np.zeros(cap, dtype=np.int8)
        self.region_of = np.full(cap, -1, dtype=np.int64)  # row -> its 2 MiB region number
        self.slot_of: dict[int, int] = {}  # 2 MiB region number -> row of ``pte``
        self._free_rows = list(range(cap - 1, -1, -1))
        self.puds: set[int] = set()  # 1 GiB region numbers with a PMD table
        self.version = 0  # bumped whenever a region gains or loses its row

    # -- rows ------------------------------------------------------------------
    def row(self, region: int) -> int:
        """The row of ``region``, or -1 if its PMD is none."""
        return self.slot_of.get(region, -1)

    def kind_of(self, region: int) -> int:
        row = self.slot_of.get(region, -1)
        return NONE if row < 0 else int(self.kind[row])

    def _new_row(self) -> int:
        if not self._free_rows:
            cap = self.kind.size
            pte = np.full((cap * 2, PTRS_PER_PMD), NO_FRAME, dtype=np.int64)
            pte[:cap] = self.pte
            kind = np.zeros(cap * 2, dtype=np.int8)
            kind[:cap] = self.kind
            region_of = np.full(cap * 2, -1, dtype=np.int64)
            region_of[:cap] = self.region_of
            self.pte, self.kind, self.region_of = pte, kind, region_of
            self._free_rows = list(range(cap * 2 - 1, cap - 1, -1))
        return self._free_rows.pop()

    def install(self, region: int, kind: int) -> int:
        """Give ``region`` (PMD none) a row of ``kind``, all entries NO_FRAME."""
        assert region not in self.slot_of
        row = self._new_row()
        self.kind[row] = kind
        self.pte[row] = NO_FRAME
        self.slot_of[region] = row
        self.region_of[row] = region
        self.puds.add(region >> (PUD_SHIFT - PMD_SHIFT))
        self.version += 1
        return row

    def table(self, region: int) -> int:
        """The PTE table of ``region``, allocating an empty one if the PMD is none (pte_alloc)."""
        row = self.slot_of.get(region, -1)
        if row < 0:
            row = self.install(region, TABLE)
        return row

    def drop(self, region: int) -> None:
        """Clear the PMD of ``region`` (its entries must already be released)."""
        row = self.slot_of.pop(region)
        self.kind[row] = NONE
        self.pte[row] = NO_FRAME
        self.region_of[row] = -1
        self._free_rows.append(row)
        self.version += 1

    def move_row(self, src_region: int, dst_region: int) -> None:
        """Move a whole PMD entry (THP, huge zero page, or PTE table) to a region whose PMD is none."""
        row = self.slot_of.pop(src_region)
        assert dst_region not in self.slot_of
        self.slot_of[dst_region] = row
        self.region_of[row] = dst_region
        self.puds.add(dst_region >> (PUD_SHIFT - PMD_SHIFT))
        self.version += 1

    def has_pud(self, region: int) -> bool:
        return (region >> (PUD_SHIFT - PMD_SHIFT)) in self.puds

    def alloc_pud(self, region: int) -> None:
        self.puds.add(region >> (PUD_SHIFT - PMD_SHIFT))

    def drop_pud(self, pud: int) -> None:
        self.puds.discard(pud)

    # -- vectorised lookups ----------------------------------------------------------
    def rows_for(self, regions: np.ndarray) -> np.ndarray:
        """Row of each region number in ``regions`` (-1 where the PMD is none)."""
        if regions.size == 0:
            return np.empty(0, dtype=np.int64)
        rmin = int(regions.min())
        rmax = int(regions.max())
        span = rmax - rmin + 1
        if span <= max(4 * regions.size, 1 << 16):
            dense = np.full(span, -1, dtype=np.int64)
            if span < len(self.slot_of):
                get = self.slot_of.get
                for r in range(rmin, rmax + 1):
                    row = get(r)
                    if row is not None:
                        dense[r - rmin] = row
            else:
                for r, row in self.slot_of.items():
                    if rmin <= r <= rmax:
                        dense[r - rmin] = row
            return dense[regions - rmin]
        get = self.slot_of.get
        return np.fromiter((get(int(r), -1) for r in regions), dtype=np.int64, count=regions.size)

    def mapping(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) of every entry mapping a frame id in ``[lo, hi)``: the reverse
        map of a folio, over every region of this address space."""
        used = np.flatnonzero(self.kind != NONE)
        block = self.pte[used]
        rows, cols = np.nonzero((block >= lo) & (block < hi))
        return used[rows], cols

    def frames_at(self, pages: np.ndarray) -> np.ndarray:
        """Frame id mapped at each virtual page number (NO_FRAME where none)."""
        rows = self.rows_for(pages >> (PMD_SHIFT - 12))
        frames = self.pte[np.maximum(rows, 0), pages & (PTRS_PER_PMD - 1)]
        frames[rows < 0] = NO_FRAME
        return frames
