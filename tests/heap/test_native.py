"""The compiled side-table loops and their numpy twins give the same results,
and a collection gives the same heap with either."""

from __future__ import annotations

import numpy as np
import pytest

import heap.native as native
from heap import Heap, HeapCorrupted
from heap.mark import AddressIndex

needs_compiled = pytest.mark.skipif(not native.COMPILED, reason="heap._native was not built")


@needs_compiled
@pytest.mark.parametrize("counts", [[2, 2, 2], [0, 3, 1, 0, 5], [1]], ids=["uniform", "mixed", "one"])
def test_expand_agrees(counts):
    firsts = np.array([100, 2000, 30_000, 400_000, 5_000_000][: len(counts)], dtype=np.int64)
    a = native.expand(firsts, np.array(counts), 8, compiled=True)
    b = native.expand(firsts, np.array(counts), 8, compiled=False)
    assert np.array_equal(a, b) and a.size == sum(counts)


@needs_compiled
def test_mark_targets_and_slot_values_agree():
    rng = np.random.default_rng(7)
    base, n = 1 << 30, 5000
    starts = base + np.cumsum(rng.integers(2, 20, size=n) * 16)
    index = AddressIndex(base, 1 << 24)
    index.add_many(starts, 0)
    words = np.where(rng.random(20_000) < 0.2, 0, starts[rng.integers(0, n, size=20_000)])
    positions = rng.permutation(40_000)[:20_000]
    already = np.zeros(n, dtype=bool)
    already[rng.integers(0, n, 50)] = True  # marked in an earlier level
    results = []
    for compiled in (True, False):
        live = already.copy()
        slot_target = np.full(40_000, -7, dtype=np.int64)
        new = native.mark_targets(words, positions, index, starts, slot_target, live, np.empty(n, dtype=np.int64),
                                  compiled=compiled)
        results.append((np.sort(new), slot_target, live.copy()))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    assert np.array_equal(results[0][2], results[1][2])
    nrefs = rng.integers(0, 4, size=n)
    slot_base = np.cumsum(nrefs) - nrefs
    target = rng.integers(-1, n, size=int(nrefs.sum()))
    new_by_row = rng.integers(1, 1 << 40, size=n)
    rows = rng.permutation(n)[:3000]
    assert np.array_equal(native.slot_values(rows, nrefs, slot_base, target, new_by_row, compiled=True),
                          native.slot_values(rows, nrefs, slot_base, target, new_by_row, compiled=False))


@needs_compiled
@pytest.mark.parametrize("compiled", [True, False], ids=["C", "numpy"])
def test_dangling_word_is_reported_by_both(compiled):
    base = 1 << 30
    starts = base + np.arange(10, dtype=np.int64) * 64
    index = AddressIndex(base, 1 << 20)
    index.add_many(starts, 0)
    words = np.array([starts[3], starts[4] + 16], dtype=np.int64)
    with pytest.raises(HeapCorrupted, match=hex(int(starts[4] + 16))):
        native.mark_targets(words, np.arange(2), index, starts, np.zeros(2, dtype=np.int64),
                            np.zeros(10, dtype=bool), np.empty(10, dtype=np.int64), compiled=compiled)


@pytest.mark.timeout(60)
def test_collection_without_the_compiled_loops(kernel_name, monkeypatch):
    monkeypatch.setattr(native, "COMPILED", False)
    for name in ("expand", "mark_targets", "slot_values"):
        fn = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _fn=fn, **k: _fn(*a, **{**k, "compiled": False}))
    import heap.mark, heap.objects, heap.pause  # their imported names too
    monkeypatch.setattr(heap.mark, "expand", native.expand)
    monkeypatch.setattr(heap.mark, "mark_targets", native.mark_targets)
    monkeypatch.setattr(heap.objects, "expand", native.expand)
    monkeypatch.setattr(heap.pause, "slot_values", native.slot_values)
    with Heap(kernel=kernel_name, size=16 << 20) as h:
        arr = h.alloc_many(np.arange(2000) % 50 + 8, np.arange(2000) % 3)
        has = np.flatnonzero(np.arange(2000) % 3 > 0)
        arr.set_refs(0, has, arr, (has * 7) % 2000)
        keep = [arr[int(i)] for i in range(0, 2000, 5)]
        del arr
        stats = h.collect()
        assert len(keep) == 400 and stats.live_objects >= 400
        h.verify()


@needs_compiled
@pytest.mark.parametrize("hp", [0, 8], ids=["pages", "huge-units"])
def test_plan_whole_agrees(hp):
    from heap.alloc import pack

    rng = np.random.default_rng(hp)
    ps, base = 4096, 1 << 32
    totals = np.where(rng.random(3000) < 0.9, rng.integers(1, 60, 3000) * 16, rng.integers(256, 3000, 3000) * 16)
    offsets, _ = pack(totals, ps, hp)
    live = rng.random(3000) < 0.5
    up = hp or 1
    args = (base + offsets[live], totals[live], base, ps, up, hp, up * ps // 2)
    c = native.plan_whole(*args, compiled=True)
    py = native.plan_whole(*args, compiled=False)
    assert np.array_equal(c[0], py[0])
    assert np.array_equal(c[1][c[0]], py[1][py[0]])
    for a, b in zip(c[2:], py[2:]):
        assert np.array_equal(a, b)
    assert 0 < c[0].sum() < c[0].size
    whole, new_whole, _, _, whole_end, _ = c
    order_args = (base + offsets[live], totals[live], whole, new_whole, base, ps, up, hp, whole_end)
    oc = native.plan_order(*order_args, compiled=True)
    on = native.plan_order(*order_args, compiled=False)
    for a, b in zip(oc, on):
        assert np.array_equal(a, b)


@needs_compiled
@pytest.mark.parametrize("budget_units", [0, 3, 1000], ids=["no-budget", "three-units", "unbounded"])
def test_sparse_huge_units_of_large_objects_move_whole_within_the_budget(budget_units):
    """Units of 8 pages holding objects of 1-4 pages, a random third live:
    each unit is sparse; those moved whole instead of evacuated (the fullest
    first) keep at most the budget's dead bytes, and the compiled loop and
    its twin agree."""
    from heap.alloc import pack

    rng = np.random.default_rng(5)
    ps, hp, base = 4096, 8, 1 << 32
    totals = rng.integers(ps, 4 * ps + 1, 600)
    offsets, _ = pack(totals, ps, hp)
    live = rng.random(600) < 0.33
    budget = budget_units * hp * ps
    args = (base + offsets[live], totals[live], base, ps, hp, hp, hp * ps, budget)
    c = native.plan_whole(*args, compiled=True)
    py = native.plan_whole(*args, compiled=False)
    assert np.array_equal(c[0], py[0]) and c[5] == py[5]
    for a, b in zip(c[2:5], py[2:5]):
        assert np.array_equal(a, b)
    whole, kept = c[0], c[5]
    assert kept <= budget
    units_whole = np.unique((offsets[live][whole]) // (hp * ps))
    dead_in_them = units_whole.size * hp * ps - int(totals[live][whole].sum())
    assert kept == dead_in_them
    if budget_units == 0:
        assert not whole.any()
    elif budget_units == 1000:
        assert whole.all()
    else:  # the budget went to the fullest units: each kept one holds more than any copied out
        assert 0 < whole.sum() < whole.size
        unit_of = offsets[live] // (hp * ps)
        live_bytes = np.bincount(unit_of, weights=totals[live])
        kept_units = np.unique(unit_of[whole])
        copied_units = np.unique(unit_of[~whole])
        assert live_bytes[kept_units].min() >= live_bytes[copied_units].max()


@needs_compiled
@pytest.mark.parametrize("hp", [0, 8], ids=["pages", "huge-units"])
def test_page_kinds_and_index_entries_agree(hp):
    """The compiled page-kind marking and index entries equal their numpy
    twins on small, large and huge objects."""
    from heap.alloc import Allocator, pack
    from heap.mark import AddressIndex

    rng = np.random.default_rng(hp + 1)
    ps, base = 4096, 1 << 32
    totals = np.where(rng.random(2000) < 0.7, rng.integers(1, 200, 2000) * 16, rng.integers(256, 9000, 2000) * 16)
    offsets, npages = pack(totals, ps, hp)
    live = rng.random(2000) < 0.5
    size = (npages + 16) * ps
    kinds, maps = [], []
    for compiled in (True, False):
        a = Allocator(base, size, ps, hp)
        a.mark_pages(base + offsets[live], totals[live], compiled=compiled)
        kinds.append(a.page_kind.copy())
        index = AddressIndex(base, size)
        index.add_many(base + offsets[live], 7, compiled=compiled)
        maps.append(index.map.copy())
        index.close()
    assert np.array_equal(*kinds) and (kinds[0] == 2).any() and (kinds[0] == 1).any()
    assert np.array_equal(*maps)
