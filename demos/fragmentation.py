"""``remapgc demo fragmentation``: compact a fragmented heap by moving pages, then by copying bytes.

A heap of mixed object sizes (small objects with references, medium
buffers, large page-aligned objects) is filled with random payloads; 70% of
the objects die at random. The same heap, built twice from the same seed, is
compacted once with the page-moving compactor (``compactor="remap"``) and
once with the copying compactor (``compactor="copy"``); each heap has
collected once before the deaths, as a running runtime would have, so the
measured collection is the compaction and not the first-time set-up of the
heap's side tables (that first pause is reported too). Each run checks that
every survivor kept its bytes and its references, that the heap verifies,
that RSS dropped, and (page-moving run) that large survivors kept their
physical frames. The heap map shows page occupancy before and after.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from rich.table import Table

from demos.common import (
    KiB, MiB, DemoContext, DemoReport, fmt_bytes, fmt_count, fmt_ns, ratio, stats_dict,
)

DEATH_RATE = 0.70
PAGE_SIZE = 4096  # both backends' page size (the heap map's unit)


@dataclass(frozen=True)
class SizeClass:
    name: str
    weight: float
    smallest: int
    largest: int
    nrefs: int


SIZE_CLASSES = (
    SizeClass("small", 0.70, 16, 256, 2),
    SizeClass("medium", 0.25, 1 * KiB, 16 * KiB, 1),
    SizeClass("large", 0.05, 64 * KiB, 512 * KiB, 0),
)

OBJECTS = {"small": 1_000, "medium": 10_000, "large": 40_000}
COMPACTORS = ("remap", "copy")


@dataclass
class Population:
    """The heap's objects as the program sees them: what it allocated and what survives."""

    sizes: np.ndarray
    nrefs: np.ndarray
    dies: np.ndarray
    slot_targets: list[list[int]]  # object i's slot j refers to object slot_targets[i][j]
    payload_pool: bytes  # payloads are slices of this: distinct, reproducible, cheap to make

    @classmethod
    def generate(cls, count: int, seed: int) -> "Population":
        rng = np.random.default_rng(seed)
        classes = rng.choice(len(SIZE_CLASSES), size=count, p=[c.weight for c in SIZE_CLASSES])
        sizes = np.empty(count, dtype=np.int64)
        nrefs = np.empty(count, dtype=np.int64)
        for index, size_class in enumerate(SIZE_CLASSES):
            chosen = classes == index
            sizes[chosen] = rng.integers(size_class.smallest, size_class.largest + 1, chosen.sum())
            nrefs[chosen] = size_class.nrefs
        dies = rng.random(count) < DEATH_RATE
        survivors = np.flatnonzero(~dies)
        # Survivors point only at survivors (so exactly the chosen 70% die); the
        # dead point anywhere, so a collection must also ignore dead-to-live edges.
        slot_targets = [
            [int(rng.choice(survivors if not dies[i] else count)) for _ in range(nrefs[i])]
            for i in range(count)
        ]
        pool = rng.bytes(int(sizes.max()) * 2)
        return cls(sizes, nrefs, dies, slot_targets, pool)

    def payload(self, index: int) -> bytes:
        size = int(self.sizes[index])
        start = (index * 7919) % (len(self.payload_pool) - size)
        body = self.payload_pool[start:start + size]
        return (index.to_bytes(8, "little") + body[8:]) if size >= 8 else body

    def checksum(self, index: int) -> int:
        return zlib.crc32(self.payload(index))

    @property
    def survivors(self) -> np.ndarray:
        return np.flatnonzero(~self.dies)

    @property
    def total_bytes(self) -> int:
        return int(self.sizes.sum())


@dataclass
class CompactionRun:
    compactor: str
    stats: dict
    before: np.ndarray  # occupancy per page before compaction
    after: np.ndarray
    large_moved: int  # page-owning survivors (footprint >= a page) whose address changed
    large_kept_frames: int  # ... of which every page kept its physical frame
    phases: dict[str, int]  # nanoseconds per collection phase (mark, plan, flip, ...)


def run(ctx: DemoContext) -> DemoReport:
    population = Population.generate(OBJECTS[ctx.size], ctx.seed)
    report = DemoReport("fragmentation", "page moves vs byte copies on a fragmented heap")
    runs = [compact_once(ctx, population, compactor, report) for compactor in COMPACTORS]
    remap, copy = runs
    report.check("both compactors kept the same live bytes",
                 remap.stats["live_bytes"] == copy.stats["live_bytes"],
                 f"{fmt_bytes(remap.stats['live_bytes'])} vs {fmt_bytes(copy.stats['live_bytes'])}")
    report.check("pages moved zero-copy", remap.stats["pages_moved"] > 0 and remap.stats["bytes_moved_zero_copy"] > 0,
                 f"{fmt_count(remap.stats['pages_moved'])}", scope="remap")
    report.check("moved objects of ≥ 1 page kept their physical frames",
                 remap.large_moved > 0 and remap.large_kept_frames == remap.large_moved,
                 f"{remap.large_kept_frames}/{remap.large_moved}", scope="remap")
    report.metrics = {
        "objects": int(len(population.sizes)),
        "survivors": int(len(population.survivors)),
        "allocated_bytes": population.total_bytes,
        **{f"{run.compactor}_{key}": value for run in runs for key, value in run.stats.items()},
        **{f"{run.compactor}_large_moved": run.large_moved for run in runs},
        **{f"{run.compactor}_large_kept_frames": run.large_kept_frames for run in runs},
        **{f"{run.compactor}_phase_{name}_ns": ns for run in runs for name, ns in run.phases.items()},
        "pause_ratio_copy_over_remap": ratio(copy.stats["pause_ns"], remap.stats["pause_ns"]),
        "total_ratio_copy_over_remap": ratio(copy.stats["total_ns"], remap.stats["total_ns"]),
    }
    report.tables.append(comparison_table(population, runs, report.metrics))
    if ctx.plot is not None:
        from demos.plots import heap_map

        heap_map(
            [(f"before: 70% dead\nRSS {fmt_bytes(remap.stats['rss_before'])}", remap.before),
             (f"after page moves (remap)\nRSS {fmt_bytes(remap.stats['rss_after'])}", remap.after),
             (f"after copying (copy)\nRSS {fmt_bytes(copy.stats['rss_after'])}", copy.after)],
            page_size=PAGE_SIZE, path=ctx.plot,
            title=f"remapgc fragmentation demo ({ctx.backend} backend, {len(population.sizes):,} objects, "
                  f"seed {ctx.seed}): page occupancy",
        )
        report.plot = str(ctx.plot)
    return report



def compact_once(ctx: DemoContext, population: Population, compactor: str, report: DemoReport) -> CompactionRun:
    heap_bytes = max(16 * MiB, 2 * population.total_bytes)
    with ctx.heap(size=heap_bytes, compactor=compactor) as heap:
        page_size = heap.kernel.page_size
        refs = allocate(ctx, heap, population, compactor)
        # A running runtime has collected before: the first collection of a heap
        # also builds its side tables, which would hide the compaction itself.
        first_pause = heap.collect().pause_ns
        base = min(ref.address for ref in refs) // page_size * page_size
        span = int(max(np.array([ref.address for ref in refs]) + footprints(heap, refs))) - base
        npages = -(-span // page_size)
        for index in np.flatnonzero(population.dies):
            refs[index] = None  # the program drops them: 70% of the heap is now garbage
        survivors = population.survivors
        before = occupancy_of(heap, refs, survivors, base, npages, page_size)
        # Objects at least a page long own whole pages (heap.objects): they move whole.
        owners = footprints(heap, [refs[i] for i in survivors]) >= page_size
        large = [int(i) for i in survivors[owners]]
        frames_before = {i: frames_of(heap, refs[i]) for i in large}
        addresses_before = {i: refs[i].address for i in large}

        stats = {**stats_dict(heap.collect()), "first_collection_pause_ns": int(first_pause)}
        phases = dict(getattr(heap, "last_phase_ns", {}))  # the pause split by phase, when the heap reports it

        after = occupancy_of(heap, refs, survivors, base, npages, page_size)
        moved = [i for i in large if refs[i].address != addresses_before[i]]
        kept = [i for i in moved if np.array_equal(frames_of(heap, refs[i]), frames_before[i])]
        dead = int(population.dies.sum())
        report.check("exactly the dropped objects were freed",
                     stats["freed_objects"] == dead and stats["live_objects"] == len(survivors),
                     f"{stats['freed_objects']:,} freed", scope=compactor)
        check_survivors(heap, population, refs, compactor, report)
        report.check("RSS dropped", stats["rss_after"] < stats["rss_before"],
                     f"{fmt_bytes(stats['rss_before'])} → {fmt_bytes(stats['rss_after'])}", scope=compactor)
    return CompactionRun(compactor, stats, before, after, len(moved), len(kept), phases)


def allocate(ctx: DemoContext, heap, population: Population, compactor: str) -> list:
    refs: list = []
    count = len(population.sizes)
    with ctx.progress() as progress:
        task = progress.add_task(f"building the heap ({compactor})", total=2 * count)
        for index in range(count):
            ref = heap.alloc(nbytes=int(population.sizes[index]), nrefs=int(population.nrefs[index]))
            ref.write(population.payload(index))
            refs.append(ref)
            progress.advance(task)
        for index, targets in enumerate(population.slot_targets):
            for slot, target in enumerate(targets):
                refs[index].set_ref(slot, refs[target])
            progress.advance(task)
    return refs


def occupancy_of(heap, refs: list, indices: np.ndarray, base: int, npages: int, page_size: int) -> np.ndarray:
    """Live bytes per page, from where the objects are and how big the heap's object model says they are."""
    from demos.plots import page_occupancy

    starts = np.array([refs[i].address for i in indices], dtype=np.int64)
    lengths = footprints(heap, [refs[i] for i in indices])
    return page_occupancy(starts, lengths, base, npages, page_size)


def footprints(heap, refs: list) -> np.ndarray:
    """Bytes each object occupies in the heap: header, reference slots, payload, padding."""
    nbytes = np.array([ref.nbytes for ref in refs], dtype=np.int64)
    nrefs = np.array([ref.nrefs for ref in refs], dtype=np.int64)
    return np.asarray(heap.object_model.total_bytes(nbytes, nrefs), dtype=np.int64)


def frames_of(heap, ref) -> np.ndarray:
    page_size = heap.kernel.page_size
    first = ref.address // page_size
    last = (ref.address + ref.nbytes - 1) // page_size
    return np.asarray(heap.kernel.page_frames(first * page_size, last - first + 1))


def check_survivors(heap, population: Population, refs: list, compactor: str, report: DemoReport) -> None:
    survivors = population.survivors
    bad_payloads = [int(i) for i in survivors
                    if zlib.crc32(refs[i].read(int(population.sizes[i]))) != population.checksum(int(i))]
    bad_slots = []
    for i in survivors:
        for slot, target in enumerate(population.slot_targets[i]):
            referent = refs[i].get_ref(slot)
            if referent is None or referent.address != refs[target].address:
                bad_slots.append((int(i), slot))
    report.check("every survivor's payload intact", not bad_payloads,
                 f"{len(survivors):,}" if not bad_payloads else f"corrupt: objects {bad_payloads[:5]}…", scope=compactor)
    edges = sum(len(population.slot_targets[i]) for i in survivors)
    report.check("every survivor's references intact", not bad_slots,
                 f"{edges:,}" if not bad_slots else f"wrong: (object, slot) {bad_slots[:5]}…", scope=compactor)
    report.check_raises_nothing("heap.verify()", heap.verify, scope=compactor)


def comparison_table(population: Population, runs: list[CompactionRun], metrics: dict) -> Table:
    table = Table(title=f"{len(population.sizes):,} objects, {fmt_bytes(population.total_bytes)} allocated, "
                        f"{DEATH_RATE:.0%} died")
    table.add_column("")
    for run in runs:
        table.add_column(f"compactor={run.compactor}", justify="right")
    rows = (
        ("live objects", lambda s, r: fmt_count(s["live_objects"])),
        ("live bytes", lambda s, r: fmt_bytes(s["live_bytes"])),
        ("RSS before → after", lambda s, r: f"{fmt_bytes(s['rss_before'])} → {fmt_bytes(s['rss_after'])}"),
        ("pages moved zero-copy", lambda s, r: f"{fmt_count(s['pages_moved'])} ({fmt_bytes(s['bytes_moved_zero_copy'])})"),
        ("bytes copied", lambda s, r: fmt_bytes(s["bytes_copied"])),
        ("objects ≥ 1 page moved / kept frames", lambda s, r: f"{r.large_moved} / {r.large_kept_frames}"),
        ("pause", lambda s, r: fmt_ns(s["pause_ns"])),
        ("total collection time", lambda s, r: fmt_ns(s["total_ns"])),
        ("first collection (warm-up)", lambda s, r: fmt_ns(s["first_collection_pause_ns"])),
    )
    for label, cell in rows:
        table.add_row(label, *(cell(run.stats, run) for run in runs))
    phase_names = list(dict.fromkeys(name for run in runs for name in run.phases))
    for name in phase_names:
        table.add_row(f"  {name}", *(fmt_ns(run.phases.get(name)) if name in run.phases else "—" for run in runs),
                      style="dim")
    pause_ratio = metrics["pause_ratio_copy_over_remap"]
    table.caption = (f"speed ratio (copy pause / remap pause): {pause_ratio:.2f}× — above 1 means page moves won"
                     if pause_ratio else "speed ratio: n/a")
    return table
