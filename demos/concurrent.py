"""``remapgc demo concurrent``: mutator threads keep working while the heap is compacted.

Several mutator threads each own a set of objects linked in a ring; they
read them (checking every byte against a shadow kept in Python), rewrite
them, and replace some with new objects (the old ones become garbage). First
they run alone for a while (the throughput baseline); then the collector
thread runs ``heap.collect(concurrent=True)`` cycle after cycle while they
keep going. A mutator touching a page the compactor has not installed yet
takes a userfault that the heap's fault handler serves.

Reported: the pause of each cycle (and, for scale, one stop-the-world
collection of the same heap), the faults served, the latency of mutator
accesses during cycles next to the same accesses without a cycle (slow
accesses are the faulted ones: histogram PNG), and mutator throughput with
and without cycles. If this build of the heap has no concurrent collection,
the demo says so and fails.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

from demos.common import KiB, MiB, DemoContext, DemoReport, fmt_bytes, fmt_count, fmt_ns, ratio, stats_dict


@dataclass(frozen=True)
class ConcurrentSize:
    mutators: int
    objects_per_mutator: int
    cycles: int
    baseline_seconds: float
    heap_bytes: int


SIZES = {
    "small": ConcurrentSize(mutators=2, objects_per_mutator=400, cycles=4, baseline_seconds=0.5, heap_bytes=32 * MiB),
    "medium": ConcurrentSize(mutators=4, objects_per_mutator=3000, cycles=12, baseline_seconds=2.0,
                             heap_bytes=128 * MiB),
    "large": ConcurrentSize(mutators=4, objects_per_mutator=12000, cycles=40, baseline_seconds=5.0,
                            heap_bytes=512 * MiB),
}
OBJECT_SIZES = (64, 200, 512, 2 * KiB, 6 * KiB, 24 * KiB)  # small and medium: many objects per page, some pages each
STAMP = struct.Struct("<IIQ")  # mutator, slot, version: repeated to fill the payload
THREAD_TIMEOUT_S = 120.0
BATCH = 64  # operations drawn at once (one numpy call) between looks at the phase


class Phase:
    BASELINE, CYCLES, STOP = "baseline", "cycles", "stop"


def expected_payload(mutator: int, slot: int, version: int, nbytes: int) -> bytes:
    stamp = STAMP.pack(mutator, slot, version)
    return (stamp * (nbytes // len(stamp) + 1))[:nbytes]


@dataclass
class Shared:
    """What the driver and the mutators share (writes are single assignments: atomic under the GIL)."""

    phase: str = Phase.BASELINE
    collecting: bool = False


@dataclass
class Mutator:
    """One mutator thread's objects, their shadow versions, and what it measured."""

    number: int
    heap: object
    shared: Shared
    seed: int
    refs: list = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=lambda: {Phase.BASELINE: 0, Phase.CYCLES: 0})
    latencies: dict[str, list[int]] = field(default_factory=lambda: {"baseline": [], "during_collection": []})
    mismatches: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def populate(self, count: int, rng: np.random.Generator) -> None:
        for slot in range(count):
            nbytes = int(rng.choice(OBJECT_SIZES))
            self.refs.append(self._new_object(slot, 0, nbytes))
            self.versions.append(0)
            self.sizes.append(nbytes)
        for slot in range(count):  # a ring: slot i refers to slot i+1
            self.refs[slot].set_ref(0, self.refs[(slot + 1) % count])

    def _new_object(self, slot: int, version: int, nbytes: int):
        ref = self.heap.alloc(nbytes=nbytes, nrefs=1)
        ref.write(expected_payload(self.number, slot, version, nbytes))
        return ref

    # -- the thread ----------------------------------------------------------------------
    def run(self) -> None:
        rng = np.random.default_rng(self.seed)
        try:
            while self.shared.phase != Phase.STOP:
                phase = self.shared.phase
                slots, choices = rng.integers(0, len(self.refs), BATCH), rng.random(BATCH)
                for slot, choice in zip(slots.tolist(), choices.tolist()):
                    during_collection = self.shared.collecting
                    started = time.perf_counter_ns()
                    self.operate(slot, choice)
                    elapsed = time.perf_counter_ns() - started
                    if phase == Phase.BASELINE:
                        self.latencies["baseline"].append(elapsed)
                    elif during_collection:
                        self.latencies["during_collection"].append(elapsed)
                self.ops[phase] += BATCH
        except BaseException as exc:  # reported by the driver: a mutator must never die silently
            self.error = exc

    def operate(self, slot: int, choice: float) -> None:
        if choice < 0.6:
            self.check(slot)
        elif choice < 0.9:
            self.versions[slot] += 1
            self.refs[slot].write(expected_payload(self.number, slot, self.versions[slot], self.sizes[slot]))
        else:
            self.replace(slot)

    def check(self, slot: int) -> None:
        ref = self.refs[slot]
        if ref.read(self.sizes[slot]) != expected_payload(self.number, slot, self.versions[slot], self.sizes[slot]):
            self.mismatches.append(f"mutator {self.number} slot {slot}: payload differs from its shadow")
        successor = (slot + 1) % len(self.refs)
        if ref.get_ref(0).read(STAMP.size) != STAMP.pack(self.number, successor, self.versions[successor]):
            self.mismatches.append(f"mutator {self.number} slot {slot}: reference does not lead to slot {successor}")

    def replace(self, slot: int) -> None:
        """A new object takes the slot's place; the old one becomes garbage."""
        count = len(self.refs)
        version = self.versions[slot] + 1
        fresh = self._new_object(slot, version, self.sizes[slot])
        fresh.set_ref(0, self.refs[(slot + 1) % count])
        self.refs[(slot - 1) % count].set_ref(0, fresh)
        self.refs[slot], self.versions[slot] = fresh, version

    def check_all(self) -> int:
        """Check every object against its shadow; the number that failed."""
        before = len(self.mismatches)
        for slot in range(len(self.refs)):
            self.check(slot)
        return len(self.mismatches) - before


def concurrent_unavailable(heap) -> str | None:
    """Why ``collect(concurrent=True)`` cannot run in this build, or None when it ran."""
    try:
        heap.collect(concurrent=True)
    except (NotImplementedError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run(ctx: DemoContext) -> DemoReport:
    size = SIZES[ctx.size]
    report = DemoReport("concurrent", "mutators keep running while pages are installed")
    heap = ctx.heap(size=size.heap_bytes)
    stuck = False
    try:
        why_not = concurrent_unavailable(heap)
        if why_not is not None:
            report.check("concurrent collection is available", False,
                         f"heap.collect(concurrent=True) is not available in this build: {why_not}")
            report.notes.append("nothing was measured: this demo needs concurrent compaction (issue 5)")
            return report
        shared = Shared()
        rng = np.random.default_rng(ctx.seed)
        mutators = [Mutator(n, heap, shared, seed=ctx.seed * 100 + n) for n in range(size.mutators)]
        for mutator in mutators:
            mutator.populate(size.objects_per_mutator, rng)
        cycles, timings = drive(ctx, heap, shared, mutators, size, report)
        if not timings.finished:
            # A thread is stuck inside the heap: touching the heap again could hang this one too.
            stuck = True
            report.notes.append("a thread is stuck in the heap: final checks skipped, the heap left open")
            return report
        final_mismatches = sum(m.check_all() for m in mutators)
        stw = stats_dict(heap.collect())
        report.check_raises_nothing("heap.verify() after the cycles", heap.verify)
    finally:
        if not stuck:
            heap.close()
    judge(ctx, report, mutators, cycles, timings, stw, final_mismatches, size)
    return report


@dataclass
class Timings:
    baseline_ns: int
    cycles_ns: int
    finished: bool


def drive(ctx: DemoContext, heap, shared: Shared, mutators: list[Mutator], size: ConcurrentSize,
          report: DemoReport) -> tuple[list[dict], Timings]:
    """Baseline, then concurrent cycles, with the mutators running throughout."""
    threads = [threading.Thread(target=m.run, name=f"mutator-{m.number}", daemon=True) for m in mutators]
    cycles: list[dict] = []
    collector_error: list[BaseException] = []

    def collector() -> None:
        try:
            for _ in range(size.cycles):
                shared.collecting = True
                stats = heap.collect(concurrent=True)
                shared.collecting = False
                cycles.append(stats_dict(stats))
                time.sleep(0.02)  # let the mutators run between cycles too
        except BaseException as exc:
            collector_error.append(exc)
        finally:
            shared.collecting = False

    for thread in threads:
        thread.start()
    with ctx.progress() as progress:
        task = progress.add_task("mutators alone (baseline)", total=None)
        started = time.perf_counter_ns()
        time.sleep(size.baseline_seconds)
        shared.phase = Phase.CYCLES
        baseline_ns = time.perf_counter_ns() - started
        progress.update(task, description="concurrent cycles", total=size.cycles, completed=0)
        collector_thread = threading.Thread(target=collector, name="collector", daemon=True)
        started = time.perf_counter_ns()
        collector_thread.start()
        deadline = time.monotonic() + THREAD_TIMEOUT_S
        while collector_thread.is_alive() and time.monotonic() < deadline:
            collector_thread.join(0.1)
            progress.update(task, completed=len(cycles))
        cycles_ns = time.perf_counter_ns() - started
    shared.phase = Phase.STOP
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 5.0))
    finished = not collector_thread.is_alive() and not any(t.is_alive() for t in threads)
    report.check("collector and mutator threads finished", finished,
                 "" if finished else f"still running after {THREAD_TIMEOUT_S:.0f} s")
    report.check("every concurrent cycle completed", not collector_error and len(cycles) == size.cycles,
                 f"{len(cycles)}/{size.cycles} cycles"
                 + (f"; {type(collector_error[0]).__name__}: {collector_error[0]}" if collector_error else ""))
    errors = [f"{m.number}: {type(m.error).__name__}: {m.error}" for m in mutators if m.error]
    report.check("no mutator raised", not errors, "; ".join(errors[:3]))
    return cycles, Timings(baseline_ns, cycles_ns, finished)


def percentile(values: list[int] | np.ndarray, q: float) -> int | None:
    return int(np.percentile(values, q)) if len(values) else None


def judge(ctx: DemoContext, report: DemoReport, mutators: list[Mutator], cycles: list[dict], timings: Timings,
          stw: dict, final_mismatches: int, size: ConcurrentSize) -> None:
    mismatches = [text for m in mutators for text in m.mismatches]
    report.check("every mutator read matched its shadow", not mismatches,
                 f"{sum(m.ops[Phase.BASELINE] + m.ops[Phase.CYCLES] for m in mutators):,} operations"
                 if not mismatches else f"{len(mismatches)} mismatches, first: {mismatches[0]}")
    report.check("every object matches its shadow after the cycles", final_mismatches == 0,
                 f"{size.mutators * size.objects_per_mutator:,} objects")
    faults = sum(c["faults_served"] for c in cycles)
    report.check("mutators faulted on uninstalled pages and were served", faults > 0,
                 f"{faults:,} faults served")
    baseline = np.array([x for m in mutators for x in m.latencies["baseline"]], dtype=np.int64)
    during = np.array([x for m in mutators for x in m.latencies["during_collection"]], dtype=np.int64)
    ops_baseline = sum(m.ops[Phase.BASELINE] for m in mutators)
    ops_cycles = sum(m.ops[Phase.CYCLES] for m in mutators)
    throughput_baseline = ops_baseline / (timings.baseline_ns / 1e9) if timings.baseline_ns else 0.0
    throughput_cycles = ops_cycles / (timings.cycles_ns / 1e9) if timings.cycles_ns else 0.0
    pauses = [c["pause_ns"] for c in cycles]
    report.metrics = {
        "mutators": size.mutators,
        "objects": size.mutators * size.objects_per_mutator,
        "cycles": len(cycles),
        "pause_ns": pauses,
        "pause_ns_p50": percentile(pauses, 50),
        "pause_ns_max": max(pauses, default=None),
        "stw_pause_ns": stw["pause_ns"],
        "pause_ratio_stw_over_concurrent_max": ratio(stw["pause_ns"], max(pauses, default=0)),
        "faults_served": faults,
        "pages_moved": sum(c["pages_moved"] for c in cycles),
        "bytes_copied": sum(c["bytes_copied"] for c in cycles),
        "eagain_retries": sum(c["eagain_retries"] for c in cycles),
        "eexist_races": sum(c["eexist_races"] for c in cycles),
        "access_ns_baseline_p50": percentile(baseline, 50),
        "access_ns_baseline_p99": percentile(baseline, 99),
        "access_ns_during_collection_p50": percentile(during, 50),
        "access_ns_during_collection_p99": percentile(during, 99),
        "access_ns_during_collection_max": int(during.max()) if len(during) else None,
        "accesses_during_collection": int(len(during)),
        "throughput_ops_per_s_baseline": throughput_baseline,
        "throughput_ops_per_s_with_cycles": throughput_cycles,
        "throughput_ratio_with_over_without": ratio(throughput_cycles, throughput_baseline),
        "live_bytes": stw["live_bytes"],
    }
    report.tables.append(concurrent_table(report.metrics))
    if ctx.plot is not None and (len(baseline) or len(during)):
        from demos.plots import latency_histogram

        latency_histogram(
            [("mutators alone", baseline), ("during concurrent collection", during)],
            ctx.plot,
            title=f"remapgc concurrent demo ({ctx.backend} backend): latency of mutator accesses\n"
                  f"{faults:,} faults served in {len(cycles)} cycles; the slow tail is accesses that faulted",
            xlabel="one mutator operation (read+check, write or replace), µs",
        )
        report.plot = str(ctx.plot)


def concurrent_table(m: dict) -> Table:
    table = Table(title=f"{m['mutators']} mutator threads, {m['objects']:,} objects "
                        f"({fmt_bytes(m['live_bytes'])} live), {m['cycles']} concurrent cycles")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("pause per cycle: median / max", f"{fmt_ns(m['pause_ns_p50'])} / {fmt_ns(m['pause_ns_max'])}")
    stw_ratio = m["pause_ratio_stw_over_concurrent_max"]
    table.add_row("stop-the-world pause, same heap",
                  fmt_ns(m["stw_pause_ns"]) + (f" ({stw_ratio:.1f}× the max concurrent pause)" if stw_ratio else ""))
    table.add_row("faults served", fmt_count(m["faults_served"]))
    table.add_row("pages moved / bytes copied", f"{fmt_count(m['pages_moved'])} / {fmt_bytes(m['bytes_copied'])}")
    table.add_row("access latency alone: p50 / p99",
                  f"{fmt_ns(m['access_ns_baseline_p50'])} / {fmt_ns(m['access_ns_baseline_p99'])}")
    table.add_row("access latency during collection: p50 / p99 / max",
                  f"{fmt_ns(m['access_ns_during_collection_p50'])} / {fmt_ns(m['access_ns_during_collection_p99'])}"
                  f" / {fmt_ns(m['access_ns_during_collection_max'])}")
    table.add_row("throughput alone", f"{m['throughput_ops_per_s_baseline']:,.0f} ops/s")
    throughput_ratio = m["throughput_ratio_with_over_without"]
    table.add_row("throughput with cycles running",
                  f"{m['throughput_ops_per_s_with_cycles']:,.0f} ops/s"
                  + (f" ({throughput_ratio:.0%} of alone)" if throughput_ratio is not None else ""))
    return table
