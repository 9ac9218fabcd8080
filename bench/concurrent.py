"""Concurrent compaction benchmark: the pause, the mutators' faults, their throughput.

Workloads (a large-object heap, so marking is cheap: 256 KiB objects, every
page written, every other object dead), built fresh for every measurement:

* pause: ``collect(concurrent=True)`` against ``collect()`` (stop-the-world
  remap) on the same heap, as the heap grows 64 MiB -> 1 GiB; the concurrent
  pause split into mark / plan / flip / precompute / roots, and per GiB of
  heap used.
* faults: a cycle whose pages only the fault handler installs (no compactor
  thread): one mutator thread reads 8 bytes of every to-space page through
  ``Ref.read``, timing each read from the mutator side, so every read is a
  userfault. Served by the native fault server (Linux), and again with the
  heap's native parts hidden (``PythonOnly``): the Python handler thread
  alone, the in-run baseline. Next to it: the same reads with no cycle (the
  cost of ``Ref.read`` itself), and the raw kernel round trip (a bare
  registered region, a Python handler thread doing read_events +
  UFFDIO_MOVE, a mutator doing ``kernel.load``).
* throughput: a mutator thread reading 64 bytes of random live objects, its
  reads per second during a concurrent cycle (from the call that starts it
  to the end of the install, the pause included) against a window with no
  cycle just before; and the longest single read inside the cycle (what a
  mutator feels of the pause). With the native parts, and without.

Fault and wake-up latencies on this machine (a 2-vCPU VM) move by 5x from
one minute to the next with the host's load: compare rows of one run.

    python -m bench.concurrent [--quick] [--repeat N] [--kernel linux|sim]

Prints tables and writes bench/results/concurrent.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent
from bench.wrappers import KernelWrapper, UffdWrapper
from heap.kernel import UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UFFDIO_REGISTER_MODE_MISSING, open_kernel

MiB = 1 << 20
GiB = 1 << 30
OBJECT = 256 << 10
RESULTS = Path(__file__).resolve().parent / "results" / "concurrent.json"


def build(kernel_name: str, used: int, native: bool = True) -> tuple[Heap, list]:
    """A heap of ``used`` bytes of 256 KiB objects, every page written; every other object dead.
    ``native=False``: on a ``PythonOnly`` kernel (close ``heap.kernel`` after the heap)."""
    kernel = kernel_name if native else PythonOnly(open_kernel(kernel_name))
    # the handler-thread mode, asked for: this bench measures the fault server and the Python
    # handler (Heap's default, "auto", self-serves on Linux; bench.faults_modes compares the modes)
    heap = Heap(kernel=kernel, size=used + 16 * MiB, compactor="remap", faults="thread")
    n = used // (OBJECT + 4096)
    refs = [heap.alloc(OBJECT, 2) for _ in range(n)]
    ps = heap.kernel.page_size
    addrs = np.array([r.address for r in refs], dtype=np.int64)
    pages = (addrs[:, None] + np.arange(1, OBJECT // ps + 1)[None, :] * ps).ravel()
    heap.kernel.store_words(pages.astype(np.uint64), (pages ^ 0x5A5A).astype(np.uint64))
    live = refs[::2]
    for a, b in zip(live, live[1:]):
        a.set_ref(0, b)
    return heap, live


def pause_row(kernel_name: str, used: int, repeat: int) -> dict:
    conc, stw = [], []
    parts = {}
    for _ in range(repeat):
        heap, live = build(kernel_name, used)
        with heap:
            st = heap.collect(concurrent=True)
            conc.append(st.pause_ns)
            if st.pause_ns == min(conc):
                parts = {p: getattr(st, f"{p}_ns") for p in ("mark", "plan", "flip", "precompute", "roots")}
                parts["install_ns"] = st.install_ns
        heap, live = build(kernel_name, used)
        with heap:
            stw.append(heap.collect().pause_ns)
    c, s = min(conc), min(stw)
    return dict(heap_mib=used // MiB, concurrent_pause_ns=c, stw_pause_ns=s, ratio=s / c,
                concurrent_ns_per_gib=c * GiB / used, stw_ns_per_gib=s * GiB / used, parts=parts,
                concurrent_runs=conc, stw_runs=stw)


def percentiles(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.int64)
    return dict(n=int(a.size), p50_ns=int(np.percentile(a, 50)), p99_ns=int(np.percentile(a, 99)),
                max_ns=int(a.max()))


def timed_reads(objs: list, ps: int) -> list[int]:
    """8 bytes of every page of every object (after its header page), each read timed."""
    out = []
    clock = time.perf_counter_ns
    for r in objs:
        for off in range(ps, OBJECT, ps):
            t = clock()
            r.read(8, offset=off)
            out.append(clock() - t)
    return out


class PythonOnly(KernelWrapper):
    """A kernel whose userfaultfds have their native parts hidden (no
    accelerator: no chunk walker, no fault server): the same cycle run by the
    Python threads alone, the in-run baseline the native parts are measured
    against."""

    def wrap_uffd(self, uffd) -> "PythonOnlyUffd":
        return PythonOnlyUffd(uffd)


class PythonOnlyUffd(UffdWrapper):
    """No accelerator (UffdWrapper's); batched MOVEs still the backend's one call."""

    def move_ranges(self, dsts, srcs, lengths, mode=0):
        return self.inner.move_ranges(dsts, srcs, lengths, mode)


def faulting_reads(heap, live) -> tuple[list[int], list[int], object]:
    """Read every page of ``live`` from a mutator thread while a concurrent cycle
    whose compactor does not run leaves each page to its first fault, then again
    with no cycle: (ns per faulting read, ns per plain read, the cycle's stats)."""
    ps = heap.kernel.page_size
    cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
    faulted: list[int] = []
    t = threading.Thread(target=lambda: faulted.extend(timed_reads(live, ps)))
    t.start()
    t.join()
    end_concurrent(heap, cycle)
    return faulted, timed_reads(live, ps), stats


def fault_latency(kernel_name: str, used: int, native: bool = True) -> dict:
    heap, live = build(kernel_name, used, native)
    with closing(heap.kernel), heap:
        faulted, plain, stats = faulting_reads(heap, live)
        return dict(mutator=percentiles(faulted), no_cycle=percentiles(plain),
                    handler_service=dict(p50_ns=stats.fault_p50_ns, p99_ns=stats.fault_p99_ns),
                    faults_served=stats.faults_served, pages_by_faults=stats.pages_installed_by_faults)


def raw_round_trip(kernel_name: str, n: int) -> dict:
    """A bare userfault resolved by a Python handler thread (read_events + MOVE),
    timed around ``kernel.load`` in the mutator."""
    k = open_kernel(kernel_name)
    ps = k.page_size
    uffd = k.userfaultfd()
    dst, src = k.mmap(n * ps), k.mmap(n * ps)
    k.store_words((src + np.arange(n) * ps).astype(np.uint64), np.arange(n, dtype=np.uint64))
    uffd.register(dst, n * ps, UFFDIO_REGISTER_MODE_MISSING)
    stop = threading.Event()

    def handler():
        while not stop.is_set():
            for ev in uffd.read_events(timeout=0.02):
                off = ev.address - dst
                uffd.move(ev.address, src + off, ps, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)

    h = threading.Thread(target=handler, daemon=True)
    h.start()
    out = []
    clock = time.perf_counter_ns
    try:
        for i in range(n):
            t = clock()
            k.load(dst + i * ps, 8)
            out.append(clock() - t)
    finally:
        stop.set()
        h.join(5)
        uffd.close()
        k.munmap(dst, n * ps)
        k.munmap(src, n * ps)
    return percentiles(out)


def throughput(kernel_name: str, used: int, rounds: int, native: bool = True) -> dict:
    """One mutator thread reads 64 B of random live objects without pause,
    each read timestamped. Per round: a 0.3 s window with no cycle, then a
    cycle (from the call that starts it to the end of its install, the pause
    included); medians over rounds. The longest read inside a cycle is the
    mutator-visible stall. Rounds after the first find the heap compact:
    their cycles flip and install every live page again but free nothing."""
    heap, live = build(kernel_name, used, native)
    stamps: list[tuple[float, float]] = []
    stop = threading.Event()

    def mutator():
        rnd = random.Random(3)
        clock = time.perf_counter
        while not stop.is_set():
            t = clock()
            rnd.choice(live).read(64, offset=rnd.randrange(0, OBJECT - 64))
            stamps.append((t, clock() - t))

    windows = []
    with closing(heap.kernel), heap:
        t = threading.Thread(target=mutator)
        t.start()
        try:
            for _ in range(rounds):
                b0 = time.perf_counter()
                time.sleep(0.3)
                c0 = time.perf_counter()
                cycle, stats, _ = begin_concurrent(heap)
                cycle.wait_compactor()
                end_concurrent(heap, cycle)
                c1 = time.perf_counter()
                windows.append((b0, c0, c1, stats.faults_served, stats.pause_ns))
                time.sleep(0.05)
        finally:
            stop.set()
            t.join()
    a = np.array(stamps)
    base, during, install, stall, faults, pauses = [], [], [], [], [], []
    for b0, c0, c1, nfaults, pause in windows:
        nb = np.count_nonzero((a[:, 0] >= b0) & (a[:, 0] < c0))
        inside = (a[:, 0] >= c0) & (a[:, 0] < c1)
        base.append(nb / (c0 - b0))
        during.append(np.count_nonzero(inside) / (c1 - c0))
        install.append((c1 - c0) * 1e3)
        stall.append(float(a[inside, 1].max() * 1e3) if inside.any() else (c1 - c0) * 1e3)
        faults.append(nfaults)
        pauses.append(pause / 1e6)
    b, d = float(np.median(base)), float(np.median(during))
    return dict(reads_per_s_no_cycle=b, reads_per_s_during_cycle=d, ratio=d / b, cycle_ms=float(np.median(install)),
                longest_read_in_cycle_ms=float(np.median(stall)), pause_ms=float(np.median(pauses)),
                faults_served=int(np.median(faults)), rounds=rounds, runs_no_cycle=base, runs_during_cycle=during,
                runs_cycle_ms=install, runs_longest_read_ms=stall)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--kernel", default="linux", help="linux | sim (default linux)")
    parser.add_argument("--repeat", type=int, default=3, help="pause: shortest of N fresh heaps (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # the heap's warnings on stderr, its per-phase events not
    sizes = [4 * MiB, 8 * MiB] if args.quick else [64 * MiB, 128 * MiB, 256 * MiB, 512 * MiB, 1024 * MiB]
    repeat = 1 if args.quick else args.repeat
    console = Console()

    pauses = [pause_row(args.kernel, s, repeat) for s in sizes]
    table = Table(title=f"pause, concurrent vs stop-the-world ({args.kernel}, shortest of {repeat})")
    for col in ("heap", "concurrent pause", "per GiB", "mark", "plan", "flip", "precompute", "roots",
                "STW pause", "STW / concurrent"):
        table.add_column(col, justify="right")
    for r in pauses:
        p = r["parts"]
        table.add_row(f"{r['heap_mib']} MiB", f"{r['concurrent_pause_ns'] / 1e6:.2f} ms",
                      f"{r['concurrent_ns_per_gib'] / 1e6:.2f} ms", *(f"{p[x] / 1e6:.2f}" for x in
                                                                     ("mark", "plan", "flip", "precompute", "roots")),
                      f"{r['stw_pause_ns'] / 1e6:.2f} ms", f"{r['ratio']:.1f}x")
    console.print(table)

    fsize = 4 * MiB if args.quick else 64 * MiB
    faults = {"native": fault_latency(args.kernel, fsize), "python": fault_latency(args.kernel, fsize, native=False)}
    faults["raw"] = raw_round_trip(args.kernel, faults["native"]["mutator"]["n"])
    ft = Table(title=f"fault latency seen by the mutator ({fsize // MiB} MiB heap, every read a fault; one run)")
    for col in ("what", "n", "p50", "p99", "max"):
        ft.add_column(col, justify="right")
    rows = (("Ref.read under a fault, native fault server", faults["native"]["mutator"]),
            ("Ref.read under a fault, Python handler only", faults["python"]["mutator"]),
            ("Ref.read, no cycle", faults["native"]["no_cycle"]),
            ("raw: kernel.load + Python handler MOVE", faults["raw"]))
    for name, d in rows:
        ft.add_row(name, str(d["n"]), f"{d['p50_ns'] / 1e3:.1f} us", f"{d['p99_ns'] / 1e3:.1f} us",
                   f"{d['max_ns'] / 1e3:.0f} us")
    for name, key in (("service, native (event read -> wake)", "native"), ("service, Python handler", "python")):
        hs = faults[key]["handler_service"]
        ft.add_row(name, str(faults[key]["faults_served"]), f"{hs['p50_ns'] / 1e3:.1f} us",
                   f"{hs['p99_ns'] / 1e3:.1f} us", "")
    faults["native_vs_python_p50"] = faults["native"]["mutator"]["p50_ns"] / faults["python"]["mutator"]["p50_ns"]
    console.print(ft)
    console.print(f"mutator fault latency p50, native / Python-only: {faults['native_vs_python_p50']:.2f}")

    tsize = 8 * MiB if args.quick else 256 * MiB
    rounds = 2 if args.quick else 5
    thr = {"native": throughput(args.kernel, tsize, rounds), "python": throughput(args.kernel, tsize, rounds, False)}
    tt = Table(title=f"mutator throughput ({tsize // MiB} MiB heap, Ref.read of 64 B, median of {rounds})")
    for col in ("", "no cycle", "during a cycle", "ratio", "cycle (pause + install)", "pause", "longest read in it",
                "faults served"):
        tt.add_column(col, justify="right")
    for name in ("native", "python"):
        t = thr[name]
        tt.add_row("native walk + server" if name == "native" else "Python threads only",
                   f"{t['reads_per_s_no_cycle']:.0f}/s", f"{t['reads_per_s_during_cycle']:.0f}/s",
                   f"{t['ratio']:.2f}", f"{t['cycle_ms']:.1f} ms", f"{t['pause_ms']:.2f} ms",
                   f"{t['longest_read_in_cycle_ms']:.2f} ms", str(t["faults_served"]))
    console.print(tt)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(kernel=args.kernel, quick=args.quick, repeat=repeat,
                                        loadavg=os.getloadavg(), pause=pauses,
                                        faults=faults, throughput=thr), indent=1))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
