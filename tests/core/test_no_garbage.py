"""A collection where nothing died since the last one costs its mark: the plan
finds every object already where it would put it (``Plan.identity``), and
nothing is flipped, moved, copied or fixed. When something did die, or was
allocated since, the collection compacts as any other. Both compactors,
both backends, through the Heap API; the plan's identity flag against the
plan it summarises (random layouts)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heap import Heap, core
from heap.alloc import pack
from heap.mark import Workspace
from heap.plan import plan_remap, plan_slide

COMPACTORS = ["remap", "copy"]


def tree_heap(heap, n=400, seed=3):
    """n objects, a random half linked into a tree under one root (the rest dead), each
    holding its index in its payload. Returns the root and the live indices."""
    rng = np.random.default_rng(seed)
    block = heap.alloc_many(rng.integers(8, 200, n), 2)
    for i in range(n):
        block[i].write(i.to_bytes(4, "little"))
    live = rng.permutation(n)[: n // 2]
    for slot in (0, 1):
        child = 2 * np.arange(live.size) + 1 + slot
        has = child < live.size
        block.set_refs(slot, live[has], block, live[child[has]])
    root = block[int(live[0])]
    del block
    return root, sorted(live.tolist())


def reachable(root) -> dict[int, object]:
    """{payload index: Ref} of every object under root."""
    seen, todo = {}, [root]
    while todo:
        ref = todo.pop()
        key = int.from_bytes(ref.read(4), "little")
        if key in seen:
            continue
        seen[key] = ref
        todo.extend(r for r in (ref.get_ref(0), ref.get_ref(1)) if r is not None)
    return seen


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_nothing_died_since_the_last_collection_nothing_moves(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor) as heap:
        root, live = tree_heap(heap)
        first = heap.collect()
        assert first.freed_objects == 400 - len(live) and first.bytes_copied > 0
        before = {k: r.address for k, r in reachable(root).items()}
        second = heap.collect()
        assert second.freed_objects == 0 and second.live_objects == len(live)
        assert second.bytes_copied == 0 and second.pages_moved == 0
        after = reachable(root)
        assert sorted(after) == live
        assert {k: r.address for k, r in after.items()} == before
        heap.verify()


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_something_died_since_the_last_collection_compacts(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor) as heap:
        root, live = tree_heap(heap)
        heap.collect()
        objects = reachable(root)
        # cut the root's first subtree: everything under it dies
        lost = set(reachable(root.get_ref(0))) if root.get_ref(0) is not None else set()
        root.set_ref(0, None)
        del objects
        stats = heap.collect()
        assert stats.freed_objects == len(lost) > 0
        assert stats.bytes_copied > 0 or stats.pages_moved > 0
        assert sorted(reachable(root)) == sorted(set(live) - lost)
        heap.verify()


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_allocated_since_the_last_collection_all_alive(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor) as heap:
        root, live = tree_heap(heap)
        heap.collect()
        before = {k: r.address for k, r in reachable(root).items()}
        extra = heap.alloc(100, 1)
        extra.write((10_000).to_bytes(4, "little"))
        extra.set_ref(0, root)
        stats = heap.collect()
        assert stats.freed_objects == 0 and stats.live_objects == len(live) + 1
        assert {k: r.address for k, r in reachable(root).items()} == before  # the older ones stay put
        assert int.from_bytes(extra.read(4), "little") == 10_000 and extra.get_ref(0).address == root.address
        heap.verify()


@pytest.mark.parametrize("compactor", COMPACTORS)
def test_allocated_since_and_dead_again(kernel_name, compactor):
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor) as heap:
        root, live = tree_heap(heap)
        heap.collect()
        garbage = heap.alloc_many(np.full(50, 64), 1)
        del garbage
        stats = heap.collect()
        assert stats.freed_objects == 50
        assert sorted(reachable(root)) == live
        heap.verify()
        assert heap.collect().bytes_copied == 0  # and then nothing died again


@st.composite
def layouts(draw):
    n = draw(st.integers(0, 300))
    totals = 16 * np.array(draw(st.lists(st.integers(1, 400), min_size=n, max_size=n)), dtype=np.int64)
    live = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    if n and draw(st.booleans()):
        live[:] = True  # nothing died: the case the identity is for
    return totals, live


@settings(max_examples=80, deadline=None)
@given(layout=layouts(), dense=st.sampled_from([0.25, 0.85, 1.0]), already_planned=st.booleans())
def test_plan_identity_is_whether_every_object_stays(layout, dense, already_planned):
    """Plan.identity is exactly new_starts == the live objects' starts, and a
    plan into a workspace's retained buffers is the plan without one."""
    totals, live = layout
    ps, base = 4096, 1 << 30
    offsets, pages = pack(totals, ps, 0)
    starts = base + offsets
    if already_planned and live.any():  # a layout some collection produced: plan its output again
        first = plan_remap(starts, totals, live, base, ps, 0, pages, dense)
        starts, totals = first.new_starts, totals[first.live_rows]
        live = np.ones(starts.size, dtype=bool)
        pages = first.end_pages
    fresh = plan_remap(starts, totals, live, base, ps, 0, pages, dense)
    work = Workspace()
    for _ in range(2):  # the buffers reused
        kept = plan_remap(starts, totals, live, base, ps, 0, pages, dense, work=work)
        for name in ("live_rows", "new_starts", "evacuated", "evac_from", "evac_to", "piece_dst", "piece_src",
                     "piece_n", "piece_rebuilt"):
            assert np.array_equal(getattr(kept, name), getattr(fresh, name)), name
    stays = bool(np.array_equal(fresh.new_starts, starts[fresh.live_rows]))
    assert fresh.identity == kept.identity == stays
    slid = plan_slide(starts, totals, live, base, ps, 0)
    assert slid.identity == bool(np.array_equal(slid.new_starts, starts[slid.live_rows]))


def page_sources(plan) -> list[tuple[int, bool]]:
    """(from-space page, rebuilt?) of every to-space page: what the pieces say, however they are cut."""
    out = []
    for dst, src, n, rebuilt in zip(plan.piece_dst.tolist(), plan.piece_src.tolist(), plan.piece_n.tolist(),
                                    plan.piece_rebuilt.tolist()):
        assert dst == len(out)
        out.extend((src + k, rebuilt) for k in range(n))
    return out


@settings(max_examples=120, deadline=None)
@given(layout=layouts(), dense=st.sampled_from([0.25, 0.5, 0.85, 1.0]), times=st.integers(0, 2),
       large=st.booleans())
def test_a_staying_plan_is_the_plan(layout, dense, times, large):
    """When nothing died, heap.core.plan_stays answers 'every object stays' in
    one pass; the plan built from that answer is the plan planned in full,
    and when it says no, the full plan moves something."""
    totals, live = layout
    if large and totals.size:  # some objects of a page or more
        totals = totals.copy()
        totals[::7] = 4096 * (1 + totals[::7] // 2048)
    ps, base = 4096, 1 << 30
    offsets, pages = pack(totals, ps, 0)
    starts = base + offsets
    for _ in range(times):  # a layout some collections produced
        if not live.any():
            break
        p = plan_remap(starts, totals, live, base, ps, 0, pages, dense)
        starts, totals, pages = p.new_starts, totals[p.live_rows], p.end_pages
        live = np.ones(starts.size, dtype=bool)
    live = np.ones(starts.size, dtype=bool)  # nothing died since
    full = plan_remap(starts, totals, live, base, ps, 0, pages, dense, stays_check=False)
    if core.COMPILED:  # exact both ways: it says 'stays' exactly when the full plan moves nothing
        said = core.plan_stays(starts, totals, base, ps, int(np.ceil(dense * ps)))
        assert (said is not None) == full.identity
    for work in (None, Workspace()):
        fast = plan_remap(starts, totals, live, base, ps, 0, pages, dense, work=work)
        assert fast.identity == full.identity
        for name in ("live_rows", "new_starts", "evacuated", "evac_from", "evac_to"):
            assert np.array_equal(getattr(fast, name), getattr(full, name)), name
        for name in ("end_pages", "whole_pages", "rebuilt_pages", "last_object_end", "kept_dead_bytes"):
            assert getattr(fast, name) == getattr(full, name), name
        assert page_sources(fast) == page_sources(full)


@settings(max_examples=40, deadline=None)
@given(live=st.lists(st.booleans(), max_size=300), retained=st.booleans())
def test_live_rows_are_flatnonzero_and_two_gathers(live, retained):
    live = np.array(live, dtype=bool)
    starts = np.arange(live.size, dtype=np.int64) * 48 + (1 << 30)
    totals = np.arange(live.size, dtype=np.int64) % 7 * 16 + 32
    rows, l_start, l_total = core.live_rows(live, starts, totals, Workspace() if retained else None)
    want = np.flatnonzero(live)
    assert rows.tolist() == want.tolist()
    assert l_start.tolist() == starts[want].tolist() and l_total.tolist() == totals[want].tolist()
