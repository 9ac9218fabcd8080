"""LinuxKernel.resident_bytes by its two readers of the real page tables.

PAGEMAP_SCAN (needs no privilege) and the per-page /proc/self/pagemap entries
(frame numbers need CAP_SYS_ADMIN, as here) must agree with the layout the
test wrote; the protocol-level count is tested on both backends in
tests/kernel/test_kernel_memory.py.
"""

from __future__ import annotations

import pytest

from heap.kernel import PAGE_SIZE
from tests.kernel.kernel_helpers import RESIDENT_LAYOUTS, layout_pages

PS = PAGE_SIZE


@pytest.mark.parametrize("name,layout", RESIDENT_LAYOUTS, ids=[n for n, _ in RESIDENT_LAYOUTS])
def test_pagemap_scan_and_per_page_reads_agree_with_the_layout(k, mem, name, layout):
    n = 2048  # "w.r" makes ~1,400 regions: the scan continues past a full vector
    a = mem(n)
    layout_pages(k, a, n, layout)
    written = sum(1 for i in range(n) if layout[i % len(layout)] == "w")
    inner = sum(1 for i in range(3, n - 2) if layout[i % len(layout)] == "w")
    assert k._resident_by_scan(a, n * PS) == written * PS
    assert k._resident_by_scan(a + 3 * PS, (n - 5) * PS) == inner * PS
    if not frames_visible(k, mem(1)):
        pytest.skip("per-page pagemap hides frame numbers without CAP_SYS_ADMIN")
    assert k._resident_by_pagemap(a, n * PS) == written * PS


def frames_visible(k, addr) -> bool:
    """PFNs in /proc/self/pagemap need CAP_SYS_ADMIN; without them the zero page looks like any page."""
    k.store(addr, b"\x01")
    return bool(k.page_frames(addr, 1)[0] != -1)
