"""``remapgc demo bigarrays``: numpy arrays as large heap objects, compacted without copying a byte.

Each array's bytes are written into a large heap object (``Ref.write``); half
of the arrays are dropped at random and the heap is compacted. The surviving
arrays slide down to close the holes, yet every one of their pages keeps its
physical frame (``h.kernel.page_frames`` before and after) and the collection
copies zero bytes. Run twice: with transparent huge pages (2 MiB-aligned
objects in MADV_HUGEPAGE arenas) and without; and once more with the copying
compactor, the baseline that memmoves every byte and gets new frames. The heap collects once before
the arrays die (its first collection also builds side tables; its pause is
shown apart). Afterwards each array is read back and compared with the
original.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from rich.table import Table

from demos.common import MiB, DemoContext, DemoReport, fmt_bytes, fmt_count, fmt_ns, ratio, stats_dict


@dataclass(frozen=True)
class ArraysSize:
    arrays: int
    smallest_mib: float
    largest_mib: float


SIZES = {
    "small": ArraysSize(arrays=8, smallest_mib=0.5, largest_mib=3),
    "medium": ArraysSize(arrays=32, smallest_mib=1, largest_mib=8),
    "large": ArraysSize(arrays=64, smallest_mib=2, largest_mib=16),
}
DTYPES = (np.float64, np.int32, np.float32, np.int64, np.uint8)


@dataclass
class ArraySpec:
    shape: tuple[int, ...]
    dtype: np.dtype
    seed: int

    def build(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        if np.issubdtype(self.dtype, np.floating):
            return rng.standard_normal(self.shape).astype(self.dtype)
        info = np.iinfo(self.dtype)
        return rng.integers(info.min, info.max, size=self.shape, dtype=self.dtype, endpoint=True)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def plan_arrays(size: ArraysSize, seed: int) -> tuple[list[ArraySpec], np.ndarray]:
    """The arrays to store and which of them die (exactly half, chosen at random)."""
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(size.arrays):
        dtype = np.dtype(DTYPES[index % len(DTYPES)])
        elements = int(rng.uniform(size.smallest_mib, size.largest_mib) * MiB) // dtype.itemsize
        columns = int(rng.choice([1, 3, 64, 256]))
        specs.append(ArraySpec((max(elements // columns, 1), columns), dtype, seed * 1000 + index))
    dies = np.zeros(size.arrays, dtype=bool)
    dies[rng.choice(size.arrays, size.arrays // 2, replace=False)] = True
    return specs, dies


@dataclass(frozen=True)
class Setup:
    """One way of compacting the same arrays."""

    key: str  # prefix of its metrics in --json
    label: str
    thp: bool
    compactor: str


SETUPS = (
    Setup("thp_on", "THP on", thp=True, compactor="remap"),
    Setup("thp_off", "THP off", thp=False, compactor="remap"),
    Setup("copy", "copying", thp=False, compactor="copy"),
)


@dataclass
class ArraysRun:
    setup: "Setup"
    stats: dict
    moved: int  # surviving arrays whose address changed
    pages: int  # pages of surviving arrays
    frames_kept: int  # ... whose frame after equals their frame before
    huge_before: int  # 2 MiB-mapped pages of surviving arrays (sampled one per 2 MiB)
    huge_after: int
    arrays_intact: int
    trace: "PageTrace"


@dataclass
class PageTrace:
    """Every page of the surviving arrays: its virtual page number and its frame, before and after."""

    vpage_before: np.ndarray  # page number relative to the heap's base
    vpage_after: np.ndarray
    frame_before: np.ndarray
    frame_after: np.ndarray

    @classmethod
    def of(cls, page_size: int, base: int, survivors: list[int], before: dict, after: dict,
           frames_before: dict, frames_after: dict) -> "PageTrace":
        def pages(addresses: dict) -> np.ndarray:
            return np.concatenate([(addresses[i] - base) // page_size + np.arange(len(frames_before[i]))
                                   for i in survivors])

        return cls(pages(before), pages(after),
                   np.concatenate([frames_before[i] for i in survivors]),
                   np.concatenate([frames_after[i] for i in survivors]))


def run(ctx: DemoContext) -> DemoReport:
    specs, dies = plan_arrays(SIZES[ctx.size], ctx.seed)
    report = DemoReport("bigarrays", "numpy arrays moved by the kernel, zero bytes copied")
    runs = [compact_arrays(ctx, specs, dies, setup, report) for setup in SETUPS]
    survivors = int((~dies).sum())
    report.metrics = {
        "arrays": len(specs),
        "survivors": survivors,
        "array_bytes": sum(s.nbytes for s in specs),
        **{f"{r.setup.key}_{key}": value for r in runs for key, value in r.stats.items()},
        **{f"{r.setup.key}_{key}": getattr(r, key) for r in runs
           for key in ("moved", "pages", "frames_kept", "huge_before", "huge_after", "arrays_intact")},
    }
    copying = next(r for r in runs if r.setup.compactor == "copy")
    for r in runs:
        if r is not copying:
            report.metrics[f"pause_ratio_copy_over_{r.setup.key}"] = ratio(copying.stats["pause_ns"],
                                                                           r.stats["pause_ns"])
    report.tables.append(arrays_table(specs, dies, runs, report.metrics))
    if ctx.plot is not None:
        from demos.plots import moved_pages

        moved_pages([(r.setup.label, r.trace) for r in runs], ctx.plot,
                    title=f"remapgc bigarrays demo ({ctx.backend} backend): {survivors} surviving arrays, "
                          f"{runs[0].pages:,} pages — new addresses, same physical frames")
        report.plot = str(ctx.plot)
    return report


def compact_arrays(ctx: DemoContext, specs: list[ArraySpec], dies: np.ndarray, setup: "Setup",
                   report: DemoReport) -> ArraysRun:
    label = setup.label
    total = sum(spec.nbytes for spec in specs)
    with ctx.heap(size=max(64 * MiB, 2 * total), thp=setup.thp, compactor=setup.compactor) as heap:
        kernel = heap.kernel
        refs, checksums = store_arrays(ctx, heap, specs, label)
        first_pause = heap.collect().pause_ns  # the heap's first collection also builds its side tables
        for index in np.flatnonzero(dies):
            refs[index] = None
        survivors = [int(i) for i in np.flatnonzero(~dies)]
        addresses = {i: refs[i].address for i in survivors}
        frames = {i: frames_of(kernel, refs[i]) for i in survivors}
        first_frames = {i: kernel.page_info(refs[i].address).frame for i in survivors}  # the same, one by one
        huge_before = sum(huge_pages(kernel, refs[i]) for i in survivors)

        stats = {**stats_dict(heap.collect()), "first_collection_pause_ns": int(first_pause)}

        moved = [i for i in survivors if refs[i].address != addresses[i]]
        frames_after = {i: frames_of(kernel, refs[i]) for i in survivors}
        first_pages_kept = all(kernel.page_info(refs[i].address).frame == first_frames[i] is not None
                               for i in survivors)
        frames_kept = sum(int(np.sum((frames_after[i] == frames[i]) & (frames[i] >= 0))) for i in survivors)
        pages = sum(len(frames[i]) for i in survivors)
        trace = PageTrace.of(kernel.page_size, heap.base, survivors, addresses,
                             {i: refs[i].address for i in survivors}, frames, frames_after)
        huge_after = sum(huge_pages(kernel, refs[i]) for i in survivors)
        intact = [i for i in survivors if read_back(refs[i], specs[i], checksums[i])]
        report.check("exactly the dropped arrays were freed",
                     stats["freed_objects"] == int(dies.sum()) and stats["live_objects"] == len(survivors),
                     f"{stats['freed_objects']} freed", scope=label)
        report.check("arrays moved", len(moved) > 0, f"{len(moved)}/{len(survivors)}", scope=label)
        if setup.compactor == "remap":
            report.check("zero bytes copied", stats["bytes_copied"] == 0,
                         f"{fmt_bytes(stats['bytes_copied'])} copied", scope=label)
            report.check("every page kept its physical frame", frames_kept == pages and first_pages_kept,
                         f"{fmt_count(frames_kept)}/{fmt_count(pages)} pages", scope=label)
        report.check("array contents intact", len(intact) == len(survivors),
                     f"{len(intact)}/{len(survivors)} equal", scope=label)
        report.check("RSS dropped", stats["rss_after"] < stats["rss_before"],
                     f"{fmt_bytes(stats['rss_before'])} → {fmt_bytes(stats['rss_after'])}", scope=label)
        report.check_raises_nothing("heap.verify()", heap.verify, scope=label)
    return ArraysRun(setup, stats, len(moved), pages, frames_kept, huge_before, huge_after, len(intact), trace)


def store_arrays(ctx: DemoContext, heap, specs: list[ArraySpec], label: str) -> tuple[list, list[int]]:
    """Each array's bytes in a large heap object; the Refs (the only roots) and the arrays' checksums."""
    refs: list = []
    checksums: list[int] = []
    with ctx.progress() as progress:
        task = progress.add_task(f"storing arrays ({label})", total=len(specs))
        for spec in specs:
            array = spec.build()
            refs.append(heap.alloc(nbytes=spec.nbytes))
            refs[-1].write(array.tobytes())
            checksums.append(zlib.crc32(array))
            progress.advance(task)
    return refs, checksums


def frames_of(kernel, ref) -> np.ndarray:
    page = kernel.page_size
    first = ref.address // page
    last = (ref.address + ref.nbytes - 1) // page
    return np.asarray(kernel.page_frames(first * page, last - first + 1), dtype=np.int64)


def huge_pages(kernel, ref) -> int:
    """How many of the object's 2 MiB-aligned huge-page slots are mapped by one PMD."""
    hpage = kernel.hpage_size
    start = -(-ref.address // hpage) * hpage
    return sum(kernel.page_info(addr).huge for addr in range(start, ref.address + ref.nbytes - hpage + 1, hpage))


def read_back(ref, spec: ArraySpec, checksum: int) -> bool:
    data = ref.read(spec.nbytes)
    array = np.frombuffer(data, dtype=spec.dtype).reshape(spec.shape)
    return zlib.crc32(array) == checksum and np.array_equal(array, spec.build())


def arrays_table(specs: list[ArraySpec], dies: np.ndarray, runs: list[ArraysRun], metrics: dict) -> Table:
    survivors = int((~dies).sum())
    table = Table(title=f"{len(specs)} arrays ({fmt_bytes(sum(s.nbytes for s in specs))}), "
                        f"{len(specs) - survivors} freed, {survivors} kept")
    table.add_column("")
    for r in runs:
        table.add_column(r.setup.label, justify="right")
    rows = (
        ("arrays moved", lambda r: f"{r.moved}/{survivors}"),
        ("pages moved zero-copy", lambda r: f"{fmt_count(r.stats['pages_moved'])} "
                                            f"({fmt_bytes(r.stats['bytes_moved_zero_copy'])})"),
        ("bytes copied", lambda r: fmt_bytes(r.stats["bytes_copied"])),
        ("frames unchanged", lambda r: f"{fmt_count(r.frames_kept)}/{fmt_count(r.pages)} pages"),
        ("2 MiB mappings before → after", lambda r: f"{r.huge_before} → {r.huge_after}"),
        ("RSS before → after", lambda r: f"{fmt_bytes(r.stats['rss_before'])} → {fmt_bytes(r.stats['rss_after'])}"),
        ("pause", lambda r: fmt_ns(r.stats["pause_ns"])),
        ("first collection (warm-up)", lambda r: fmt_ns(r.stats["first_collection_pause_ns"])),
        ("arrays intact", lambda r: f"{r.arrays_intact}/{survivors}"),
    )
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in runs))
    ratios = [f"{r.setup.label} {metrics[f'pause_ratio_copy_over_{r.setup.key}']:.1f}×" for r in runs
              if metrics.get(f"pause_ratio_copy_over_{r.setup.key}")]
    table.caption = "pause of the copying compactor / pause of page moves: " + ", ".join(ratios)
    return table
