"""What one heap operation costs a runtime author, against a dict lookup
measured in the same run (issue 14's targets, Linux backend: alloc <= 3 us,
Ref.read/write/set_ref <= 1.5 us, get_ref <= 2 us).

    python -m bench.embedding_costs [--kernel linux|sim|auto] [--n N] [--repeat R] [--chunk C] [--json PATH]

An A/B of two trees in one sitting: this file run against the other tree's
``heap`` (``PYTHONPATH=OTHER python bench/embedding_costs.py --json /tmp/other.json``),
alternated with a run of this tree.

Each operation runs N times in a plain loop, as a call from Python code
(the loop and the call are part of every figure, ~40 ns, the dict lookup's
included: subtracting them left the lookup itself below the noise); the
figure is the best of R rounds (the machine is shared: other processes only
ever add time). Prints a table (ns per
operation, and as a multiple of one dict lookup) and writes
bench/results/embedding_costs.json.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from heap import Heap

RESULTS = Path(__file__).resolve().parent / "results" / "embedding_costs.json"
TARGETS_NS = {"alloc": 3000, "read": 1500, "write": 1500, "set_ref": 1500, "get_ref": 2000}


def _per_op_ns(body, n: int, repeat: int, chunk: int = 0) -> float:
    """Best-of-``repeat`` nanoseconds per call of ``body(i)`` over ``n`` calls (the loop included).
    ``chunk``: each round timed in pieces of that many calls, the best piece counting (on a loaded
    machine a round of milliseconds is rarely left alone by the scheduler; a short piece often is)."""
    best = float("inf")
    chunk = chunk if 0 < chunk < n else n
    for _ in range(repeat):
        gc.disable()
        try:
            for first in range(0, n - chunk + 1, chunk):
                t0 = time.perf_counter_ns()
                for i in range(first, first + chunk):
                    body(i)
                best = min(best, (time.perf_counter_ns() - t0) / chunk)
        finally:
            gc.enable()
    return best


def measure(kernel: str, n: int, repeat: int, chunk: int = 0) -> dict[str, float]:
    out: dict[str, float] = {}
    table = {i: i * 3 for i in range(1024)}
    per_op_ns = functools.partial(_per_op_ns, chunk=chunk)
    out["dict lookup (baseline)"] = per_op_ns(lambda i: table[i & 1023], n, repeat)
    # room for every allocation of every round without a collection in the measurement
    with Heap(kernel=kernel, size=max(64 << 20, 64 * n * (repeat + 2)), collect_every=None) as h:
        a = h.alloc(64, 2)
        b = h.alloc(64)
        a.set_ref(0, b)
        payload = b"12345678"
        keep = []

        def alloc(i):
            keep.append(h.alloc(16, 1))

        out["alloc"] = per_op_ns(alloc, n, repeat)
        keep.clear()
        if hasattr(h, "alloc_raw"):
            out["alloc_raw (no Ref)"] = per_op_ns(lambda i: h.alloc_raw(16, 1), n, repeat)
        out["read"] = per_op_ns(lambda i: a.read(8, 0), n, repeat)
        out["write"] = per_op_ns(lambda i: a.write(payload, 0), n, repeat)
        out["set_ref"] = per_op_ns(lambda i: a.set_ref(1, b), n, repeat)
        out["get_ref"] = per_op_ns(lambda i: a.get_ref(0), n, repeat)
        if hasattr(a, "get_immediate"):
            a.set_immediate(1, 7)
            out["get_immediate"] = per_op_ns(lambda i: a.get_immediate(1), n, repeat)
            out["set_immediate"] = per_op_ns(lambda i: a.set_immediate(1, i), n, repeat)
        w = h.weakref(b)
        out["WeakRef.get"] = per_op_ns(lambda i: w.get(), n, repeat)
        h.identity_hash(b)
        out["identity_hash"] = per_op_ns(lambda i: h.identity_hash(b), n, repeat)
        if getattr(type(a), "__hash__", None) is not None:
            out["hash(Ref)"] = per_op_ns(lambda i: hash(a), n, repeat)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="linux")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--chunk", type=int, default=0, help="time each round in pieces of this many calls, "
                   "the best piece counting (0: whole rounds)")
    p.add_argument("--json", type=Path, default=RESULTS, help="where the results go")
    args = p.parse_args(argv)
    res = measure(args.kernel, args.n, args.repeat, args.chunk)
    base = res["dict lookup (baseline)"]
    t = Table(title=f"one operation, {args.kernel} backend (best of {args.repeat} x {args.n})")
    for col in ("operation", "ns", "x dict lookup", "target ns", "met"):
        t.add_column(col, justify="left" if col == "operation" else "right")
    for name, ns in res.items():
        target = TARGETS_NS.get(name)
        t.add_row(name, f"{ns:,.0f}", f"{ns / base:,.1f}" if base else "-", f"{target:,}" if target else "",
                  ("yes" if ns <= target else "no") if target else "")
    Console().print(t)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # the machine's load when the run ended: the figures of a run on a shared machine mean little without it
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.json.write_text(json.dumps({"kernel": args.kernel, "n": args.n, "repeat": args.repeat,
                                     "chunk": args.chunk, "ns": res,
                                     "load_average_1_5_15": load, "cpus": os.cpu_count(),
                                     "targets_ns": TARGETS_NS,
                                     "ratio_to_dict_lookup": {k: v / base for k, v in res.items()} if base else {}},
                                    indent=2) + "\n")


if __name__ == "__main__":
    main()
