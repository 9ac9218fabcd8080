"""Run by test_signals.py in a subprocess: collect() over and over on a big
heap until the parent's SIGINT/SIGTERM arrives, then check the heap.

    python -m tests.reliability.signal_script <sim|linux> <INT|TERM> <stw|concurrent> [no-defer]

Prints "ready" once the heap is built (the parent then sends the signal),
and at the end one JSON line: where the exception came out, whether it was
held until the collection ended, and what verify() and the checks say.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import traceback

import numpy as np
import structlog

from heap import Heap, signals

CHECKED = 2000
BULK = 200_000


class Terminated(Exception):
    """What this program's SIGTERM handler raises."""


def on_term(signum, frame):
    raise Terminated(f"signal {signum}")


def payload(i: int) -> bytes:
    return i.to_bytes(4, "little") * 16


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    backend, sig, mode = sys.argv[1:4]
    if len(sys.argv) > 4 and sys.argv[4] == "no-defer":
        signals.set_enabled(False)
    signal.signal(signal.SIGTERM, on_term)
    h = Heap(kernel=backend, size=256 << 20, compactor="remap")
    bulk = h.alloc_many(np.full(BULK, 48), 1)  # a big heap: marking and moving take a while
    n = len(bulk)
    bulk.set_refs(0, np.arange(n), bulk, (np.arange(n) * 7919) % n)  # slots to fix all over the heap
    checked = [h.alloc(64, 1) for _ in range(CHECKED)]
    for i, r in enumerate(checked):
        r.write(payload(i))
        r.set_ref(0, checked[i - 1] if i else None)
    h.alloc_many(np.full(BULK // 2, 48), 0)  # garbage between: the first collection evacuates
    print("ready", flush=True)
    out = {"collections_before": h.collections}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 30:
            h.collect(concurrent=mode == "concurrent")  # each one flips, fixes and installs the whole heap
        out["outcome"] = "no signal arrived"
    except (KeyboardInterrupt, Terminated) as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        out["outcome"] = type(exc).__name__
        out["raised_from"] = [f.name for f in tb if f.filename.endswith("runtime.py")][:1]
        out["held_until_the_end"] = any(f.filename.endswith("signals.py") for f in tb)
        out["frames"] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.name}" for f in tb][-6:]
    out["collections"] = h.collections - out["collections_before"]
    out["bulk_links_whole"] = bool((np.asarray([bulk[i].get_ref(0).address for i in (0, 1, n // 2, n - 1)])
                                    == bulk.addresses[(np.array([0, 1, n // 2, n - 1]) * 7919) % n]).all())
    try:
        h.verify()
        out["verify"] = "ok"
    except Exception as exc:
        out["verify"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        node, i, whole = checked[-1], CHECKED - 1, 0
        while node is not None:
            whole += node.read(64) == payload(i)
            node, i = node.get_ref(0), i - 1
        out["whole"] = whole
        h.collect()
        h.verify()
        out["usable_after"] = True
    except Exception as exc:
        out["check_error"] = f"{type(exc).__name__}: {exc}"[:300]
    print(json.dumps(out), flush=True)
    h.close()


if __name__ == "__main__":
    main()
