"""fork while the heap is in use.

* A fork the heap cannot see (``kernel.fork()``: a C-level fork, the child
  sleeping) during a collection, stop-the-world or concurrent: the pages are
  now shared, UFFDIO_MOVE answers EBUSY, the install copies those pages, and
  the parent's collection completes with nothing lost.
* ``os.fork()`` in the middle of a concurrent cycle: heap.forksafety's
  at-fork hook finishes the cycle first, so the child gets a whole heap and a
  userfaultfd of its own, and both sides collect afterwards. Without the hook
  (Linux) the child sees an arena with holes and a descriptor that is the
  parent's -- what the rule prevents.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading

import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent

N = 200


def payload(i: int, n: int) -> bytes:
    return (i.to_bytes(4, "little") * (n // 4 + 1))[:n]


def build(h, rng):
    refs = [h.alloc(rng.choice((64, 900, 6000, 20000, 200_000)), 1) for _ in range(N)]
    for i, r in enumerate(refs):
        r.write(payload(i, r.nbytes))
        if i:
            r.set_ref(0, refs[i - 1])
        h.alloc(rng.randrange(16, 300))  # garbage: pages to rebuild
    return refs[-1], refs[::5]


def walk(head) -> int:
    whole, node, i = 0, head, N - 1
    while node is not None:
        assert node.read(node.nbytes) == payload(i, node.nbytes), f"object {i} changed"
        whole += 1
        node, i = node.get_ref(0), i - 1
    return whole


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["stw", "concurrent-faults", "concurrent-compactor"])
def test_a_fork_during_a_collection_costs_copies_not_objects(kernel_name, mode):
    rng = random.Random(mode)
    with Heap(kernel=kernel_name, size=32 << 20, compactor="remap") as h:
        head, some = build(h, rng)
        if mode == "stw":
            child = h.kernel.fork()
            try:
                stats = h.collect()
            finally:
                child.exit()
        else:
            compactor = mode == "concurrent-compactor"
            # the compactor thread may install everything before a fork made
            # after the pause could share a page: fork first then, so the
            # thread surely meets shared pages; without it, fork mid-cycle
            child = h.kernel.fork() if compactor else None
            cycle, stats, _ = begin_concurrent(h, run_compactor=compactor)
            child = child or h.kernel.fork()  # every from-space page is shared with the child now
            try:
                t = threading.Thread(target=lambda: [r.read(8) for r in some], daemon=True)
                t.start()  # a mutator faulting on pages not yet installed
                t.join(30)
                assert not t.is_alive(), "a mutator stayed blocked in a fault"
                cycle.wait_compactor(30)
                end_concurrent(h, cycle)
            finally:
                child.exit()
        assert stats.ebusy_fallbacks > 0, "no page was shared with the child: the fork came too late"
        assert stats.bytes_copied >= stats.ebusy_fallbacks * h.kernel.page_size  # each refused page is copied
        assert stats.live_objects == N  # the chain from `head` holds every object; the garbage went
        h.verify()
        assert walk(head) == N
        h.collect(concurrent=mode != "stw")  # exclusive again: moves, no copies
        assert walk(head) == N


def run_fork_script(backend: str, rule: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.fork.os_fork_script", backend, rule],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_os_fork_mid_cycle_waits_for_the_cycle_and_both_sides_keep_a_whole_heap(kernel_name):
    res = run_fork_script(kernel_name, "rule")
    assert res["in_flight_before_fork"]
    for side in ("child", "parent"):
        got = res[side]
        assert got["verify"] == "ok", (side, got)
        assert got["whole"] == got["after_collections"] == 300, (side, got)
        assert got["compactor"] == "remap"  # the child collects with its own userfaultfd
    assert res["child"]["pid"] != res["parent"]["pid"]


@pytest.mark.timeout(120)
def test_without_the_rule_a_child_forked_mid_cycle_gets_a_broken_heap(linux_kernel):
    """What the at-fork hook prevents: the child inherits the arena without
    its registration, so the pages not yet installed are holes, and its
    userfaultfd belongs to the parent (its MOVEs fail). The parent is unharmed."""
    res = run_fork_script("linux", "no-rule")
    assert res["in_flight_before_fork"]
    child = res["child"]
    assert child["verify"] != "ok" or child["whole"] < 300, child
    assert "after_collections" not in child
    assert res["parent"]["verify"] == "ok" and res["parent"]["whole"] == 300
