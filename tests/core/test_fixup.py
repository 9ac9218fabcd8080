"""heap.core.fixup / forward / new_addresses against the Python model and the
numpy path (``slot_values`` + ``store_words``), on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heap import core
from heap.alloc import pack
from heap.errors import HeapCorrupted
from heap.mark import Workspace
from heap.native import slot_values
from heap.objects import DEFAULT_MODEL

from .graphs import Graph, Imm, chain, has_immediates, lay_out, reference_forward, reference_mark
from .strategies import graphs

pytestmark = pytest.mark.skipif(not core.COMPILED, reason="heap._core not built")


def marked(laid):
    return core.mark(laid.kernel, DEFAULT_MODEL, laid.index, Workspace(), laid.starts, laid.nrefs, laid.slot_base,
                     laid.roots, laid.totals)


def slide_plan(laid, live: np.ndarray, order_seed: int):
    """A plan: the live rows in some order, packed from a new origin (what a
    compactor decides; the fixup does not care which)."""
    rows = np.flatnonzero(live)
    rows = np.random.default_rng(order_seed).permutation(rows)
    offsets, _ = pack(laid.totals[rows], laid.kernel.page_size, 0)
    return rows, (1 << 40) + offsets


def slots_now(laid, rows) -> dict[int, list[int]]:
    values = laid.kernel.load_words(laid.slot_addresses(rows).astype(np.uint64)).view(np.int64)
    out, i = {}, 0
    for r in rows.tolist():
        k = int(laid.nrefs[r])
        out[r] = values[i:i + k].tolist()
        i += k
    return out


def check_fixup(kernel, graph: Graph, seed: int, **layout) -> None:
    laid = lay_out(kernel, graph, **layout)
    try:
        m = marked(laid)
        rows, new_starts = slide_plan(laid, m.live, seed)
        new_by_row = core.new_addresses(graph.n, rows, new_starts)
        numpy_values = slot_values(rows, laid.nrefs, laid.slot_base, m.slot_target, new_by_row)
        written = core.fixup(kernel, DEFAULT_MODEL, rows, laid.starts[rows], laid.nrefs, laid.slot_base,
                             m.slot_target, new_by_row)
        live, _ = reference_mark(graph)
        new_address = {int(r): int(a) for r, a in zip(rows, new_starts)}
        assert slots_now(laid, rows) == reference_forward(graph, live, new_address)
        if not has_immediates(graph):  # numpy's slot_values has no immediates (yet)
            got = kernel.load_words(laid.slot_addresses(rows).astype(np.uint64)).view(np.int64)
            assert (got == numpy_values).all()
        assert written == int(laid.nrefs[rows].sum())
        assert new_by_row.tolist() == [new_address.get(r, 0) for r in range(graph.n)]
    finally:
        laid.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(), seed=st.integers(0, 1000))
def test_random_graphs_fix_up_as_the_model_does(kernel, graph, seed):
    check_fixup(kernel, graph, seed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(), seed=st.integers(0, 1000))
def test_random_graphs_fix_up_onto_untouched_pages(kernel, graph, seed):
    check_fixup(kernel, graph, seed, write_none_slots=False)


def test_fixup_leaves_immediates_as_they_were(kernel):
    graph = Graph(nbytes=[8, 8], targets=[[Imm(-3), 1, Imm((1 << 62) - 1)], [Imm(7), None]], roots=[0])
    check_fixup(kernel, graph, seed=1)
    check_fixup(kernel, graph, seed=1, write_none_slots=False)


def test_fixup_of_a_long_chain(kernel):
    check_fixup(kernel, chain(20_000), seed=3)


def test_fixup_after_fork_writes_the_parents_copy(kernel):
    """The pages are shared with a forked child: the fixup's writes break
    copy-on-write like any user-mode store (the page gets a new frame) and the
    parent reads the new values."""
    graph = Graph(nbytes=[8, 8, 8], targets=[[1, 2], [0], [None]], roots=[0])
    laid = lay_out(kernel, graph)
    child = kernel.fork()
    try:
        page = int(laid.starts[0]) & ~(kernel.page_size - 1)
        before = kernel.page_info(page).frame
        m = marked(laid)
        rows = np.flatnonzero(m.live)
        new_by_row = core.new_addresses(graph.n, rows, laid.starts[rows] + 4096)
        core.fixup(kernel, DEFAULT_MODEL, rows, laid.starts[rows], laid.nrefs, laid.slot_base, m.slot_target,
                   new_by_row)
        assert kernel.page_info(page).frame != before
        s = laid.starts
        assert slots_now(laid, rows) == {0: [s[1] + 4096, s[2] + 4096], 1: [s[0] + 4096], 2: [0]}
    finally:
        child.exit()
        laid.close()


def test_forward_maps_roots_and_keeps_zero(kernel):
    graph = Graph(nbytes=[8, 8, 8], targets=[[], [], []], roots=[0, 2])
    laid = lay_out(kernel, graph)
    try:
        new_by_row = np.array([100, 0, 300], dtype=np.int64)
        addrs = np.array([laid.starts[2], 0, laid.starts[0], laid.starts[2]], dtype=np.int64)
        assert core.forward(laid.index, laid.starts, new_by_row, addrs).tolist() == [300, 0, 100, 300]
        assert core.forward(laid.index, laid.starts, new_by_row, np.zeros(0, dtype=np.int64)).size == 0
    finally:
        laid.close()


@pytest.mark.parametrize("offset", [8, -16, 1 << 40], ids=["inside an object", "below the heap", "outside"])
def test_forward_names_a_root_as_the_index_does(kernel, offset):
    laid = lay_out(kernel, Graph(nbytes=[8], targets=[[]], roots=[0]))
    try:
        bad = np.array([laid.starts[0], laid.starts[0] + offset], dtype=np.int64)
        with pytest.raises(HeapCorrupted) as ours:
            core.forward(laid.index, laid.starts, np.zeros(1, dtype=np.int64), bad)
        with pytest.raises(HeapCorrupted) as theirs:
            laid.index.rows(laid.starts, bad, "root")
        assert str(ours.value) == str(theirs.value)
    finally:
        laid.close()


def test_new_addresses_reuses_the_table_it_is_given():
    table = np.full(10, 7, dtype=np.int64)
    out = core.new_addresses(4, np.array([3, 1]), np.array([30, 10]), out=table)
    assert out.tolist() == [0, 10, 0, 30]
    assert np.shares_memory(out, table)
