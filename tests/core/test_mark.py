"""heap.core.mark against the plain Python model and against the numpy marker,
on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heap import core
from heap.errors import HeapCorrupted
from heap.kernel import KernelBase
from heap.mark import Workspace
from heap.mark import mark as numpy_mark
from heap.objects import DEFAULT_MODEL

from .graphs import Graph, Imm, chain, has_immediates, lay_out, reference_mark
from .strategies import graphs

pytestmark = pytest.mark.skipif(not core.COMPILED, reason="heap._core not built")


def core_mark(laid, threads=None):
    return core.mark(laid.kernel, DEFAULT_MODEL, laid.index, Workspace(), laid.starts, laid.nrefs, laid.slot_base,
                     laid.roots, laid.totals, threads=threads)


def recorded(marking, laid) -> dict[int, list[int]]:
    """{live row: slot_target of its slots}."""
    st = marking.slot_target
    return {r: st[laid.slot_base[r]:laid.slot_base[r] + laid.nrefs[r]].tolist()
            for r in np.flatnonzero(marking.live).tolist()}


def check_against_model(kernel, graph: Graph, threads=None, **layout) -> None:
    laid = lay_out(kernel, graph, **layout)
    try:
        got = core_mark(laid, threads)
        live, targets = reference_mark(graph)
        assert got.live.tolist() == live
        assert recorded(got, laid) == targets
        assert got.live_objects == sum(live)
        assert got.live_bytes == sum(int(t) for t, alive in zip(laid.totals, live) if alive)
        assert got.slots_read == sum(len(graph.targets[r]) for r in range(graph.n) if live[r])
        if not has_immediates(graph):  # the numpy marker has no immediates (yet)
            theirs = numpy_mark(kernel, DEFAULT_MODEL, laid.index, Workspace(), laid.starts, laid.nrefs,
                                laid.slot_base, laid.roots)
            assert (theirs.live == got.live).all()
            assert recorded(theirs, laid) == recorded(got, laid)
    finally:
        laid.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs())
def test_random_graphs_mark_as_the_model_does(kernel, graph):
    check_against_model(kernel, graph)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(max_objects=120), threads=st.sampled_from([2, 3, 4]))
def test_random_graphs_mark_in_parallel_as_the_model_does(kernel, graph, threads):
    """Several markers (on the simulator's frames: one, the parallel mark needs direct memory)."""
    check_against_model(kernel, graph, threads=threads)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_a_wide_tree_marks_the_same_on_any_number_of_markers(kernel, threads):
    """A tree wide enough that markers hand work to each other (in a shuffled layout)."""
    n = 20_000
    order = np.random.default_rng(5).permutation(n)
    targets = [[] for _ in range(n)]
    for k in range(n):
        targets[order[k]] = [int(order[c]) if c < n else None for c in (2 * k + 1, 2 * k + 2)]
    graph = Graph(nbytes=[16] * n, targets=targets, roots=[int(order[0])])
    laid = lay_out(kernel, graph)
    try:
        got = core_mark(laid, threads)
        assert got.live.all() and got.live_objects == n and got.slots_read == 2 * n
        alone = core_mark(laid, 1)
        assert (got.slot_target[:2 * n] == alone.slot_target[:2 * n]).all()
    finally:
        laid.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("threads", [2, 4])
def test_a_wide_object_overflows_a_markers_own_stack(kernel, threads):
    """One object naming 20,000 others (each naming one more): a marker's own
    stack (4096 rows) fills and hands half of it to the shared one, again and again."""
    n = 20_000
    targets = [list(range(1, n + 1))] + [[n + k] for k in range(1, n + 1)] + [[] for _ in range(n)]
    graph = Graph(nbytes=[0] * (2 * n + 1), targets=targets, roots=[0])
    laid = lay_out(kernel, graph)
    try:
        got = core_mark(laid, threads)
        assert got.live.all() and got.live_objects == 2 * n + 1 and got.slots_read == 2 * n
        alone = core_mark(laid, 1)
        assert (got.slot_target[:2 * n] == alone.slot_target[:2 * n]).all()
    finally:
        laid.close()


@pytest.mark.timeout(300)
def test_a_bad_slot_deep_in_a_parallel_mark_stops_every_marker(kernel):
    n = 20_000
    order = np.random.default_rng(6).permutation(n)
    targets = [[] for _ in range(n)]
    for k in range(n):
        targets[order[k]] = [int(order[c]) if c < n else None for c in (2 * k + 1, 2 * k + 2)]
    laid = lay_out(kernel, Graph(nbytes=[16] * n, targets=targets, roots=[int(order[0])]))
    try:
        leaf = int(order[n - 1])
        bad = int(laid.starts[leaf]) + 8
        kernel.store_words(np.array([laid.starts[leaf] + 16], dtype=np.uint64), np.array([bad], dtype=np.uint64))
        with pytest.raises(HeapCorrupted) as exc:
            core_mark(laid, 2)
        assert f"0x{bad:x}" in exc.value.detail
    finally:
        laid.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs())
def test_random_graphs_with_untouched_slot_pages(kernel, graph):
    """None slots never written: on the simulator their pages are not present
    and the core has the kernel fault them in, then resumes."""
    check_against_model(kernel, graph, write_none_slots=False)


NAMED = {
    "empty heap": Graph(nbytes=[], targets=[], roots=[]),
    "no roots": Graph(nbytes=[8, 8], targets=[[1], [0]], roots=[]),
    "only None roots": Graph(nbytes=[8], targets=[[]], roots=[None, None]),
    "self reference": Graph(nbytes=[8, 8], targets=[[0, 0], [1]], roots=[0]),
    "cycle": Graph(nbytes=[8, 8, 8, 8], targets=[[1], [2], [0], [0]], roots=[2]),
    "duplicate roots": Graph(nbytes=[8, 8, 8], targets=[[2], [], []], roots=[0, 0, None, 0, 1, 1]),
    "dead object pointing at live": Graph(nbytes=[8, 8], targets=[[], [0]], roots=[0]),
    "immediates are not followed": Graph(nbytes=[8, 8], targets=[[Imm(0), None, Imm(-5)], [0]], roots=[0]),
    "object spanning pages": Graph(nbytes=[8, 20000, 8], targets=[[1], [2] * 1000, []], roots=[0]),
    "slots crossing a page boundary": Graph(nbytes=[0, 0], targets=[[1] * 600, [None] * 600], roots=[0]),
}


@pytest.mark.parametrize("graph", NAMED.values(), ids=NAMED.keys())
def test_named_graphs(kernel, graph):
    check_against_model(kernel, graph)
    check_against_model(kernel, graph, write_none_slots=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("threads", [1, 2])
def test_chain_of_a_million_links_has_no_depth_limit(kernel, threads):
    graph = chain(1_000_000)
    laid = lay_out(kernel, graph)
    try:
        got = core_mark(laid, threads)
        assert got.live.all()
        st = got.slot_target[:graph.n]
        assert (st[:-1] == np.arange(1, graph.n)).all() and st[-1] == -1
    finally:
        laid.close()


def test_the_middle_of_a_chain_marks_its_tail(kernel):
    graph = chain(1000)
    graph.roots = [500]
    check_against_model(kernel, graph)


CORRUPT = {
    "slot inside an object": (lambda laid: laid.starts[1] + 8, "reference slot of a live object"),
    "slot a granule into an object": (lambda laid: laid.starts[1] + 16, "reference slot of a live object"),
    "slot past the last object": (lambda laid: laid.starts[1] + 4096, "reference slot of a live object"),
    "slot outside the heap": (lambda laid: laid.base + laid.size + (1 << 30), "reference slot of a live object"),
    "slot below the heap": (lambda laid: 16, "reference slot of a live object"),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("value, what", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_slot_that_is_no_object_start_is_named(kernel, value, what, threads):
    laid = lay_out(kernel, Graph(nbytes=[8, 8], targets=[[1], []], roots=[0]))
    try:
        bad = int(value(laid))
        kernel.store_words(np.array([laid.starts[0] + 16], dtype=np.uint64), np.array([bad], dtype=np.uint64))
        with pytest.raises(HeapCorrupted) as exc:
            core_mark(laid, threads)
        assert exc.value.invariant == what
        assert f"0x{bad:x}" in exc.value.detail
    finally:
        laid.close()


def test_a_slot_at_a_stale_index_entry_is_named(kernel):
    """The address index is never cleared: a granule where an object once
    started still names a row. A slot pointing there is no reference."""
    laid = lay_out(kernel, Graph(nbytes=[8, 8], targets=[[1], []], roots=[0]))
    try:
        stale = int(laid.starts[1]) + 32
        laid.index.add(stale, 1)
        kernel.store_words(np.array([laid.starts[0] + 16], dtype=np.uint64), np.array([stale], dtype=np.uint64))
        with pytest.raises(HeapCorrupted) as exc:
            core_mark(laid)
        assert f"0x{stale:x}" in exc.value.detail
    finally:
        laid.close()


@pytest.mark.parametrize("offset, outside", [(8, False), (1 << 40, True)], ids=["inside an object", "outside"])
def test_a_root_that_is_no_object_start_is_named_as_numpy_names_it(kernel, offset, outside):
    laid = lay_out(kernel, Graph(nbytes=[8], targets=[[]], roots=[0]))
    try:
        laid.roots = np.array([laid.starts[0], laid.starts[0] + offset], dtype=np.int64)
        with pytest.raises(HeapCorrupted) as ours:
            core_mark(laid)
        with pytest.raises(HeapCorrupted) as theirs:
            numpy_mark(kernel, DEFAULT_MODEL, laid.index, Workspace(), laid.starts, laid.nrefs, laid.slot_base,
                       laid.roots)
        assert str(ours.value) == str(theirs.value)
        assert ("outside the heap" in str(ours.value)) == outside
    finally:
        laid.close()


def test_other_object_models_have_no_core(kernel):
    class Shifted(type(DEFAULT_MODEL)):
        def slot_addresses(self, starts, nrefs):
            return super().slot_addresses(starts, nrefs) + 8

    assert core.supports(kernel, DEFAULT_MODEL)
    assert not core.supports(kernel, Shifted())
    assert not core.supports(KernelBase(), DEFAULT_MODEL)


def test_a_page_the_core_reads_first_is_faulted_in_as_a_user_read_would(kernel):
    """Slots on a page never written: the page ends up mapping the zero page
    on both backends (Linux: the C read faults it; simulator: the core asks
    the kernel to load it)."""
    graph = Graph(nbytes=[0, 0], targets=[[1], [None] * 1000], roots=[0])
    laid = lay_out(kernel, graph, write_none_slots=False)
    try:
        ps = kernel.page_size
        untouched = (int(laid.starts[1]) // ps + 1) * ps
        assert kernel.page_info(untouched).state == "none"
        got = core_mark(laid)
        assert got.live.all()
        assert kernel.page_info(untouched).state == "zero"
    finally:
        laid.close()


def test_an_immediate_that_is_an_address_plus_the_tag_reaches_nothing(kernel):
    graph = Graph(nbytes=[8, 8], targets=[[None], []], roots=[0])
    laid = lay_out(kernel, graph)
    try:
        word = int(laid.starts[1]) | 1
        kernel.store_words(np.array([laid.starts[0] + 16], dtype=np.uint64), np.array([word], dtype=np.uint64))
        got = core_mark(laid)
        assert got.live.tolist() == [True, False]
        assert got.slot_target[0] == core.IMMEDIATE
    finally:
        laid.close()
