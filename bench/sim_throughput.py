"""How fast and how lean the simulated kernel is, measured against the real one.

* Large moves: simulated 4 KiB page moves per second when a contiguous run is
  moved with few UFFDIO_MOVE calls (one call for the whole range, one per
  2 MiB, one per 64 KiB), on 4 KiB pages and on THPs (whole-PMD moves),
  with the same moves on the Linux backend in the same process as the
  reference (ratio sim/linux of the time taken).
* The vectorised accessors the heap calls in hot loops (load_words,
  store_words, copy_ranges, move_ranges), timed on both backends.
* Whole heap collections (bench.compaction's workloads, remap compactor):
  the same collection on the sim and on Linux, alternating, best pause of N.
* Memory: host RSS of a fresh process holding a SimKernel with a 1 GiB
  mapping of which 256 MiB were written (one word per page), measured in a
  subprocess so nothing else is counted; the baseline (interpreter + numpy)
  is reported too.

    python -m bench.sim_throughput [--mib 256] [--repeat 3] [--objects 300000] [--no-linux]

Prints a table and writes bench/results/sim_throughput.json. Every timed
move is checked zero-copy (dst frames equal the src frames before it).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from heap.kernel import MADV_HUGEPAGE, MADV_NOHUGEPAGE, KernelUnsupported, open_kernel

PS = 4096
HP = 2 << 20
MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "sim_throughput.json"


def best(fn, repeat: int) -> float:
    """Shortest wall time of ``repeat`` runs of ``fn(i)`` (other processes only ever add time)."""
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return min(times)


class MoveRig:
    """A populated src and a registered dst of ``size`` bytes; moves go back and forth."""

    def __init__(self, kernel, size: int, thp: bool):
        self.k = kernel
        self.size = size
        self.a = kernel.mmap(size, align=HP)
        self.b = kernel.mmap(size, align=HP)
        for addr in (self.a, self.b):
            kernel.madvise(addr, size, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE)
        pages = np.arange(self.a, self.a + size, PS, dtype=np.uint64)
        kernel.store_words(pages, pages)  # before registering: a missing page would block
        self.uffd = kernel.userfaultfd()
        self.uffd.register(self.a, size)
        self.uffd.register(self.b, size)
        self.where = self.a

    def move(self, chunk: int) -> None:
        src = self.where
        dst = self.b if src == self.a else self.a
        before = self.k.page_frames(src, 16)
        if chunk >= self.size:
            self.uffd.move(dst, src, self.size)
        else:
            offs = np.arange(0, self.size, chunk, dtype=np.uint64)
            self.uffd.move_ranges(dst + offs, src + offs, np.full(offs.size, chunk, dtype=np.uint64))
        after = self.k.page_frames(dst, 16)
        assert (after == before).all(), "a timed move was not zero-copy"
        self.where = dst

    def close(self) -> None:
        self.uffd.close()
        self.k.munmap(self.a, self.size)
        self.k.munmap(self.b, self.size)


def measure_moves(kernel, size: int, repeat: int) -> list[dict]:
    rows = []
    for thp in (False, True):
        rig = MoveRig(kernel, size, thp)
        huge = kernel.page_info(rig.a).huge
        for chunk in (size, 2 * MiB, 64 << 10):
            if thp and chunk < HP:
                continue
            t = best(lambda _i: rig.move(chunk), repeat)
            rows.append(dict(what="move", thp=thp, huge=bool(huge), chunk=chunk, pages=size // PS, seconds=t,
                             pages_per_s=size / PS / t))
        rig.close()
    return rows


def measure_accessors(kernel, repeat: int, n: int = 1_000_000) -> list[dict]:
    size = 256 * MiB
    rng = np.random.default_rng(0)
    a = kernel.mmap(size)
    d = kernel.mmap(size)
    pages = np.arange(a, a + size, PS, dtype=np.uint64)
    kernel.store_words(pages, pages)
    words = (a + rng.integers(0, size // 8, n) * 8).astype(np.uint64)
    dsts = (d + np.arange(n, dtype=np.uint64) * 64).astype(np.uint64)
    srcs = (a + np.arange(n, dtype=np.uint64) * 128).astype(np.uint64)
    lengths = np.full(n, 64, dtype=np.uint64)
    kernel.copy_ranges(dsts, srcs, lengths)  # dst pages populated before timing
    rows = []
    for what, fn in (
        ("store_words 1M random", lambda _i: kernel.store_words(words, words)),
        ("load_words 1M random", lambda _i: kernel.load_words(words)),
        ("copy_ranges 1M x 64 B", lambda _i: kernel.copy_ranges(dsts, srcs, lengths)),
    ):
        rows.append(dict(what=what, seconds=best(fn, repeat)))
    kernel.munmap(a, size)
    kernel.munmap(d, size)
    # many short moves: 64 Ki single-page ranges in one batched call
    n_pages = 64 << 10
    rig_size = n_pages * PS
    s = kernel.mmap(rig_size)
    t = kernel.mmap(rig_size)
    kernel.madvise(s, rig_size, MADV_NOHUGEPAGE)
    pages = np.arange(s, s + rig_size, PS, dtype=np.uint64)
    kernel.store_words(pages, pages)
    u = kernel.userfaultfd()
    u.register(s, rig_size)
    u.register(t, rig_size)
    perm = rng.permutation(n_pages).astype(np.uint64)
    state = {"at": (s, t)}

    def scatter(_i):
        src, dst = state["at"]
        order = np.arange(n_pages, dtype=np.uint64)
        d_addrs = dst + perm * PS if src == s else dst + order * PS
        s_addrs = src + order * PS if src == s else src + perm * PS
        ls = np.full(n_pages, PS, dtype=np.uint64)
        u.move_ranges(d_addrs, s_addrs, ls)  # one ioctl per range where the backend batches (UffdBase)
        state["at"] = (dst, src)

    rows.append(dict(what="move_ranges 64Ki single pages", seconds=best(scatter, repeat)))
    u.close()
    kernel.munmap(s, rig_size)
    kernel.munmap(t, rig_size)
    return rows


def measure_collections(names: list[str], repeat: int, objects: int, large: int) -> list[dict]:
    """Pause of one stop-the-world collection per workload and kernel (best of ``repeat``, alternating)."""
    import logging

    from bench.compaction import run_large, run_small

    logging.basicConfig(level=logging.WARNING)  # the heap's warnings on stderr, its per-phase events not
    workloads = [
        (f"small: {objects:,} objects", lambda kn: run_small(kn, "remap", objects, 0, False)),
        (f"large: {large // MiB} MiB, 4 KiB pages", lambda kn: run_large(kn, "remap", False, large, 0, False)),
        (f"large: {large // MiB} MiB, THP", lambda kn: run_large(kn, "remap", True, large, 0, False)),
    ]
    rows = []
    for label, run in workloads:
        pauses = {name: [] for name in names}
        for _ in range(repeat):
            for name in names:
                pauses[name].append(run(name)["pause_ns"] / 1e9)
        rows.append(dict(workload=label, **{name: min(p) for name, p in pauses.items()}))
    return rows


RSS_PROBE = r"""
import json, sys
def status():
    out = {}
    for line in open('/proc/self/status'):
        key, _, rest = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            out[key] = int(rest.split()[0]) * 1024
    return out
import numpy as np
from sim_backend import SimKernel
base = status()
k = SimKernel()
GiB, touched = 1 << 30, int(sys.argv[1]) << 20
a = k.mmap(GiB)
pages = np.arange(a, a + touched, 4096, dtype=np.uint64)
k.store_words(pages, pages)
assert k.resident_bytes(a, GiB) == touched
after = status()
print(json.dumps(dict(baseline=base['VmRSS'], rss=after['VmRSS'], peak=after['VmHWM'],
                      content=k.host_bytes(), touched=touched)))
"""


def measure_rss(touched_mib: int) -> dict | None:
    if not Path("/proc/self/status").exists():
        return None
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(touched_mib)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="size of the moved range (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement, the fastest kept")
    ap.add_argument("--no-linux", action="store_true", help="do not measure the Linux backend")
    ap.add_argument("--objects", type=int, default=300_000, help="objects of the small collection workload")
    ap.add_argument("--large-mib", type=int, default=128, help="size of the large collection workload")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    size = args.mib * MiB

    kernels = {"sim": open_kernel("sim")}
    linux_reason = None
    if not args.no_linux:
        try:
            kernels["linux"] = open_kernel("linux")
        except KernelUnsupported as exc:
            linux_reason = str(exc)

    results = {name: dict(moves=measure_moves(k, size, args.repeat), accessors=measure_accessors(k, args.repeat))
               for name, k in kernels.items()}
    collections = measure_collections(list(kernels), args.repeat, args.objects, args.large_mib * MiB)
    rss = measure_rss(args.mib)

    console = Console()
    table = Table(title=f"sim kernel: large moves of {args.mib} MiB (best of {args.repeat})")
    for col in ("move", "sim pages/s", "linux pages/s", "sim/linux time"):
        table.add_column(col, justify="right")
    for i, row in enumerate(results["sim"]["moves"]):
        label = f"{'THP' if row['thp'] else '4 KiB'} pages, {row['chunk'] // 1024} KiB per call"
        lrow = results["linux"]["moves"][i] if "linux" in results else None
        table.add_row(label, f"{row['pages_per_s']:,.0f}",
                      f"{lrow['pages_per_s']:,.0f}" if lrow else "-",
                      f"{row['seconds'] / lrow['seconds']:.2f}x" if lrow else "-")
    console.print(table)
    acc = Table(title="vectorised accessors (best of runs)")
    for col in ("operation", "sim ms", "linux ms", "sim/linux"):
        acc.add_column(col, justify="right")
    for i, row in enumerate(results["sim"]["accessors"]):
        lrow = results["linux"]["accessors"][i] if "linux" in results else None
        acc.add_row(row["what"], f"{row['seconds'] * 1e3:.1f}", f"{lrow['seconds'] * 1e3:.1f}" if lrow else "-",
                    f"{row['seconds'] / lrow['seconds']:.2f}x" if lrow else "-")
    console.print(acc)
    col = Table(title="one heap collection, remap compactor (pause, best of runs)")
    for c in ("workload", "sim ms", "linux ms", "sim/linux"):
        col.add_column(c, justify="right")
    for row in collections:
        lin = row.get("linux")
        col.add_row(row["workload"], f"{row['sim'] * 1e3:.1f}", f"{lin * 1e3:.1f}" if lin else "-",
                    f"{row['sim'] / lin:.2f}x" if lin else "-")
    console.print(col)
    if rss:
        console.print(f"host RSS, SimKernel with 1 GiB mapped and {args.mib} MiB written: "
                      f"{rss['rss'] / MiB:.0f} MiB (peak {rss['peak'] / MiB:.0f} MiB; interpreter+numpy baseline "
                      f"{rss['baseline'] / MiB:.0f} MiB; page contents {rss['content'] / MiB:.0f} MiB)")
    if linux_reason:
        console.print(f"Linux backend not measured: {linux_reason}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        machine=dict(python=platform.python_version(), system=platform.platform()),
        mib=args.mib, repeat=args.repeat, results=results, collections=collections, rss=rss,
        linux_unavailable=linux_reason), indent=2))
    console.print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
