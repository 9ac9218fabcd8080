"""Self-served faults against the handler thread (issue 13), same run, side by side.

* workload: the issue's -- one mutator thread in a heap of ~192 MiB of
  4-16 KiB objects; 90% of its operations read 64 B of a random object and
  check them, 10% replace an object (a new one, the old one garbage); a
  collector thread runs ``collect(concurrent=True)`` back to back, 20 ms
  apart. A third row: no collector thread, the mutator itself starts a
  background cycle (``collect(concurrent=True, wait=False)``) 20 ms after
  the last one is done (no second Python thread to share the GIL with). Per fault mode: read p50/p99/p99.9/max, operations per second
  against the same mutator with no collection (measured on the same heap
  just before), median pause, cycles, faults served, every read correct.
* round trip: a cycle with no compactor thread (every page is a fault), one
  mutator reading 8 bytes of every to-space page through ``Ref.read``, each
  read timed from the mutator's side; the same reads with no cycle.
* MOVE vs COPY: one concurrent cycle of the same heap installed with MOVE,
  and with every MOVE answered EBUSY so that each page is COPYed instead
  (both through the Python installers -- ``PythonOnly`` hides the native
  parts, so only the install primitive differs); the cycle's install time
  and total.

Where the mutator's lost operations go (each workload row, the issue's
"per-cause split"), two views of the same run:

* by collector phase: the collector's windows (``begin``: the call that
  makes the pause and starts the install, ``install``: until the compactor
  is done, ``end``: ending the cycle, ``gap``: the 20 ms between cycles),
  each with the operations the mutator lost in it against its no-collection
  rate, as a share of its operations;
* by mutator state (the mutator thread's ``/proc/thread-self/schedstat``):
  time on a CPU, time runnable but waiting for one (other processes, and
  the collector's own threads, on a 2-vCPU machine), and time blocked
  (the pause's heap lock, the GIL, a page another installer holds), each
  against the no-collection run of the same length.

``--switch-interval S`` sets ``sys.setswitchinterval`` for the run (the
bench only: the library never changes it), to test whether the collector's
threads lose their time waiting for the GIL. The load average is recorded
with every row (the machine is shared).

    nice -n 10 python -m bench.faults_modes [--seconds S] [--mib N] [--kernel linux|sim] [--switch-interval S]

Latencies on this 2-vCPU VM move with the host's load: compare the rows of
one run. Prints tables and writes bench/results/faults_modes.json.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import struct
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.concurrent import OBJECT, PythonOnly, PythonOnlyUffd, faulting_reads, percentiles
from heap import Heap
from heap.kernel import UffdError, open_kernel

MiB = 1 << 20
MODES = ("thread", "self")
RESULTS = Path(__file__).resolve().parent / "results" / "faults_modes.json"
GOALS = {"read_p99_us": 30.0, "throughput_ratio": 0.7, "pause_median_ms": 2.0,
         "fault_p50_us": 8.0, "fault_p99_us": 25.0}


def stamp(oid: int) -> bytes:
    """The 64 bytes every object starts with: its id, eight times."""
    return struct.pack("<8q", *([oid] * 8))


class Workload:
    """The issue's mutator over one heap: objects with known stamps, read and replaced."""

    def __init__(self, heap: Heap, mib: int, seed: int = 1):
        self.heap = heap
        self.rnd = random.Random(seed)
        self.refs: list = []
        self.ids: list[int] = []
        self.next_id = 0
        used = 0
        while used < mib * MiB:
            ref, oid, size = self.new()
            self.refs.append(ref)
            self.ids.append(oid)
            used += size

    def new(self):
        size = self.rnd.randrange(4096, 16385)
        oid = self.next_id
        self.next_id += 1
        ref = self.heap.alloc(size)
        ref.write(stamp(oid))
        return ref, oid, size

    def run(self, seconds: float, lat: list[int], background: list | None = None,
            windows: list | None = None) -> dict:
        """``background``: no collector thread -- the mutator itself starts a
        background cycle (collect(concurrent=True, wait=False)) 20 ms after the
        last one is done, and its handles are appended there (and the call's
        span to ``windows``, as a "begin" window). Returns the operations,
        the bad reads, when each operation ended (ns) and the thread's CPU
        and run-queue times over the run."""
        clock, rnd = time.perf_counter_ns, self.rnd
        ops = bad = 0
        ends: list[int] = []
        sched0 = thread_sched()
        t_start = clock()
        end = t_start + int(seconds * 1e9)
        n = len(self.refs)
        next_cycle = clock()
        while clock() < end:
            if background is not None and clock() >= next_cycle and (not background or background[-1].done()):
                t = clock()
                background.append(self.heap.collect(concurrent=True, wait=False))
                next_cycle = clock() + 20_000_000
                if windows is not None:
                    windows.append(("begin", t, clock()))
            i = rnd.randrange(n)
            if rnd.random() < 0.1:
                ref, oid, _ = self.new()
                self.refs[i], self.ids[i] = ref, oid
            else:
                t = clock()
                data = self.refs[i].read(64)
                lat.append(clock() - t)
                bad += data != stamp(self.ids[i])
            ops += 1
            ends.append(clock())
        sched1 = thread_sched()
        return {"ops": ops, "bad_reads": int(bad), "ends": ends, "t0": t_start, "t1": clock(),
                "cpu_ns": sched1[0] - sched0[0], "runqueue_ns": sched1[1] - sched0[1]}


def thread_sched() -> tuple[int, int]:
    """(ns on a CPU, ns runnable waiting for one) of the calling thread (0, 0 where Linux's schedstat is missing)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            cpu, wait, _ = f.read().split()
        return int(cpu), int(wait)
    except OSError:
        return 0, 0


def collector(heap: Heap, stop: threading.Event, pauses: list[int], served: list[int], errors: list,
              windows: list) -> None:
    """``heap.collect(concurrent=True)`` back to back, 20 ms apart, in its two
    public halves (begin_concurrent / end_concurrent, what collect runs) so
    that each phase's window is known."""
    clock = time.perf_counter_ns
    try:
        while not stop.is_set():
            t0 = clock()
            cycle, st, finish = heap.begin_concurrent()
            t1 = clock()
            if cycle is None:
                finish()
            else:
                cycle.wait_compactor()
                t2 = clock()
                heap.end_concurrent(cycle)
                windows += [("begin", t0, t1), ("install", t1, t2), ("end", t2, clock())]
            pauses.append(st.pause_ns)
            served.append(st.faults_served)
            stop.wait(0.02)
    except BaseException as exc:  # reported in the row
        errors.append(repr(exc))


PHASES = ("begin", "install", "end", "gap")


def lost_by_phase(during: dict, base_rate: float, windows: list) -> dict:
    """Operations the mutator lost in each collector phase against its
    no-collection rate (``base_rate`` per ns), as shares of the operations the
    run would have done; the windows' share of the run's time next to it."""
    ends = np.asarray(during["ends"], dtype=np.int64)
    t0, t1 = during["t0"], during["t1"]
    total = base_rate * (t1 - t0)
    spans = sorted((lo, hi, name) for name, lo, hi in windows)
    # whatever no window covers is the gap between cycles
    cover, cursor = [], t0
    for lo, hi, name in spans:
        if lo > cursor:
            cover.append((cursor, lo, "gap"))
        cover.append((lo, hi, name))
        cursor = max(cursor, hi)
    if cursor < t1:
        cover.append((cursor, t1, "gap"))
    lost = dict.fromkeys(PHASES, 0.0)
    time_share = dict.fromkeys(PHASES, 0.0)
    for lo, hi, name in cover:
        lo, hi = max(lo, t0), min(hi, t1)
        if hi <= lo:
            continue
        done = int(np.searchsorted(ends, hi) - np.searchsorted(ends, lo))
        lost[name] += base_rate * (hi - lo) - done
        time_share[name] += (hi - lo) / (t1 - t0)
    return {"lost": {k: round(v / total, 3) for k, v in lost.items()},
            "time": {k: round(v, 3) for k, v in time_share.items()}}


def by_state(during: dict, base: dict) -> dict:
    """The mutator thread's time on a CPU / waiting for one / blocked, as shares
    of the run's wall time, measured and in the no-collection run."""
    def shares(r):
        wall = r["t1"] - r["t0"]
        blocked = wall - r["cpu_ns"] - r["runqueue_ns"]
        return {"cpu": round(r["cpu_ns"] / wall, 3), "runqueue": round(r["runqueue_ns"] / wall, 3),
                "blocked": round(blocked / wall, 3),
                "cpu_us_per_op": round(r["cpu_ns"] / max(r["ops"], 1) / 1e3, 2)}
    return {"during": shares(during), "no_collection": shares(base)}


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def workload_row(kernel: str, faults: str, mib: int, seconds: float, background: bool = False) -> dict:
    heap = Heap(kernel=kernel, size=(3 * mib + 64) * MiB, compactor="remap", faults=faults)
    with heap:
        w = Workload(heap, mib)
        heap.collect()  # a compact start, as the baseline and the measured run share it
        load = load_average()
        base_lat: list[int] = []
        base = w.run(seconds, base_lat)
        lat: list[int] = []
        stop, pauses, served, errors, windows = threading.Event(), [], [], [], []
        if background:
            handles: list = []
            during = w.run(seconds, lat, background=handles, windows=windows)
            for h in handles:
                try:
                    st = h.wait(60)
                    pauses.append(st.pause_ns)
                    served.append(st.faults_served)
                except BaseException as exc:  # reported in the row
                    errors.append(repr(exc))
        else:
            t = threading.Thread(target=collector, args=(heap, stop, pauses, served, errors, windows), daemon=True)
            t.start()
            during = w.run(seconds, lat)
            stop.set()
            t.join(60)
        a = np.asarray(lat, dtype=np.int64)
        base_rate = base["ops"] / max(base["t1"] - base["t0"], 1)
        phases = lost_by_phase(during, base_rate, windows)
        return {
            "mode": faults + (" + background" if background else ""), "objects": len(w.refs), "seconds": seconds,
            "load_before": load, "load_after": load_average(), "switch_interval_s": sys.getswitchinterval(),
            "read_p50_us": float(np.percentile(a, 50)) / 1e3, "read_p99_us": float(np.percentile(a, 99)) / 1e3,
            "read_p999_us": float(np.percentile(a, 99.9)) / 1e3, "read_max_us": float(a.max()) / 1e3,
            "baseline_read_p50_us": float(np.percentile(base_lat, 50)) / 1e3,
            "baseline_read_p99_us": float(np.percentile(base_lat, 99)) / 1e3,
            "throughput_ratio": during["ops"] / max(base["ops"], 1),
            "pause_median_ms": float(np.median(pauses)) / 1e6 if pauses else None,
            "cycles": len(pauses), "faults_served": int(sum(served)),
            "bad_reads": during["bad_reads"] + base["bad_reads"], "errors": errors,
            "lost_by_phase": phases["lost"], "phase_time": phases["time"], "mutator_state": by_state(during, base),
            "lost_ms_per_cycle": (1 - during["ops"] / max(base_rate * (during["t1"] - during["t0"]), 1))
            * (during["t1"] - during["t0"]) / 1e6 / max(len(pauses), 1),
        }


def round_trip_row(kernel: str, faults: str, mib: int) -> dict:
    heap = Heap(kernel=kernel, size=mib * MiB + 16 * MiB, compactor="remap", faults=faults)
    n = (mib * MiB) // (OBJECT + 4096)
    refs = [heap.alloc(OBJECT, 2) for _ in range(n)]
    ps = heap.kernel.page_size
    for r in refs:
        for off in range(ps, OBJECT, ps):
            r.write(b"x" * 8, offset=off)
    live = refs[::2]
    del refs
    with heap:
        faulted, plain, stats = faulting_reads(heap, live)
        return {"mode": faults, "mutator": percentiles(faulted), "no_cycle": percentiles(plain),
                "service_p50_ns": stats.fault_p50_ns, "service_p99_ns": stats.fault_p99_ns,
                "faults_served": stats.faults_served}


class CopyOnly(PythonOnly):
    """Every MOVE answered EBUSY: the installers COPY each page instead."""

    def wrap_uffd(self, uffd):
        return CopyOnlyUffd(uffd)


class CopyOnlyUffd(PythonOnlyUffd):
    def move(self, dst, src, length, mode=0):
        raise UffdError(errno.EBUSY, "EBUSY (bench: every MOVE refused)", moved=0)

    def move_ranges(self, dsts, srcs, lengths, mode=0):
        exc = UffdError(errno.EBUSY, "EBUSY (bench: every MOVE refused)", moved=0)
        exc.index = 0
        raise exc


def move_vs_copy_row(kernel: str, mib: int) -> dict:
    out = {}
    for name, wrapper in (("move", PythonOnly), ("copy", CopyOnly)):
        k = wrapper(open_kernel(kernel))
        with closing(k):
            heap = Heap(kernel=k, size=(2 * mib + 64) * MiB, compactor="remap")
            with heap:
                w = Workload(heap, mib, seed=7)
                for i in range(0, len(w.refs), 3):  # a third garbage: some pages rebuilt, most moved
                    w.refs[i] = None
                st = heap.collect(concurrent=True)
                out[name] = {"install_ms": st.install_ns / 1e6, "total_ms": st.total_ns / 1e6,
                             "pause_ms": st.pause_ns / 1e6, "pages_moved": st.pages_moved,
                             "ebusy_fallbacks": st.ebusy_fallbacks, "bytes_copied": st.bytes_copied}
    out["move_vs_copy_total"] = out["move"]["total_ms"] / out["copy"]["total_ms"]
    out["move_vs_copy_install"] = out["move"]["install_ms"] / out["copy"]["install_ms"]
    return out


def render(res: dict) -> None:
    c = Console(width=160)
    t = Table(title=f"the issue's workload ({res['mib']} MiB of 4-16 KiB objects, {res['seconds']} s per phase)")
    for col in ("mode", "read p50 us", "p99 us", "p99.9 us", "max us", "no-GC p50/p99 us", "throughput vs no GC",
                "median pause ms", "cycles", "faults", "bad reads"):
        t.add_column(col)
    for r in res["workload"]:
        t.add_row(r["mode"], f"{r['read_p50_us']:.1f}", f"{r['read_p99_us']:.1f}", f"{r['read_p999_us']:.0f}",
                  f"{r['read_max_us']:.0f}", f"{r['baseline_read_p50_us']:.1f}/{r['baseline_read_p99_us']:.1f}",
                  f"{r['throughput_ratio']:.2f}", f"{r['pause_median_ms']:.2f}" if r["pause_median_ms"] else "-",
                  str(r["cycles"]), str(r["faults_served"]), str(r["bad_reads"]))
    c.print(t)
    t = Table(title="where the mutator's operations go: lost by collector phase (share of its no-GC operations; "
                    "the phase's share of the time), and its thread's time on a CPU / waiting for one / blocked")
    for col in ("mode", "load", *(f"lost in {p}" for p in PHASES), "lost ms/cycle", "cpu / runq / blocked",
                "no-GC cpu / runq / blocked", "cpu us/op (no GC)"):
        t.add_column(col)
    for r in res["workload"]:
        lost, share, st = r["lost_by_phase"], r["phase_time"], r["mutator_state"]
        d, b = st["during"], st["no_collection"]
        t.add_row(r["mode"], f"{r['load_before']:.1f}-{r['load_after']:.1f}",
                  *(f"{lost[p]:.2f} ({share[p]:.2f})" for p in PHASES), f"{r['lost_ms_per_cycle']:.1f}",
                  f"{d['cpu']:.2f} / {d['runqueue']:.2f} / {d['blocked']:.2f}",
                  f"{b['cpu']:.2f} / {b['runqueue']:.2f} / {b['blocked']:.2f}",
                  f"{d['cpu_us_per_op']:.1f} ({b['cpu_us_per_op']:.1f})")
    c.print(t)
    if "round_trip" not in res:
        return
    t = Table(title="a fault's round trip seen by the mutator (Ref.read of 8 B, every read a fault)")
    for col in ("mode", "p50 us", "p99 us", "max us", "no cycle p50 us", "service p50/p99 us", "faults"):
        t.add_column(col)
    for r in res["round_trip"]:
        m = r["mutator"]
        t.add_row(r["mode"], f"{m['p50_ns'] / 1e3:.1f}", f"{m['p99_ns'] / 1e3:.1f}", f"{m['max_ns'] / 1e3:.0f}",
                  f"{r['no_cycle']['p50_ns'] / 1e3:.1f}",
                  f"{r['service_p50_ns'] / 1e3:.1f}/{r['service_p99_ns'] / 1e3:.1f}", str(r["faults_served"]))
    c.print(t)
    mc = res["move_vs_copy"]
    t = Table(title="one concurrent cycle installed by MOVE vs by COPY (Python installers both)")
    for col in ("install", "install ms", "total ms", "pages moved", "EBUSY -> COPY", "bytes copied"):
        t.add_column(col)
    for name in ("move", "copy"):
        r = mc[name]
        t.add_row(name, f"{r['install_ms']:.1f}", f"{r['total_ms']:.1f}", str(r["pages_moved"]),
                  str(r["ebusy_fallbacks"]), str(r["bytes_copied"]))
    c.print(t)
    c.print(f"MOVE/COPY: total {mc['move_vs_copy_total']:.2f}, install {mc['move_vs_copy_install']:.2f}")
    c.print("goals (self mode): " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in res["goals"].items()))


def goals(res: dict) -> dict:
    selfw = max((r for r in res["workload"] if r["mode"].startswith("self")), key=lambda r: r["throughput_ratio"])
    selft = next(r for r in res["round_trip"] if r["mode"] == "self")
    return {
        "read p99 <= 30 us": selfw["read_p99_us"] <= GOALS["read_p99_us"],
        "throughput >= 0.7": selfw["throughput_ratio"] >= GOALS["throughput_ratio"],
        "median pause <= 2 ms": (selfw["pause_median_ms"] or 1e9) <= GOALS["pause_median_ms"],
        "every read correct": all(r["bad_reads"] == 0 and not r["errors"] for r in res["workload"]),
        "fault p50 <= 8 us": selft["mutator"]["p50_ns"] / 1e3 <= GOALS["fault_p50_us"],
        "fault p99 <= 25 us": selft["mutator"]["p99_ns"] / 1e3 <= GOALS["fault_p99_us"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="linux")
    ap.add_argument("--mib", type=int, default=192)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fault-mib", type=int, default=64)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for this run (diagnosis: does the collector wait for the GIL?)")
    ap.add_argument("--workload-only", action="store_true", help="the workload rows only (no JSON written)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    res = {"kernel": args.kernel, "mib": args.mib, "seconds": args.seconds}
    res["workload"] = [workload_row(args.kernel, m, args.mib, args.seconds) for m in MODES]
    # no collector thread: the mutator starts background cycles itself (wait=False)
    res["workload"].append(workload_row(args.kernel, "self", args.mib, args.seconds, background=True))
    if args.workload_only:
        render(res)
        return
    res["round_trip"] = [round_trip_row(args.kernel, m, args.fault_mib) for m in MODES]
    res["move_vs_copy"] = move_vs_copy_row(args.kernel, min(args.mib, 64))
    res["goals"] = goals(res)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2, default=str))
    render(res)


if __name__ == "__main__":
    main()
