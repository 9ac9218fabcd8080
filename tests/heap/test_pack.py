"""pack(): the placement rules, and never above any layout that obeys them.

The in-place evacuation (objects sliding down through the from-space) and the
copying compactor both rely on the second property: with one ordered pass of
memmoves, no object lands on one that has not moved yet. Pure arithmetic, so
these tests need no kernel.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from heap.alloc import large_pages, pack, pack_numpy

PS = 4096
HP = 8  # a small "huge page" (8 pages) keeps the examples small


def legal(offsets: np.ndarray, totals: np.ndarray, hp: int) -> None:
    ends = offsets + totals
    assert (offsets[1:] >= ends[:-1]).all(), "objects overlap or lost their order"
    assert (offsets % 16 == 0).all()
    small = totals < PS
    assert (offsets[small] // PS == (ends[small] - 1) // PS).all(), "a small object crosses a page"
    assert (offsets[~small] % PS == 0).all(), "a large object is not page-aligned"
    if hp:
        huge = totals >= hp * PS
        medium = ~small & ~huge
        assert (offsets[huge] % (hp * PS) == 0).all(), "a huge object is not huge-page aligned"
        unit = hp * PS
        assert (offsets[medium] // unit == (ends[medium] - 1) // unit).all(), "a medium object crosses a huge page"


def some_layout(totals: np.ndarray, gaps: list[int], hp: int) -> np.ndarray:
    """A legal layout with holes: what allocation plus dead objects leave."""
    out, pos = [], 0
    for t, gap in zip(totals.tolist(), gaps):
        pos += gap * 16
        if t < PS:
            if pos // PS != (pos + t - 1) // PS:
                pos = -(-pos // PS) * PS
        else:
            pos = -(-pos // PS) * PS
            n = int(large_pages(np.int64(t), PS, hp))
            if hp and (t >= hp * PS or (pos // PS) % hp + n > hp):
                pos = -(-pos // (hp * PS)) * hp * PS
        out.append(pos)
        pos += t if t < PS else int(large_pages(np.int64(t), PS, hp)) * PS
    return np.asarray(out, dtype=np.int64)


sizes = st.lists(st.one_of(st.integers(1, 20).map(lambda k: 16 * k),
                           st.integers(1, 255).map(lambda k: 16 * k),
                           st.integers(PS // 16, 12 * PS // 16).map(lambda k: 16 * k)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(sizes, st.data(), st.sampled_from([0, HP]))
def test_pack_is_legal_and_never_above_a_legal_layout(totals, data, hp):
    totals = np.asarray(totals, dtype=np.int64)
    gaps = data.draw(st.lists(st.integers(0, 300), min_size=len(totals), max_size=len(totals)))
    offsets, npages = pack(totals, PS, hp)
    legal(offsets, totals, hp)
    twin_offsets, twin_pages = pack_numpy(totals, PS, hp)  # the numpy twin of the compiled loop
    assert np.array_equal(offsets, twin_offsets) and npages == twin_pages
    layout = some_layout(totals, gaps, hp)
    legal(layout, totals, hp)
    assert (offsets <= layout).all()
    last = offsets[-1] + (totals[-1] if totals[-1] < PS else large_pages(totals[-1:], PS, hp)[0] * PS)
    assert npages == -(-int(last) // PS)
