"""The floor of moving pages on this kernel: UFFDIO_MOVE against memcpy.

Moves 64 MiB of populated 4 KiB pages into an empty registered range

* with one ioctl per page,
* with one ioctl per 64-page batch,
* with one ioctl for the whole range,

each both through the Python API (``LinuxUffd.move`` per call, what a Python
caller pays) and from one C loop (``LinuxUffd.move_ranges``: the kernel's own
cost plus one syscall per ioctl), and compares them with memcpy of the same
pages into an already populated dst (one C loop over 4 KiB memmoves). Every
timed move is checked zero-copy: each dst page's frame equals the src frame
recorded before the move.

    python -m bench.move_floor [--mib 64] [--reps 5]

Prints a table of ns/page and ratios against memcpy measured in the same
process, and saves JSON to bench/results/move_floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from heap.kernel import MADV_NOHUGEPAGE, PAGE_SIZE, open_kernel

PS = PAGE_SIZE
RESULTS = Path(__file__).resolve().parent / "results" / "move_floor.json"


class Pages:
    """A populated src and an empty dst of ``npages`` small pages, set up fresh for each run."""

    def __init__(self, kernel, uffd, npages: int, *, register_dst: bool):
        self.k, self.npages = kernel, npages
        length = npages * PS
        self.src = kernel.mmap(length)
        self.dst = kernel.mmap(length)
        for addr in (self.src, self.dst):
            kernel.madvise(addr, length, MADV_NOHUGEPAGE)  # 4 KiB pages on both sides
        # one distinct word per page, so a wrong move would show
        heads = np.arange(self.src, self.src + length, PS, dtype=np.uint64)
        kernel.store_words(heads, heads)
        if register_dst:
            uffd.register(self.dst, length)
        self.frames = kernel.page_frames(self.src, npages)
        assert (self.frames > 0).all(), "pagemap shows no frames (need root or CAP_SYS_ADMIN)"

    def populate_dst(self) -> None:
        heads = np.arange(self.dst, self.dst + self.npages * PS, PS, dtype=np.uint64)
        self.k.store_words(heads, np.zeros_like(heads))

    def verify_moved(self) -> None:
        frames = self.k.page_frames(self.dst, self.npages)
        if not (frames == self.frames).all():
            bad = int(np.flatnonzero(frames != self.frames)[0])
            raise AssertionError(f"page {bad} changed frame: {self.frames[bad]} -> {frames[bad]} (copied, not moved)")
        sample = np.linspace(0, self.npages - 1, 64, dtype=np.int64)
        words = self.k.load_words((self.dst + sample * PS).astype(np.uint64))
        expected = (self.src + sample * PS).astype(np.uint64)
        if not (words == expected).all():
            raise AssertionError("moved pages do not hold their contents")
        if self.k.resident_bytes(self.src, self.npages * PS):
            raise AssertionError("src still has resident pages after the move")

    def verify_copied(self) -> None:
        sample = np.linspace(0, self.npages - 1, 64, dtype=np.int64)
        words = self.k.load_words((self.dst + sample * PS).astype(np.uint64))
        if not (words == (self.src + sample * PS).astype(np.uint64)).all():
            raise AssertionError("memcpy did not copy the pages")

    def close(self) -> None:
        self.k.munmap(self.src, self.npages * PS)
        self.k.munmap(self.dst, self.npages * PS)


def _chunks(base: int, npages: int, pages_per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, npages, pages_per_chunk, dtype=np.uint64)
    lengths = np.minimum(np.uint64(pages_per_chunk), np.uint64(npages) - starts) * np.uint64(PS)
    return base + starts * np.uint64(PS), lengths


def python_moves(uffd, p: Pages, pages_per_ioctl: int) -> int:
    step = pages_per_ioctl * PS
    dst, src = p.dst, p.src
    move = uffd.move
    for off in range(0, p.npages * PS, step):
        move(dst + off, src + off, step)
    return -(-p.npages // pages_per_ioctl)


def c_moves(uffd, p: Pages, pages_per_ioctl: int) -> tuple[int, int]:
    dsts, lengths = _chunks(p.dst, p.npages, pages_per_ioctl)
    srcs, _ = _chunks(p.src, p.npages, pages_per_ioctl)
    start = time.perf_counter_ns()
    uffd.move_ranges(dsts, srcs, lengths)
    return time.perf_counter_ns() - start, dsts.size


MODES = [
    # name, how, pages per ioctl
    ("move, 1 ioctl per page (Python call each)", "python", 1),
    ("move, 1 ioctl per page (C loop)", "c", 1),
    ("move, 1 ioctl per 64 pages (Python call each)", "python", 64),
    ("move, 1 ioctl per 64 pages (C loop)", "c", 64),
    ("move, 1 ioctl for the whole range", "python", None),
]


def run(mib: int, reps: int) -> dict:
    kernel = open_kernel("linux")
    uffd = kernel.userfaultfd()
    npages = mib * (1 << 20) // PS
    results: dict[str, dict] = {}

    def record(name: str, ns_list: list[int], calls: int, **extra) -> None:
        per_page = [ns / npages for ns in ns_list]
        results[name] = {"ns_per_page_median": statistics.median(per_page), "ns_per_page_min": min(per_page),
                         "ns_per_page_all": per_page, "calls": calls, **extra}

    # memcpy baseline: the same pages, 4 KiB at a time, into a populated dst
    times = []
    for _ in range(reps):
        p = Pages(kernel, uffd, npages, register_dst=False)
        p.populate_dst()
        dsts, lengths = _chunks(p.dst, npages, 1)
        srcs, _ = _chunks(p.src, npages, 1)
        start = time.perf_counter_ns()
        kernel.copy_ranges(dsts, srcs, lengths)
        times.append(time.perf_counter_ns() - start)
        p.verify_copied()
        p.close()
    record("memcpy 4 KiB pages into populated dst (C loop)", times, 1, zero_copy=False)

    for name, how, per in MODES:
        times, calls = [], 0
        for _ in range(reps):
            p = Pages(kernel, uffd, npages, register_dst=True)
            if how == "c":
                ns, calls = c_moves(uffd, p, per)
            else:
                start = time.perf_counter_ns()
                calls = python_moves(uffd, p, per or npages)
                ns = time.perf_counter_ns() - start
            times.append(ns)
            p.verify_moved()
            p.close()
        record(name, times, calls, zero_copy=True)

    uffd.close()
    base = results["memcpy 4 KiB pages into populated dst (C loop)"]["ns_per_page_median"]
    for r in results.values():
        r["speedup_vs_memcpy"] = base / r["ns_per_page_median"]
    return {
        "benchmark": "move_floor",
        "kernel_release": os.uname().release,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "mib": mib,
        "pages": npages,
        "reps": reps,
        "statistic": "median over reps of ns per 4 KiB page",
        "zero_copy_verified": "every dst frame equals its src frame before the move, every rep",
        "results": results,
    }


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Moving {report['mib']} MiB ({report['pages']} pages), Linux {report['kernel_release']}, "
                        f"median of {report['reps']}")
    table.add_column("method")
    table.add_column("ioctls/calls", justify="right")
    table.add_column("ns/page", justify="right")
    table.add_column("vs memcpy", justify="right")
    table.add_column("zero-copy", justify="center")
    for name, r in report["results"].items():
        speed = r["speedup_vs_memcpy"]
        versus = ("baseline" if not r["zero_copy"] else
                  f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower")
        table.add_row(name, f"{r['calls']:,}", f"{r['ns_per_page_median']:,.1f}", versus,
                      "verified" if r["zero_copy"] else "-")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB moved per run (default 64)")
    parser.add_argument("--reps", type=int, default=5, help="runs per method; the median is reported (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to save the JSON")
    args = parser.parse_args(argv)
    report = run(args.mib, args.reps)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
