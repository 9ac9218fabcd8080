"""Page arithmetic shared by the allocator, the planner and their compiled twins."""

from __future__ import annotations

import numpy as np


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def large_pages(totals: np.ndarray, page_size: int, hpage_pages: int) -> np.ndarray:
    """Pages a large object owns: whole pages, whole 2 MiB units when huge."""
    pages = -(-totals // page_size)
    if hpage_pages:
        huge = totals >= hpage_pages * page_size
        pages = np.where(huge, -(-pages // hpage_pages) * hpage_pages, pages)
    return pages
