"""heap.core.verify_objects: verify's per-object checks (headers, then
reference targets), with the messages heap.verify gives, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heap import core
from heap.errors import HeapCorrupted
from heap.mark import rows_of
from heap.objects import DEFAULT_MODEL

from .graphs import lay_out
from .strategies import graphs

pytestmark = pytest.mark.skipif(not core.COMPILED, reason="heap._core not built")


def numpy_checks(laid) -> None:
    """The same two checks as heap/verify.py, in numpy (immediates accepted,
    docs/embedding.md section 5)."""
    k, starts, ps = laid.kernel, laid.starts, laid.kernel.page_size
    if not starts.size:
        return
    where = (starts[:, None] + 8 * np.arange(2)[None, :]).ravel()
    words = k.load_words(where.astype(np.uint64)).reshape(-1, 2)
    expect = DEFAULT_MODEL.header_words(laid.nbytes, laid.nrefs, laid.totals >= ps).astype(np.uint64)
    wrong = (words != expect).any(axis=1)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise HeapCorrupted("headers", f"object {i} at 0x{int(starts[i]):x} has header "
                            f"{[hex(int(w)) for w in words[i]]}, expected {[hex(int(w)) for w in expect[i]]}")
    values = k.load_words(laid.slot_addresses().astype(np.uint64)).view(np.int64)
    refs = (values != 0) & (values & 1 == 0)  # an immediate (low bit set) is no reference
    rows_of(starts, values[refs], "reference targets")


def ours(laid) -> None:
    core.verify_objects(laid.kernel, DEFAULT_MODEL, laid.index, laid.starts, laid.nbytes, laid.nrefs, laid.totals,
                        laid.kernel.page_size)


def outcome(check, laid) -> str | None:
    try:
        check(laid)
    except HeapCorrupted as exc:
        return str(exc)
    return None


CORRUPTIONS = {
    "nbytes": lambda laid, i: (int(laid.starts[i]), 12345),
    "magic": lambda laid, i: (int(laid.starts[i]) + 8, int(laid.nrefs[i])),
    "slot into an object": lambda laid, i: (int(laid.starts[i]) + 16, int(laid.starts[i]) + 8),
    "slot past the heap": lambda laid, i: (int(laid.starts[i]) + 16, laid.base + laid.size + 4096),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(max_objects=20), corrupt=st.sampled_from([None, *CORRUPTIONS]), pick=st.integers(0, 10 ** 6))
def test_verify_finds_what_numpy_finds_first(kernel, graph, corrupt, pick):
    laid = lay_out(kernel, graph)
    try:
        if corrupt is not None and graph.n:
            i = pick % graph.n
            if corrupt.startswith("slot") and laid.nrefs[i] == 0:
                corrupt = "nbytes"
            addr, value = CORRUPTIONS[corrupt](laid, i)
            kernel.store_words(np.array([addr], dtype=np.uint64), np.array([value], dtype=np.uint64))
        expected = outcome(numpy_checks, laid)
        assert outcome(ours, laid) == expected
        assert (expected is None) == (corrupt is None or not graph.n)
    finally:
        laid.close()
