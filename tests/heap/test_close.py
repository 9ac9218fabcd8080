"""close() and a thread still inside an access: the memory it may touch is
left mapped (and the leak logged), so that thread finishes instead of taking
the process down; with nothing in flight, close() unmaps everything."""

from __future__ import annotations

import pytest

from heap import Heap
from heap.access import AccessGate
from tests.backends import make_kernel
from tests.heap.logs import capture_events


@pytest.mark.parametrize("in_flight", [False, True], ids=["drained", "access-still-in-flight"])
def test_close_unmaps_only_when_no_access_is_left_inside(kernel_name, monkeypatch, in_flight):
    k = make_kernel(kernel_name)
    try:
        h = Heap(kernel=k, size=4 << 20)
        ref = h.alloc(64)
        ref.write(b"still here")
        base = h.base
        if in_flight:  # the gate times out as it would around an access stuck in an unserved fault
            monkeypatch.setattr(AccessGate, "drain", lambda self, timeout=None: False)
        with capture_events() as events:
            h.close()
        left_mapped = [e for e in events if e["event"] == "close_left_memory_mapped"]
        if in_flight:
            assert left_mapped and "in flight" in left_mapped[0]["reason"]
            assert len(k.load(base, 8)) == 8  # still mapped: a late access reads instead of crashing
        else:
            assert not left_mapped
            with pytest.raises(OSError):
                k.load(base, 8)
    finally:
        k.close()
