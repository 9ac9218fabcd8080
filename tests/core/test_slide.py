"""heap.core.slide (the compactors' slide and fixup in one pass) against the
two steps it replaces -- ``kernel.copy_ranges`` of the objects that move,
then ``heap.core.fixup`` -- and against the Python model, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from heap import core
from heap.alloc import pack
from heap.mark import Workspace
from heap.objects import DEFAULT_MODEL

from .graphs import Graph, Imm, chain, lay_out, reference_forward, reference_mark
from .strategies import graphs

pytestmark = pytest.mark.skipif(not core.COMPILED, reason="heap._core not built")


def packed_down(laid, live: np.ndarray):
    """The copying compactor's plan: the live rows in address order, packed from the base."""
    rows = np.flatnonzero(live)
    offsets, _ = pack(laid.totals[rows], laid.kernel.page_size, 0)
    return rows, laid.base + offsets


def objects_bytes(laid, new_starts, rows) -> list[bytes]:
    return [laid.kernel.load(int(a), int(laid.totals[r])) for a, r in zip(new_starts, rows)]


def check_slide(kernel, graph: Graph, threads=None, **layout) -> None:
    """The same graph laid out twice: one copy slid by the two old steps, one by
    core.slide; every live object's bytes must come out the same, its slots
    as the model says, and the bytes moved as counted."""
    two_steps, fused = lay_out(kernel, graph, **layout), lay_out(kernel, graph, **layout)
    try:
        results = []
        for laid in (two_steps, fused):
            m = core.mark(kernel, DEFAULT_MODEL, laid.index, Workspace(), laid.starts, laid.nrefs, laid.slot_base,
                          laid.roots, laid.totals)
            rows, new_starts = packed_down(laid, m.live)
            new_by_row = core.new_addresses(graph.n, rows, new_starts)
            srcs = laid.starts[rows]
            moving = srcs != new_starts
            if laid is two_steps:
                kernel.copy_ranges(new_starts[moving].astype(np.uint64), srcs[moving].astype(np.uint64),
                                   laid.totals[rows][moving].astype(np.uint64))
                slots = core.fixup(kernel, DEFAULT_MODEL, rows, new_starts, laid.nrefs, laid.slot_base,
                                   m.slot_target, new_by_row)
                moved = int(laid.totals[rows][moving].sum())
            else:
                moved, slots = core.slide(kernel, DEFAULT_MODEL, rows, laid.starts, new_starts, laid.totals,
                                          laid.nrefs, laid.slot_base, m.slot_target, new_by_row, threads=threads)
            live, _ = reference_mark(graph)
            new_address = {int(r): int(a) for r, a in zip(rows, new_starts)}
            after = kernel.load_words(laid.slot_addresses(rows, new_starts).astype(np.uint64)).view(np.int64)
            forwarded = reference_forward(graph, live, new_address)
            flat = [v for r in rows.tolist() for v in forwarded[r]]
            # slots relative to each layout's own base (the two copies lie at different addresses)
            expect = [v - laid.base if v and not v & 1 else v for v in flat]
            got = [v - laid.base if v and not v & 1 else v for v in after.tolist()]
            assert got == expect
            assert slots == int(laid.nrefs[rows].sum())
            results.append((moved, [b for b in objects_bytes(laid, new_starts, rows)], rows.tolist()))
        (moved_a, _, rows_a), (moved_b, _, rows_b) = results
        assert moved_a == moved_b and rows_a == rows_b
        # payloads and headers identical (slots differ by the two bases: compared above)
        heads = [(b[:16], b[16 + 8 * int(two_steps.nrefs[r]):]) for b, r in zip(results[0][1], rows_a)]
        assert heads == [(b[:16], b[16 + 8 * int(fused.nrefs[r]):]) for b, r in zip(results[1][1], rows_b)]
    finally:
        two_steps.close()
        fused.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs())
def test_random_graphs_slide_as_copy_then_fixup(kernel, graph):
    check_slide(kernel, graph)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(max_objects=120))
def test_random_graphs_slide_with_the_fixup_on_its_own_thread(kernel, graph):
    """The fixup following the moves on a second thread (direct memory; the simulator's frames: one pass)."""
    check_slide(kernel, graph, threads=2)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs())
def test_random_graphs_slide_over_untouched_pages(kernel, graph):
    check_slide(kernel, graph, write_none_slots=False)


NAMED = {
    "empty heap": Graph(nbytes=[], targets=[], roots=[]),
    "nothing dead: nothing moves, slots rewritten": Graph(nbytes=[8, 8, 8], targets=[[1, 2], [0], [None]],
                                                          roots=[0]),
    "the dead first: everything moves": Graph(nbytes=[100, 8, 8], targets=[[], [2], [1]], roots=[1]),
    "objects spanning pages move": Graph(nbytes=[50, 9000, 8, 12000], targets=[[], [3], [], [1, Imm(5)]],
                                         roots=[1]),
    "immediates stay": Graph(nbytes=[8, 8, 8], targets=[[], [Imm(-1), 2], [Imm(3), 1]], roots=[1]),
}


@pytest.mark.parametrize("graph", NAMED.values(), ids=NAMED.keys())
def test_named_slides(kernel, graph):
    check_slide(kernel, graph)
    check_slide(kernel, graph, write_none_slots=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_slide_of_a_long_chain_whose_head_is_dead(kernel, threads):
    graph = chain(20_000)
    graph.roots = [1]
    check_slide(kernel, graph, threads=threads)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(immediates=False))
def test_objects_lying_elsewhere_slide_from_there(kernel, graph):
    """``src_offset``: the objects lie at another mapping (the remap
    compactor's from-space) than their side-table addresses; they slide and
    are fixed up there, and the mapping they are described by is left alone."""
    laid = lay_out(kernel, graph)
    size = laid.size
    elsewhere = kernel.mmap(size)
    try:
        kernel.memmove(elsewhere, laid.base, size)
        before = kernel.load(laid.base, size)
        m = core.mark(kernel, DEFAULT_MODEL, laid.index, Workspace(), laid.starts, laid.nrefs, laid.slot_base,
                      laid.roots, laid.totals)
        rows, new_starts = packed_down(laid, m.live)
        new_by_row = core.new_addresses(graph.n, rows, new_starts)
        there = new_starts - laid.base + elsewhere
        moved, _ = core.slide(kernel, DEFAULT_MODEL, rows, laid.starts, there, laid.totals, laid.nrefs,
                              laid.slot_base, m.slot_target, new_by_row, src_offset=elsewhere - laid.base)
        assert kernel.load(laid.base, size) == before
        assert moved == int(laid.totals[rows][laid.starts[rows] != new_starts].sum())
        live, _ = reference_mark(graph)
        forwarded = reference_forward(graph, live, {int(r): int(a) for r, a in zip(rows, new_starts)})
        got = kernel.load_words(DEFAULT_MODEL.slot_addresses(there, laid.nrefs[rows]).astype(np.uint64))
        assert got.view(np.int64).tolist() == [v for r in rows.tolist() for v in forwarded[r]]
        for r, a in zip(rows.tolist(), there.tolist()):  # headers and payloads carried along
            head = kernel.load(a, 16)
            assert head == before[int(laid.starts[r]) - laid.base:][:16]
    finally:
        kernel.munmap(elsewhere, size)
        laid.close()
