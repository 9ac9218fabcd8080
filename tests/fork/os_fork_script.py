"""Run by test_fork_during_collection.py in a subprocess: os.fork() while a concurrent cycle is in flight.

    python -m tests.fork.os_fork_script <sim|linux> <rule|no-rule>

The parent builds a heap (payloads and a chain of references), leaves a
concurrent cycle half done (no compactor thread: pages are installed only on
faults), and forks. The child checks the heap (verify, every object, a
collection of each kind), the parent does the same after the child exits.
Prints one JSON line: what each side saw.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import structlog

from heap import Heap, forksafety
from heap.concurrent import begin_concurrent
from heap.kernel import open_kernel

N = 300


def build(h):
    refs = [h.alloc(20 + (i * 37) % 5000, 1) for i in range(N)]
    for i, r in enumerate(refs):
        r.write(payload(i, r.nbytes))
        if i:
            r.set_ref(0, refs[i - 1])
    for i in range(N):  # garbage between them: pages to rebuild
        h.alloc(100)
    return refs[-1]


def payload(i: int, n: int) -> bytes:
    return (i.to_bytes(4, "little") * (n // 4 + 1))[:n]


def check(h, head) -> dict:
    """Walk the chain: how many objects are whole; verify()'s verdict; a collection of each kind."""
    out = {"pid": os.getpid()}
    try:
        h.verify()
        out["verify"] = "ok"
    except Exception as exc:
        out["verify"] = f"{type(exc).__name__}: {exc}"[:200]
    whole, node, i = 0, head, N - 1
    try:
        while node is not None and i >= 0:
            whole += node.read(node.nbytes) == payload(i, node.nbytes)
            node, i = node.get_ref(0), i - 1
    except Exception as exc:
        out["walk_error"] = f"{type(exc).__name__}: {exc}"[:200]
    out["whole"] = whole
    if out["verify"] == "ok" and whole == N:
        try:
            h.collect()
            h.collect(concurrent=True)
            h.verify()
            node, i, again = head, N - 1, 0
            while node is not None:
                again += node.read(node.nbytes) == payload(i, node.nbytes)
                node, i = node.get_ref(0), i - 1
            out["after_collections"] = again
        except Exception as exc:
            out["collect_error"] = f"{type(exc).__name__}: {exc}"[:200]
    out["compactor"] = h.compactor
    return out


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    backend, rule = sys.argv[1], sys.argv[2]
    forksafety.set_enabled(rule == "rule")
    h = Heap(kernel=open_kernel(backend), size=16 << 20, compactor="remap")
    head = build(h)
    cycle, _, _ = begin_concurrent(h, run_compactor=False)
    in_flight = h._cycle is cycle and not cycle.states.all_installed()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.alarm(20)  # a child stuck on a page nobody will install dies instead of hanging
        res = check(h, head)
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    _, status = os.waitpid(pid, 0)
    child = json.loads(data) if data else {"died": os.waitstatus_to_exitcode(status)}
    parent = check(h, head)
    print(json.dumps({"in_flight_before_fork": in_flight, "child": child, "parent": parent}))
    h.close()


if __name__ == "__main__":
    main()
