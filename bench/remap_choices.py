"""Two choices of the stop-the-world remap compactor, each measured against
the other (and against the copying compactor) in one process, on the
large-object workload of bench.compaction (512 MiB of 64 KiB - 4 MiB objects,
every page written, a random half dead, first collection of the heap):

* THP, sparse huge units of large objects: copied out (``sparse_keep`` 0,
  the plan before) or moved whole by PMD within the memory budget (the
  default ``heap.plan.SPARSE_KEEP``), with the dead bytes kept.
* the flip order: register the arena then mremap (``register-first``), or
  mremap then register (``mremap-first``), on 4 KiB pages and with THP.

    nice -n 10 python -m bench.remap_choices [--total MiB] [--reps N] [--kernel linux|sim]

Each row is the shortest pause of ``--reps`` fresh heaps, the variants
interleaved so that a burst of load elsewhere hits all of them. Prints a
table and writes bench/results/remap_choices.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from bench.compaction import build_large
from heap import Heap

MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "remap_choices.json"

# (label, compactor, thp, sparse_keep (None: the default), register_first)
VARIANTS = [
    ("4k copy", "copy", False, None, True),
    ("4k remap register-first", "remap", False, None, True),
    ("4k remap mremap-first", "remap", False, None, False),
    ("thp copy", "copy", True, None, True),
    ("thp remap copy-out (sparse_keep 0)", "remap", True, 0.0, True),
    ("thp remap keep-whole register-first", "remap", True, None, True),
    ("thp remap keep-whole mremap-first", "remap", True, None, False),
]


def run(kernel: str, total: int, compactor: str, thp: bool, keep: float | None, register_first: bool,
        seed: int) -> dict:
    rng = np.random.default_rng(seed)
    with Heap(kernel=kernel, size=2 * total + 64 * MiB, compactor=compactor, thp=thp) as heap:
        pause = heap._pause  # the knobs under test are the pause's, not public options
        if keep is not None:
            pause.sparse_keep = keep
        pause.stw_register_first = register_first
        keep_refs, _ = build_large(heap, total, rng)
        stats = heap.collect()
        heap.verify()
        del keep_refs
        return dict(pause_ns=stats.pause_ns, phases=dict(heap.last_phase_ns), bytes_copied=stats.bytes_copied,
                    kept_dead_bytes=stats.kept_dead_bytes, live_bytes=stats.live_bytes, rss_after=stats.rss_after,
                    bytes_moved_zero_copy=stats.bytes_moved_zero_copy)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="linux")
    ap.add_argument("--total", type=int, default=512, help="MiB of objects (default 512)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    best: dict[str, dict] = {}
    for _ in range(args.reps):
        for label, compactor, thp, keep, reg in VARIANTS:
            r = run(args.kernel, args.total * MiB, compactor, thp, keep, reg, args.seed)
            if label not in best or r["pause_ns"] < best[label]["pause_ns"]:
                best[label] = r
    print(f"{'variant':38} {'pause ms':>9} {'x copy':>7} {'copied MiB':>10} {'kept MiB':>8} {'RSS MiB':>8}  phases (ms)")
    for label, compactor, thp, _, _ in VARIANTS:
        r = best[label]
        copy = best["thp copy" if thp else "4k copy"]
        r["speedup_vs_copy"] = copy["pause_ns"] / r["pause_ns"]
        phases = " ".join(f"{k} {v / 1e6:.2f}" for k, v in r["phases"].items() if k != "release")
        print(f"{label:38} {r['pause_ns'] / 1e6:9.2f} {r['speedup_vs_copy']:7.1f} {r['bytes_copied'] / MiB:10.1f} "
              f"{r['kept_dead_bytes'] / MiB:8.1f} {r['rss_after'] / MiB:8.0f}  {phases}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(dict(kernel=args.kernel, args=vars(args), rows=best,
                                       when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), indent=2) + "\n")
    print(f"saved {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
