"""``remapgc demo concurrent``: mutator threads keep working while the heap is compacted.

Several mutator threads each own a set of objects linked in a ring; they
read them (checking every byte against a shadow kept in Python), rewrite
them, and replace some with new objects (the old ones become garbage). First
they run alone for a while (the throughput baseline); then the collector
thread runs ``heap.collect(concurrent=True)`` cycle after cycle while they
keep going. A mutator touching a page the compactor has not installed yet
takes a userfault that the heap's fault handler serves. For comparison the
collector then runs the same number of stop-the-world collections, the
mutators still running (they wait out each pause).

Reported per phase (alone, concurrent cycles, stop-the-world cycles): the
pauses, the faults served and how fast the fault handler served them, the
latency of mutator operations while a collection runs (histogram PNG: the
slow tail is the operations that faulted or waited), and mutator throughput.
If this build of the heap has no concurrent collection, the demo says so and
fails.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import defaultdict
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
    WARMUP, ALONE, CONCURRENT, STW, STOP = "warm-up", "alone", "concurrent", "stop-the-world", "stop"


CYCLE_PHASES = ((Phase.CONCURRENT, True), (Phase.STW, False))  # (phase, collect(concurrent=...))


def expected_payload(mutator: int, slot: int, version: int, nbytes: int) -> bytes:
    stamp = STAMP.pack(mutator, slot, version)
    return (stamp * (nbytes // len(stamp) + 1))[:nbytes]


@dataclass
class Shared:
    """What the driver and the mutators share (writes are single assignments: atomic under the GIL)."""

    phase: str = Phase.WARMUP
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
    ops: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # per phase: how long each operation took; in the cycle phases only those that began while a collection ran
    latencies: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
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
                    if phase == Phase.ALONE or during_collection:
                        self.latencies[phase].append(elapsed)
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
        run_phases = drive(ctx, heap, shared, mutators, size, report)
        if not all(p.finished for p in run_phases.values()):
            # A thread is stuck inside the heap: touching the heap again could hang this one too.
            stuck = True
            report.notes.append("a thread is stuck in the heap: final checks skipped, the heap left open")
            return report
        final_mismatches = sum(m.check_all() for m in mutators)
        report.check_raises_nothing("heap.verify() after the cycles", heap.verify)
    finally:
        if not stuck:
            heap.close()
    judge(ctx, report, mutators, run_phases, final_mismatches, size)
    return report


@dataclass
class PhaseRun:
    """One phase of the run: how long it lasted and the collections it ran."""

    name: str
    wall_ns: int
    cycles: list[dict] = field(default_factory=list)
    finished: bool = True


def drive(ctx: DemoContext, heap, shared: Shared, mutators: list[Mutator], size: ConcurrentSize,
          report: DemoReport) -> dict[str, PhaseRun]:
    """Mutators alone, then concurrent cycles, then stop-the-world cycles, the mutators running throughout."""
    threads = [threading.Thread(target=m.run, name=f"mutator-{m.number}", daemon=True) for m in mutators]
    phases: dict[str, PhaseRun] = {}
    for thread in threads:
        thread.start()
    with ctx.progress() as progress:
        task = progress.add_task("mutators alone", total=None)
        time.sleep(size.baseline_seconds / 2)  # not measured: first touches, handle table growth
        shared.phase = Phase.ALONE
        started = time.perf_counter_ns()
        time.sleep(size.baseline_seconds)
        phases[Phase.ALONE] = PhaseRun(Phase.ALONE, time.perf_counter_ns() - started)
        progress.remove_task(task)
        for phase, concurrent in CYCLE_PHASES:
            shared.phase = phase
            phases[phase] = run_cycles(ctx, progress, heap, shared, phase, concurrent, size, report)
            if not phases[phase].finished:
                break
    shared.phase = Phase.STOP
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    alive = [t.name for t in threads if t.is_alive()]
    report.check("mutator threads finished", not alive, f"still running: {', '.join(alive)}" if alive else "")
    phases[Phase.ALONE].finished = not alive
    errors = [f"{m.number}: {type(m.error).__name__}: {m.error}" for m in mutators if m.error]
    report.check("no mutator raised", not errors, "; ".join(errors[:3]))
    return phases


def run_cycles(ctx: DemoContext, progress, heap, shared: Shared, phase: str, concurrent: bool,
               size: ConcurrentSize, report: DemoReport) -> PhaseRun:
    """``size.cycles`` collections from a collector thread, watched with a timeout."""
    cycles: list[dict] = []
    failure: list[BaseException] = []

    def collector() -> None:
        try:
            for _ in range(size.cycles):
                shared.collecting = True
                stats = heap.collect(concurrent=concurrent)
                shared.collecting = False
                cycles.append({**stats_dict(stats), **extra_stats(stats)})
                time.sleep(0.02)  # let the mutators run between cycles too
        except BaseException as exc:
            failure.append(exc)
        finally:
            shared.collecting = False

    task = progress.add_task(f"{phase} cycles", total=size.cycles)
    thread = threading.Thread(target=collector, name=f"collector-{phase}", daemon=True)
    started = time.perf_counter_ns()
    thread.start()
    deadline = time.monotonic() + THREAD_TIMEOUT_S
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.1)
        progress.update(task, completed=len(cycles))
    run = PhaseRun(phase, time.perf_counter_ns() - started, cycles, finished=not thread.is_alive())
    progress.remove_task(task)
    detail = f"{len(cycles)}/{size.cycles}"
    if failure:
        detail += f"; {type(failure[0]).__name__}: {failure[0]}"
    if not run.finished:
        detail += f"; the collector is still running after {THREAD_TIMEOUT_S:.0f} s"
    report.check(f"every {phase} cycle completed", run.finished and not failure and len(cycles) == size.cycles,
                 detail)
    return run


def extra_stats(stats) -> dict[str, int]:
    """What a concurrent collection reports beyond GCStats (fault service latency), when it does."""
    names = ("fault_p50_ns", "fault_p99_ns", "fault_max_ns", "install_ns")
    return {name: int(getattr(stats, name)) for name in names if hasattr(stats, name)}


def percentile(values, q: float) -> int | None:
    return int(np.percentile(values, q)) if len(values) else None


def judge(ctx: DemoContext, report: DemoReport, mutators: list[Mutator], phases: dict[str, PhaseRun],
          final_mismatches: int, size: ConcurrentSize) -> None:
    mismatches = [text for m in mutators for text in m.mismatches]
    total_ops = sum(sum(m.ops.values()) for m in mutators)
    report.check("every mutator read matched its shadow", not mismatches,
                 f"{total_ops:,} operations" if not mismatches else f"{len(mismatches)} mismatches, first: {mismatches[0]}")
    report.check("every object matches its shadow after the cycles", final_mismatches == 0,
                 f"{size.mutators * size.objects_per_mutator:,} objects")
    concurrent_cycles = phases[Phase.CONCURRENT].cycles
    faults = sum(c["faults_served"] for c in concurrent_cycles)
    report.check("mutators faulted on uninstalled pages and were served", faults > 0, f"{faults:,} faults served")

    latencies = {name: np.array([x for m in mutators for x in m.latencies[name]], dtype=np.int64) for name in phases}
    throughput = {name: sum(m.ops[name] for m in mutators) / (run.wall_ns / 1e9) if run.wall_ns else 0.0
                  for name, run in phases.items()}
    metrics: dict = {"mutators": size.mutators, "objects": size.mutators * size.objects_per_mutator,
                     "faults_served": faults}
    for name, run in phases.items():
        key = name.replace("-", "_")
        pauses = [c["pause_ns"] for c in run.cycles]
        metrics.update({
            f"{key}_cycles": len(run.cycles),
            f"{key}_pause_ns_p50": percentile(pauses, 50),
            f"{key}_pause_ns_max": max(pauses, default=None),
            f"{key}_ops_per_s": throughput[name],
            f"{key}_throughput_ratio": ratio(throughput[name], throughput[Phase.ALONE]),
            f"{key}_op_ns_p50": percentile(latencies[name], 50),
            f"{key}_op_ns_p99": percentile(latencies[name], 99),
            f"{key}_op_ns_max": int(latencies[name].max()) if len(latencies[name]) else None,
            f"{key}_pages_moved": sum(c["pages_moved"] for c in run.cycles),
            f"{key}_bytes_copied": sum(c["bytes_copied"] for c in run.cycles),
        })
    handler = [c for c in concurrent_cycles if c.get("fault_p50_ns")]
    metrics["fault_service_ns_p50_median"] = percentile([c["fault_p50_ns"] for c in handler], 50)
    metrics["fault_service_ns_p99_max"] = max((c["fault_p99_ns"] for c in handler), default=None)
    metrics["eagain_retries"] = sum(c["eagain_retries"] for c in concurrent_cycles)
    metrics["eexist_races"] = sum(c["eexist_races"] for c in concurrent_cycles)
    metrics["live_bytes"] = (concurrent_cycles or [{"live_bytes": 0}])[-1]["live_bytes"]
    metrics["pause_ratio_stw_over_concurrent_p50"] = ratio(metrics["stop_the_world_pause_ns_p50"] or 0,
                                                           metrics["concurrent_pause_ns_p50"] or 0)
    report.metrics = metrics
    report.tables.append(concurrent_table(metrics))
    if ctx.plot is not None and any(len(v) for v in latencies.values()):
        from demos.plots import latency_histogram

        latency_histogram(
            [("mutators alone", latencies[Phase.ALONE]),
             ("during concurrent collections", latencies[Phase.CONCURRENT]),
             ("during stop-the-world collections", latencies[Phase.STW])],
            ctx.plot,
            title=f"remapgc concurrent demo ({ctx.backend} backend, {size.mutators} mutator threads): "
                  f"how long one mutator operation takes\n{faults:,} faults served in "
                  f"{len(concurrent_cycles)} concurrent cycles; the slow tail waited for a fault or a pause",
            xlabel="one mutator operation (read and check, write, or replace), µs",
        )
        report.plot = str(ctx.plot)


def concurrent_table(m: dict) -> Table:
    table = Table(title=f"{m['mutators']} mutator threads, {m['objects']:,} objects "
                        f"({fmt_bytes(m['live_bytes'])} live)")
    table.add_column("")
    columns = (("alone", "alone"), ("concurrent", "concurrent cycles"), ("stop_the_world", "stop-the-world cycles"))
    for _, title in columns:
        table.add_column(title, justify="right")

    def row(label: str, cell) -> None:
        table.add_row(label, *(cell(key) if key != "alone" else "—" for key, _ in columns))

    row("cycles", lambda k: fmt_count(m[f"{k}_cycles"]))
    row("pause: median / max", lambda k: f"{fmt_ns(m[f'{k}_pause_ns_p50'])} / {fmt_ns(m[f'{k}_pause_ns_max'])}")
    row("pages moved / bytes copied",
        lambda k: f"{fmt_count(m[f'{k}_pages_moved'])} / {fmt_bytes(m[f'{k}_bytes_copied'])}")
    table.add_row("faults served (handler p50 / p99)", "—",
                  f"{fmt_count(m['faults_served'])} ({fmt_ns(m['fault_service_ns_p50_median'])} / "
                  f"{fmt_ns(m['fault_service_ns_p99_max'])})", "—")
    table.add_row("operation latency p50 / p99 / max",
                  *(f"{fmt_ns(m[f'{k}_op_ns_p50'])} / {fmt_ns(m[f'{k}_op_ns_p99'])} / {fmt_ns(m[f'{k}_op_ns_max'])}"
                    for k, _ in columns))
    table.add_row("throughput (ops/s)",
                  *(f"{m[f'{k}_ops_per_s']:,.0f}" + (f" ({m[f'{k}_throughput_ratio']:.0%})" if k != "alone" else "")
                    for k, _ in columns))
    table.caption = ("latency: operations that began while a collection ran; throughput: over each whole phase. "
                     "The mutators are Python threads: the GIL's 5 ms switch interval shows in every p99.")
    return table
