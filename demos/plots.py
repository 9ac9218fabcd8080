"""Pictures the demos draw (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # must precede pyplot: demos run headless (CI, ssh)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def page_occupancy(starts: np.ndarray, lengths: np.ndarray, base: int, npages: int, page_size: int) -> np.ndarray:
    """Bytes of live objects in each page of ``[base, base + npages * page_size)``.

    Objects may span pages: the first and last page get their partial share,
    pages in between get a full page each (a difference array keeps it O(n)).
    """
    occupancy = np.zeros(npages, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64) - base
    ends = starts + np.asarray(lengths, dtype=np.int64)
    keep = (lengths > 0) & (starts >= 0) & (ends <= npages * page_size)
    starts, ends = starts[keep], ends[keep]
    first, last = starts // page_size, (ends - 1) // page_size
    one_page = first == last
    np.add.at(occupancy, first[one_page], (ends - starts)[one_page])
    s, e, f, l = starts[~one_page], ends[~one_page], first[~one_page], last[~one_page]
    np.add.at(occupancy, f, (f + 1) * page_size - s)
    np.add.at(occupancy, l, e - l * page_size)
    full = np.zeros(npages + 1, dtype=np.int64)
    np.add.at(full, f + 1, 1)
    np.add.at(full, l, -1)
    occupancy += np.cumsum(full[:-1]) * page_size
    return occupancy


def heap_map(panels: list[tuple[str, np.ndarray]], page_size: int, path: Path, title: str) -> None:
    """One image per panel: a pixel per page, one pixel row per range of pages.

    Colour is the page's occupancy (live bytes / page size); pages holding no
    live byte are drawn light grey, so compaction shows as colour gathering at
    the top and grey below.
    """
    npages = max(len(occupancy) for _, occupancy in panels)
    row_pages = max(32, int(np.ceil(np.sqrt(npages / 1.5))))
    rows = int(np.ceil(npages / row_pages))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e4e4e4")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels) + 1, 5.4), squeeze=False,
                             layout="constrained")
    image = None
    for column, (ax, (label, occupancy)) in enumerate(zip(axes[0], panels)):
        grid = np.zeros(rows * row_pages)
        grid[: len(occupancy)] = occupancy / page_size
        grid = np.ma.masked_equal(grid.reshape(rows, row_pages), 0)
        image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"page within row ({row_pages} pages = {row_pages * page_size >> 10} KiB a row)", fontsize=8)
        if column == 0:
            ax.set_ylabel("row of pages (heap address grows downward)", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="page occupancy (live bytes / page)")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_histogram(series: list[tuple[str, np.ndarray]], path: Path, title: str, xlabel: str) -> None:
    """Histograms on a log-x axis of latencies in nanoseconds, one per series, overlaid as outlines."""
    values = [np.asarray(v, dtype=np.float64) for _, v in series if len(v)]
    low = max(min(float(v.min()) for v in values), 10.0)
    high = max(float(v.max()) for v in values) * 1.01
    bins = np.logspace(np.log10(low), np.log10(max(high, low * 10)), 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, v in series:
        if len(v):
            # fractions, not counts: the series differ in size by an order of magnitude
            ax.hist(np.asarray(v) / 1e3, bins=bins / 1e3, weights=np.full(len(v), 1 / len(v)), histtype="step",
                    linewidth=1.6, label=f"{label} (n={len(v):,})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of operations")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def moved_pages(traces: list, path: Path, title: str) -> None:
    """Per run, two panels: where each page was and is (virtual page numbers), and its frame before vs after.

    ``traces`` holds (label, trace) with trace arrays vpage_before, vpage_after,
    frame_before, frame_after. Zero-copy shows as every point of the right
    panel lying on the diagonal while the left panel shows the pages moved.
    """
    fig, axes = plt.subplots(len(traces), 2, figsize=(10, 3.6 * len(traces)), squeeze=False, layout="constrained")
    for (label, trace), (where, which) in zip(traces, axes):
        order = np.arange(len(trace.vpage_before))
        where.plot(order, trace.vpage_before, ".", markersize=2, label="before compaction")
        where.plot(order, trace.vpage_after, ".", markersize=2, label="after compaction")
        where.set_xlabel("page of the surviving arrays (in array order)", fontsize=8)
        where.set_ylabel("virtual page (from heap base)", fontsize=8)
        where.set_title(f"{label}: where each page is mapped", fontsize=9)
        where.legend(fontsize=8, markerscale=4)
        present = (trace.frame_before >= 0) & (trace.frame_after >= 0)
        same = present & (trace.frame_before == trace.frame_after)
        which.plot(trace.frame_before[same], trace.frame_after[same], ".", markersize=2, color="tab:green",
                   label=f"same frame ({int(same.sum()):,} pages)")
        if (present & ~same).any():
            which.plot(trace.frame_before[present & ~same], trace.frame_after[present & ~same], "x",
                       markersize=3, color="tab:red", label=f"new frame ({int((present & ~same).sum()):,} pages)")
        which.set_xlabel("physical frame before", fontsize=8)
        which.set_ylabel("physical frame after", fontsize=8)
        which.set_title(f"{label}: physical frame of each page", fontsize=9)
        which.legend(fontsize=8, markerscale=4)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heap_timeline(allocations: list[int], heap_bytes: list[int], collections: list[int], path: Path,
                  title: str) -> None:
    """Heap bytes in use against objects allocated: a sawtooth whose drops are collections."""
    allocations = np.asarray(allocations)
    heap_bytes = np.asarray(heap_bytes)
    collections = np.asarray(collections)
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    ax.plot(allocations, heap_bytes / 1024, linewidth=1, label="heap bytes in use")
    collected = np.flatnonzero(np.diff(collections) > 0) + 1
    ax.plot(allocations[collected], heap_bytes[collected] / 1024, "v", markersize=4, color="tab:red",
            label=f"after a collection ({int(collections[-1]) if len(collections) else 0} in all)")
    ax.set_xlabel("Lisp objects allocated (conses, numbers, strings, closures, frames)")
    ax.set_ylabel("KiB")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
