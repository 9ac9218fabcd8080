"""The dense prefix (issue 12, "leave what need not move"): concurrent and
stop-the-world cycles over a heap whose old objects survive and whose young
ones churn at the top, with the prefix kept (the default) and not
(``Pause.keep_prefix = False``: every live page flipped and moved back).

Workload: a 256 MiB heap; ~150 MiB of 4-16 KiB objects allocated first and
kept (the old part); then each cycle allocates 2,000 objects of 4-16 KiB
(~20 MiB), drops every other one, and collects. The two settings alternate
in the same process (``--rounds`` each), fresh heaps each time; a figure is
the median over a round's cycles, the best round kept (the machine is
shared: other processes' bursts only ever add time).

    python -m bench.dense_prefix [--kernel linux|sim] [--cycles N] [--rounds N]

Prints a table and writes bench/results/dense_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from heap import Heap

MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "dense_prefix.json"
FIELDS = ("pages_kept_in_place", "pages_moved", "pause_ns", "install_ns", "total_ns")


def run(kernel: str, keep: bool, concurrent: bool, cycles: int, seed: int = 3) -> dict:
    """One fresh heap: the median of each field over ``cycles`` collections."""
    rnd = random.Random(seed)
    with Heap(kernel=kernel, size=256 * MiB, compactor="remap") as heap:
        heap._pause.keep_prefix = keep
        old = []
        while len(old) * 10 * 1024 < 150 * MiB:
            ref = heap.alloc(rnd.randrange(4096, 16384), 1)
            ref.write(b"old" * 21)
            old.append(ref)
        heap.collect()
        rows = []
        for _ in range(cycles):
            young = [heap.alloc(rnd.randrange(4096, 16384), 1) for _ in range(2000)]
            del young[::2]
            st = heap.collect(concurrent=concurrent)
            rows.append({f: getattr(st, f, 0) for f in FIELDS})
        heap.verify()
    return {f: statistics.median(r[f] for r in rows) for f in FIELDS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="linux")
    ap.add_argument("--cycles", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results = []
    for concurrent in (True, False):
        best: dict[bool, dict] = {}
        for _ in range(args.rounds):
            for keep in (False, True):
                r = run(args.kernel, keep, concurrent, args.cycles)
                if keep not in best or r["total_ns"] < best[keep]["total_ns"]:
                    best[keep] = r
        for keep in (False, True):
            results.append(dict(concurrent=concurrent, keep_prefix=keep, **best[keep]))
    table = Table(title=f"dense prefix on {args.kernel}: old part kept, young churn (medians per cycle, best round)")
    for col in ("cycle", "keep prefix", "kept pages", "moved pages", "pause ms", "install ms", "total ms",
                "total: off / on"):
        table.add_column(col, justify="right")
    for i in range(0, len(results), 2):
        off, on = results[i], results[i + 1]
        for r in (off, on):
            table.add_row("concurrent" if r["concurrent"] else "stop-the-world", str(r["keep_prefix"]),
                          f"{r['pages_kept_in_place']:.0f}", f"{r['pages_moved']:.0f}", f"{r['pause_ns'] / 1e6:.2f}",
                          f"{r['install_ns'] / 1e6:.2f}" if r["concurrent"] else "-", f"{r['total_ns'] / 1e6:.2f}",
                          f"{off['total_ns'] / on['total_ns']:.2f}x" if r is on else "")
    Console().print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(dict(host=platform.node(), cpus=os.cpu_count(), kernel=args.kernel,
                                       when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       load=os.getloadavg()[0], cycles=args.cycles, rounds=args.rounds,
                                       results=results), indent=1))
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
