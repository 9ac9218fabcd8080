"""Per-object costs of the collector's C core (heap.core) against the numpy
paths it replaces, in one process, on the issue's small-object workload.

The workload (issue 12): ``--objects`` objects (1M) of 32-256 bytes with 2
reference slots each, laid out in the DefaultObjectModel layout as the
allocator packs them; a random half is alive, linked as a binary tree in
shuffled order (so every reference is a random jump in memory) and rooted at
one object; the dead half forms its own random graph whose slots point
anywhere. Each step runs on the same heap with both implementations:

* mark: heap.mark.mark (level by level, numpy) / heap.core.mark (depth-first, C);
* forwarding table: ``new_by_row[rows] = new_starts`` / heap.core.new_addresses;
* fixup: heap.native.slot_values + model.slot_addresses + kernel.store_words /
  heap.core.fixup (in place; the slots are restored, untimed, after each run);
* roots: AddressIndex.rows + gather / heap.core.forward, over every live address;
* verify: verify's header and reference-target checks in numpy / heap.core.verify_objects;
* mark of a singly linked chain (5000 links): numpy pays a level per link.

    nice -n 10 python -m bench.native_core [--objects 1000000] [--reps 5] [--backends linux,sim]
    nice -n 10 python -m bench.native_core --goals [--objects 1000000] [--backends linux,sim] [--only tiny,concurrent,small]

With ``--goals`` it measures the issue's goals on whole collections through
the Heap API, each with the C core and with the numpy paths (the heap's
``_pause.core`` switched off) in the same process, remap and copy:

* tiny heap: a 64 MiB arena, 500 small objects of which a random 300 are
  dead (the 200 live ones a binary tree), fresh for each run; the
  stop-the-world pause (the best of 3 x --reps runs) against
  the syscalls that cycle needs (register, mremap(DONTUNMAP), one MOVE,
  unregister, MADV_DONTNEED), timed on the same kernel in the same run,
  twice before each tiny heap's collection (the best of all: both see the same load);
* concurrent pause (Linux): ``collect(concurrent=True)`` on 256 KiB objects
  in 512 MiB and 1 GiB arenas (half of the arena used, every other object
  dead) and on 20k live objects of 4-16 KiB in 512 MiB; the pause and its
  phases (mark, plan, flip, precompute, roots);
* small objects: the workload above built with the Heap API (as
  bench/compaction.py builds it), --reps fresh heaps; the best first
  collection in objects/s (all objects), the best second one (nothing new
  dead) in live objects/s; the pause split per phase.

Prints a table of ns per object (per live object for fixup and roots) and
the numpy/C ratio measured side by side (CPU time of the calling thread,
where every step runs: the machine is shared; the wall-clock ratio too), and saves JSON to
bench/results/native_core.json. Each time is the fastest of ``--reps`` runs,
the two implementations alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from heap import core
from heap.alloc import pack
from heap.kernel import MADV_NOHUGEPAGE, open_kernel
from heap.mark import AddressIndex, Workspace, rows_of
from heap.mark import mark as numpy_mark
from heap.native import slot_values
from heap.objects import DEFAULT_MODEL

RESULTS = Path(__file__).resolve().parent / "results" / "native_core.json"
GOALS = Path(__file__).resolve().parent / "results" / "native_core_goals.json"
MiB = 1 << 20
NREFS = 2
CHAIN = 5000


class Workload:
    """The small-object heap, laid out in a fresh mapping of ``kernel``."""

    def __init__(self, kernel, n: int, seed: int = 12):
        rng = np.random.default_rng(seed)
        ps = kernel.page_size
        self.kernel, self.n = kernel, n
        self.totals = 32 + 16 * rng.integers(0, 15, n, dtype=np.int64)  # 32..256 bytes
        self.nrefs = np.full(n, NREFS, dtype=np.int64)
        self.nbytes = self.totals - 16 - 8 * NREFS
        offsets, pages = pack(self.totals, ps, 0)
        self.size = (pages + 1) * ps
        self.base = kernel.mmap(self.size)
        kernel.madvise(self.base, self.size, MADV_NOHUGEPAGE)
        self.starts = self.base + offsets
        self.slot_base = np.arange(n, dtype=np.int64) * NREFS
        # the live half: a binary tree over the live rows in shuffled order
        live = rng.permutation(n)[: n // 2]
        order = rng.permutation(live)
        targets = rng.integers(0, n, (n, NREFS))  # the dead half: slots anywhere
        targets[rng.random((n, NREFS)) < 0.1] = -1
        m = order.size
        child = np.arange(m)[:, None] * 2 + np.arange(1, NREFS + 1)[None, :]
        targets[order] = np.where(child < m, order[np.minimum(child, m - 1)], -1)
        self.expected_live = m
        self.values = np.where(targets >= 0, self.starts[np.maximum(targets, 0)], 0).ravel()
        self.slots = DEFAULT_MODEL.slot_addresses(self.starts, self.nrefs)
        header = DEFAULT_MODEL.header_words(self.nbytes, self.nrefs, self.totals >= ps)
        where = (self.starts[:, None] + 8 * np.arange(2)[None, :]).ravel()
        kernel.store_words(where.astype(np.uint64), header.ravel().astype(np.uint64))
        self.restore_slots()
        self.index = AddressIndex(self.base, self.size)
        self.index.add_many(self.starts, 0)
        self.roots = np.array([self.starts[order[0]]], dtype=np.int64)

    def restore_slots(self) -> None:
        self.kernel.store_words(self.slots.astype(np.uint64), self.values.astype(np.uint64))

    def close(self) -> None:
        self.kernel.munmap(self.base, self.size)


def timed_pair(fn_a, fn_b, reps: int, after=None):
    """The fastest of ``reps`` runs of each of two functions, run alternately
    (a shared machine slows both alike; the fastest run is the least
    disturbed), as (wall ns, CPU ns of this thread) each; ``after`` runs
    untimed after each; their last results. Every step here runs in the
    calling thread, so its CPU time is the work without the waits for a CPU."""
    wall, cpu, out = [float("inf")] * 2, [float("inf")] * 2, [None, None]
    for _ in range(reps):
        for i, fn in enumerate((fn_a, fn_b)):
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            out[i] = fn()
            wall[i] = min(wall[i], time.perf_counter_ns() - t0)
            cpu[i] = min(cpu[i], time.thread_time_ns() - c0)
            if after is not None:
                after()
    return wall, cpu, out


def numpy_verify(w: Workload) -> None:
    k, starts = w.kernel, w.starts
    where = (starts[:, None] + 8 * np.arange(2)[None, :]).ravel()
    words = k.load_words(where.astype(np.uint64)).reshape(-1, 2)
    expect = DEFAULT_MODEL.header_words(w.nbytes, w.nrefs, w.totals >= k.page_size).astype(np.uint64)
    assert not (words != expect).any(axis=1).any()
    values = k.load_words(DEFAULT_MODEL.slot_addresses(starts, w.nrefs).astype(np.uint64)).view(np.int64)
    rows_of(starts, values[values != 0], "reference targets")


def measure(kernel_name: str, n: int, reps: int) -> dict:
    kernel = open_kernel(kernel_name)
    t0 = time.perf_counter()
    w = Workload(kernel, n)
    setup_s = time.perf_counter() - t0
    k, model = kernel, DEFAULT_MODEL
    steps = {}

    def both(name: str, per: int, numpy_fn, core_fn, after=None):
        wall, cpu, (r_np, r_c) = timed_pair(numpy_fn, core_fn, reps, after)
        steps[name] = dict(per=per, numpy_wall_ns=wall[0], core_wall_ns=wall[1], numpy_cpu_ns=cpu[0],
                           core_cpu_ns=cpu[1], numpy_ns_per=cpu[0] / per, core_ns_per=cpu[1] / per,
                           ratio=cpu[0] / cpu[1], wall_ratio=wall[0] / wall[1])
        return r_np, r_c

    ws_np, ws_c = Workspace(), Workspace()
    m_np, m_c = both("mark", n,
                     lambda: numpy_mark(k, model, w.index, ws_np, w.starts, w.nrefs, w.slot_base, w.roots),
                     lambda: core.mark(k, model, w.index, ws_c, w.starts, w.nrefs, w.slot_base, w.roots, w.totals))
    assert int(m_np.live.sum()) == int(m_c.live.sum()) == w.expected_live
    assert (m_np.live == m_c.live).all()
    live_rows = np.flatnonzero(m_c.live)
    nlive = live_rows.size
    offsets, _ = pack(w.totals[live_rows], k.page_size, 0)
    new_starts = w.base + offsets  # the sliding plan: live objects packed in address order

    def np_table():
        t = np.zeros(n, dtype=np.int64)
        t[live_rows] = new_starts
        return t

    reuse = np.zeros(n, dtype=np.int64)
    t_np, t_c = both("forwarding table", n, np_table, lambda: core.new_addresses(n, live_rows, new_starts, reuse))
    assert (t_np == t_c).all()
    new_by_row = t_np

    def np_fixup():
        slots = model.slot_addresses(w.starts[live_rows], w.nrefs[live_rows])
        values = slot_values(live_rows, w.nrefs, w.slot_base, m_c.slot_target, new_by_row)
        k.store_words(slots.view(np.uint64), values.view(np.uint64))

    def core_fixup():
        core.fixup(k, model, live_rows, w.starts[live_rows], w.nrefs, w.slot_base, m_c.slot_target, new_by_row)

    both("fixup", nlive, np_fixup, core_fixup, after=w.restore_slots)
    addrs = w.starts[live_rows]
    r_np, r_c = both("roots (every live address)", nlive,
                     lambda: new_by_row[w.index.rows(w.starts, addrs, "root")],
                     lambda: core.forward(w.index, w.starts, new_by_row, addrs))
    assert (r_np == r_c).all()
    both("verify checks", n, lambda: numpy_verify(w),
         lambda: core.verify_objects(k, model, w.index, w.starts, w.nbytes, w.nrefs, w.totals, k.page_size))
    w.close()
    # a singly linked chain: one numpy level per link, one dependent load chain in C
    c = Workload(kernel, CHAIN)
    c.values = np.where(np.arange(CHAIN * NREFS) % NREFS == 0, np.roll(c.starts, -1).repeat(NREFS), 0)
    c.values[-NREFS] = 0
    c.restore_slots()
    c.roots = c.starts[:1].copy()
    m_np, m_c = both(f"mark, a chain of {CHAIN} links", CHAIN,
                     lambda: numpy_mark(k, model, c.index, Workspace(), c.starts, c.nrefs, c.slot_base, c.roots),
                     lambda: core.mark(k, model, c.index, Workspace(), c.starts, c.nrefs, c.slot_base, c.roots))
    assert m_np.live.all() and m_c.live.all()
    c.close()
    return dict(backend=kernel_name, objects=n, live=int(nlive), setup_s=setup_s, steps=steps)


# --- the goals on whole collections ------------------------------------------------------
def heap_with(kernel_name: str, size: int, compactor: str, use_core: bool):
    from heap import Heap

    heap = Heap(kernel=kernel_name, size=size, compactor=compactor)
    pause = getattr(heap, "_pause", None)
    if pause is not None and hasattr(pause, "core"):
        pause.core = pause.core and use_core
    elif use_core:
        heap.close()
        return None  # this tree's heap has no C core to switch on
    return heap


def syscall_floor(kernel_name: str, reps: int) -> float:
    """ns of the syscalls a tiny remap cycle needs, on a 64 MiB arena with one page in use."""
    from heap.kernel import MADV_DONTNEED

    k = open_kernel(kernel_name)
    size, ps = 64 * MiB, k.page_size
    arena, from_space = k.mmap(size, align=k.hpage_size), k.mmap(size, align=k.hpage_size)
    uffd = k.userfaultfd()
    best = float("inf")
    try:
        for _ in range(reps):
            k.store_words(np.array([arena], dtype=np.uint64), np.array([1], dtype=np.uint64))
            t0 = time.perf_counter_ns()
            uffd.register(arena, size)
            k.mremap(arena, size, from_space, dontunmap=True)
            uffd.move(arena, from_space, ps)
            uffd.unregister(arena, size)
            k.madvise(from_space, size, MADV_DONTNEED)
            best = min(best, time.perf_counter_ns() - t0)
    finally:
        uffd.close()
        k.munmap(arena, size)
        k.munmap(from_space, size)
    return best


def tiny_pause(kernel_name: str, compactor: str, use_core: bool, reps: int, between=None) -> dict | None:
    """The best pause of ``reps`` fresh tiny heaps: 500 small objects, a random
    300 of them dead among the 200 live ones (a binary tree), one collection.
    ``between()`` runs before each (the syscall floor, so that both see the same load)."""
    best, phases = None, None
    for rep in range(reps):
        if between is not None:
            between()
        rng = np.random.default_rng(rep)
        heap = heap_with(kernel_name, 64 * MiB, compactor, use_core)
        if heap is None:
            return None
        with heap:
            block = heap.alloc_many(rng.integers(32, 257, 500), 2)
            live = np.sort(rng.permutation(500)[:200])
            for slot in (0, 1):
                child = 2 * np.arange(200) + 1 + slot
                has = child < 200
                block.set_refs(slot, live[has], block, live[child[has]])
            root = block[int(live[0])]
            del block
            stats = heap.collect()
            assert stats.live_objects == 200 and stats.freed_objects == 300
            if best is None or stats.pause_ns < best.pause_ns:
                best, phases = stats, dict(heap.last_phase_ns)
            del root
    return dict(pause_ns=best.pause_ns, phases=phases, pages_moved=best.pages_moved)


def small_collections(kernel_name: str, compactor: str, use_core: bool, count: int, reps: int) -> dict | None:
    """The small-object workload, ``reps`` fresh heaps: the best first
    collection (half dead) and the best second one (nothing new dead)."""
    from bench.compaction import build_small

    best, cpu = {}, {}
    for rep in range(reps):
        rng = np.random.default_rng(7 + rep)
        heap = heap_with(kernel_name, max(64 * MiB, count * 400), compactor, use_core)
        if heap is None:
            return None
        with heap:
            root = build_small(heap, count, rng)
            for which in ("first", "second"):
                c0 = time.thread_time_ns()
                stats = heap.collect()
                stats.cpu_ns = time.thread_time_ns() - c0  # this thread's CPU in the whole collect() call
                if which not in best or stats.pause_ns < best[which][0].pause_ns:
                    best[which] = (stats, dict(heap.last_phase_ns))
                cpu[which] = min(cpu.get(which, stats.cpu_ns), stats.cpu_ns)
            heap.verify()
            del root
    (first, p1), (second, p2) = best["first"], best["second"]
    objects = first.live_objects + first.freed_objects
    return dict(objects=objects, live=first.live_objects,
                first=dict(pause_ns=first.pause_ns, objects_per_s=objects / (first.pause_ns / 1e9),
                           cpu_ns=cpu["first"], objects_per_cpu_s=objects / (cpu["first"] / 1e9),
                           phases=p1, pages_moved=first.pages_moved, bytes_copied=first.bytes_copied),
                second=dict(pause_ns=second.pause_ns, live_per_s=second.live_objects / (second.pause_ns / 1e9),
                            cpu_ns=cpu["second"], live_per_cpu_s=second.live_objects / (cpu["second"] / 1e9),
                            phases=p2, pages_moved=second.pages_moved, bytes_copied=second.bytes_copied))


def concurrent_pause(kernel_name: str, size: int, lo: int, hi: int, live_bytes: int, reps: int) -> dict:
    """The pause of ``collect(concurrent=True)`` (mark, plan, flip, precompute,
    roots: what mutators wait for) on a heap of ``size`` bytes holding objects
    of ``lo``..``hi`` bytes, every page written, every other one dead (about
    ``live_bytes`` live, held by one object's slots); the best of ``reps`` fresh heaps."""
    from bench.compaction import touch_pages
    from heap import Heap

    best = None
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        with Heap(kernel=kernel_name, size=size, compactor="remap") as heap:
            sizes = rng.integers(lo, hi + 1, max(2, 2 * live_bytes // ((lo + hi) // 2)))
            block = heap.alloc_many(sizes, 0)
            touch_pages(heap, block.addresses, heap.object_model.total_bytes(sizes, np.zeros_like(sizes)))
            live = np.arange(0, sizes.size, 2)
            holder = heap.alloc(8, live.size)
            for j, row in enumerate(live.tolist()):
                holder.set_ref(j, block[row])
            del block
            stats = heap.collect(concurrent=True)
            if best is None or stats.pause_ns < best[0].pause_ns:
                best = (stats, dict(heap.last_phase_ns))
            del holder
    stats, phases = best
    return dict(size=size, live_objects=stats.live_objects, live_bytes=stats.live_bytes, pause_ns=stats.pause_ns,
                pause_ms_per_gib=stats.pause_ns / 1e6 / (2 * stats.live_bytes / (1 << 30)), phases=phases)


def phase_text(phases: dict) -> str:
    return " ".join(f"{k} {v / 1e6:.2f}" for k, v in phases.items())


GOAL_SECTIONS = ("tiny", "concurrent", "small")


def goals(backends: list[str], count: int, reps: int, only: tuple = GOAL_SECTIONS) -> dict:
    out = dict(tiny={}, small={}, concurrent={})
    for b in backends:
        if b == "linux" and "concurrent" in only:  # the concurrent goals are on the real kernel
            cases = [("large 512 MiB", 512 * MiB, 256 << 10, 256 << 10, 128 * MiB),
                     ("large 1 GiB", 1024 * MiB, 256 << 10, 256 << 10, 256 * MiB),
                     ("20k x 4-16 KiB, 512 MiB", 512 * MiB, 4 << 10, 16 << 10, 20000 * (10 << 10))]
            for label, size, lo, hi, live in cases:
                out["concurrent"][label] = concurrent_pause(b, size, lo, hi, live, reps + 1)
        floors = []  # the syscall floor, measured between the tiny pauses (the same load for both)
        for use_core in (True, False):
            impl = "core" if use_core else "numpy"
            r = tiny_pause(b, "remap", use_core, reps * 3,
                           between=lambda: floors.append(syscall_floor(b, 2))) if "tiny" in only else None
            if r is not None:
                out["tiny"].setdefault(b, {})[impl] = r
            for compactor in ("remap", "copy") if "small" in only else ():
                r = small_collections(b, compactor, use_core, count, reps)
                if r is not None:
                    out["small"].setdefault(b, {}).setdefault(impl, {})[compactor] = r
        if floors:
            row = out["tiny"][b]
            row["syscall_floor_ns"] = floor = min(floors)
            for impl in ("core", "numpy"):
                if impl in row:
                    row[impl]["ratio_to_floor"] = row[impl]["pause_ns"] / floor
                    # the pause beyond its phases: entering and leaving the pause, the installer, the hooks
                    row[impl]["outside_phases_ns"] = row[impl]["pause_ns"] - sum(
                        v for k, v in row[impl]["phases"].items() if k != "release")
    print(f"{'tiny heap':10} {'backend':8} {'impl':6} {'pause ms':>9} {'floor ms':>9} {'x floor':>8}  phases (ms)")
    for b, row in out["tiny"].items():
        for impl in ("core", "numpy"):
            if impl in row:
                r = row[impl]
                print(f"{'':10} {b:8} {impl:6} {r['pause_ns'] / 1e6:9.3f} {row['syscall_floor_ns'] / 1e6:9.3f} "
                      f"{r['ratio_to_floor']:8.1f}  {phase_text(r['phases'])} outside {r['outside_phases_ns'] / 1e6:.3f}")
    print(f"\n{'concurrent pause (linux, core)':32} {'live':>6} {'pause ms':>9} {'ms/GiB used':>11}  "
          "phases (ms; pause_ns also holds the cycle's start)")
    for label, r in out["concurrent"].items():
        print(f"{label:32} {r['live_objects']:6d} {r['pause_ns'] / 1e6:9.2f} {r['pause_ms_per_gib']:11.2f}  "
              f"{phase_text({k: v for k, v in r['phases'].items() if k != 'release'})}")
    print(f"\n{'small':10} {'backend':8} {'impl':6} {'compactor':9} {'1st Mobj/s':>10} {'(CPU)':>6} "
          f"{'2nd Mlive/s':>11} {'(CPU)':>6}  phases 1st | 2nd (ms)")
    for b, impls in out["small"].items():
        for impl, comps in impls.items():
            for c, r in comps.items():
                f, s2 = r["first"], r["second"]
                print(f"{'':10} {b:8} {impl:6} {c:9} {f['objects_per_s'] / 1e6:10.2f} "
                      f"{f['objects_per_cpu_s'] / 1e6:6.2f} {s2['live_per_s'] / 1e6:11.2f} "
                      f"{s2['live_per_cpu_s'] / 1e6:6.2f}  {phase_text(f['phases'])} | {phase_text(s2['phases'])}")
    print("(Mobj/s from the pause; (CPU): from the collecting thread's CPU time over the whole collect() call,\n"
          " release included -- less disturbed by the other processes of a shared machine)")
    return out


def print_table(results: list[dict]) -> None:
    print(f"{'backend':8} {'step':28} {'numpy ns/obj':>13} {'C ns/obj':>10} {'numpy/C':>8} {'C Mobj/s':>9} "
          f"{'wall numpy/C':>13}")
    for res in results:
        for name, s in res["steps"].items():
            print(f"{res['backend']:8} {name:28} {s['numpy_ns_per']:13.1f} {s['core_ns_per']:10.1f} "
                  f"{s['ratio']:8.1f} {1e3 / s['core_ns_per']:9.1f} {s['wall_ratio']:13.1f}")
    print("(CPU ns of the calling thread per object of the heap for mark, forwarding table and verify, per live\n"
          " object for fixup and roots; fastest of --reps, numpy and C alternating; wall-clock ratio last)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backends", default="linux,sim")
    ap.add_argument("--goals", action="store_true", help="whole collections through the Heap API (see above)")
    ap.add_argument("--only", default=",".join(GOAL_SECTIONS),
                    help="with --goals: the sections to run, of " + ",".join(GOAL_SECTIONS))
    args = ap.parse_args(argv)
    if not core.COMPILED:
        raise SystemExit("heap._core is not built (pip install -e .)")
    if args.goals:
        only = tuple(args.only.split(","))
        if set(only) - set(GOAL_SECTIONS):
            raise SystemExit(f"--only takes sections of {','.join(GOAL_SECTIONS)}")
        out = goals(args.backends.split(","), args.objects, args.reps, only)
        # a partial run goes beside the full run's JSON, not over it
        dest = GOALS if set(only) == set(GOAL_SECTIONS) else GOALS.with_name(f"native_core_goals_{'_'.join(only)}.json")
        dest.parent.mkdir(exist_ok=True)
        dest.write_text(json.dumps(dict(host=platform.node(), cpus=os.cpu_count(),
                                         when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), args=vars(args),
                                         **out), indent=2) + "\n")
        print(f"saved {dest}")
        return
    results = [measure(b, args.objects, args.reps) for b in args.backends.split(",")]
    print_table(results)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(dict(host=platform.node(), cpus=os.cpu_count(), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       args=vars(args), results=results), indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
