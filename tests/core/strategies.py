"""Hypothesis strategies for random object graphs (tests.core.graphs.Graph):
slots hold None, references, and (``immediates=True``) immediates."""

from __future__ import annotations

from hypothesis import strategies as st

from .graphs import Graph, Imm

# mostly small objects, some spanning pages (large payloads, or so many slots
# that the slots themselves cross a page boundary)
_nbytes = st.one_of(st.integers(0, 200), st.integers(4000, 9000))
_nslots = st.one_of(st.integers(0, 4), st.integers(0, 4), st.integers(500, 700))


@st.composite
def graphs(draw, max_objects: int = 40, immediates: bool = True) -> Graph:
    n = draw(st.integers(0, max_objects))
    nbytes = [draw(_nbytes) for _ in range(n)]
    row = st.integers(0, n - 1) if n else st.none()
    target = st.one_of(st.none(), row)
    slot = st.one_of(st.none(), row, row, st.builds(Imm, st.integers(-(1 << 62), (1 << 62) - 1))) \
        if immediates else target
    targets = []
    for _ in range(n):
        k = draw(_nslots)
        if k > 4:  # a long slot array: one target repeated keeps the example small
            targets.append([draw(slot)] * k)
        else:
            targets.append([draw(slot) for _ in range(k)])
    roots = draw(st.lists(target, max_size=8))  # duplicates and None included
    return Graph(nbytes=nbytes, targets=targets, roots=roots)
