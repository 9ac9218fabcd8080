"""The pause every compactor shares, and the end of every collection.

A collection (docs/design.md, "The pause") runs with the heap lock held and
no mutator access in flight. Every compactor goes through the same steps,
which live here once: read the **roots** (the handle table and the root
scanners), **mark** from them, **plan** the new addresses (``plan_remap``
for the compactors that move pages, ``plan_slide`` for the copying one),
**forward** the roots to the new addresses, and **commit** the new layout to
the side tables. ``remap`` is the whole pause of both page-moving compactors
(stop-the-world and concurrent): mark, plan, flip, the compactor's own
preparation, forward and commit. ``end`` closes every collection the same
way: release the from-space if owed, total time, RSS after, the phase
events, ``gc_done``.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable

import numpy as np

from . import core
from .alloc import Allocator, ObjectTable
from .events import get_logger
from .mark import IMMEDIATE, AddressIndex, Workspace, mark
from .native import expand, slot_values
from .objects import ObjectModel
from .pinning import pinned_units, plan_around_pins
from .plan import SPARSE_KEEP, Plan, plan_remap, plan_slide
from .roots import HandleTable
from .spaces import Spaces
from .stats import GCStats, PhaseClock

log = get_logger("remapgc.heap")

# Objects from which the plan writes into the workspace's retained buffers: 8192 rows make
# arrays of 64 KiB, about where fresh ones start coming from new pages (each a page fault)
RETAIN_PLAN_ROWS = 8192


class Collection:
    """One collection, from the start of its pause to its end: its stats and its phase clock."""

    __slots__ = ("stats", "clock", "t0", "info")

    def __init__(self, stats: GCStats, compactor: str):
        self.stats = stats
        self.clock = PhaseClock(compactor)
        self.t0 = time.perf_counter_ns()
        self.info = None  # heap.hooks.CollectionInfo when the host registered hooks or callbacks

    def pause_over(self) -> None:
        self.stats.pause_ns = time.perf_counter_ns() - self.t0


class python_gc_held:
    """``with python_gc_held():`` around a pause: Python's cyclic collector does
    not start inside it. An allocation in the pause would otherwise run a
    generation's collection there (0.2-1.7 ms seen inside concurrent pauses)
    and, on the collecting thread, the finalizers of unrelated garbage, halfway
    through a collection. The collector runs at the first allocation after.
    Left alone when it is already disabled (the host's choice); a host that
    disables it from another thread during a pause finds it enabled again."""

    __slots__ = ("held",)

    def __enter__(self) -> None:
        self.held = gc.isenabled()
        if self.held:
            gc.disable()

    def __exit__(self, *exc) -> None:
        if self.held:
            gc.enable()


class Pause:
    """The heap's collection steps over its parts (which the heap owns and
    passes in): roots, mark, plan, forward, commit; and the record of past
    collections (``collections``, ``last_phase_ns``, ``last_events``)."""

    def __init__(self, kernel, model: ObjectModel, spaces: Spaces, alloc: Allocator, table: ObjectTable,
                 index: AddressIndex, work: Workspace, handles: HandleTable, scanners: list, dense: float,
                 host: Callable = lambda fn, *args: fn(*args)):
        self.kernel = kernel
        self.model = model
        self.spaces = spaces
        self.alloc = alloc
        self.table = table
        self.index = index
        self.work = work
        self.handles = handles
        self.scanners = scanners  # the heap's list: scanners added later take part
        # runs host code (a root scanner) so that it cannot call the heap back (heap.hooks.Hooks.run_host)
        self.host = host
        self.dense = dense
        # with THP: dead bytes that sparse huge units of large objects may keep by moving
        # whole instead of being copied out, as a fraction of the live bytes (heap.plan)
        self.sparse_keep = SPARSE_KEEP
        # the stop-the-world flip's order (heap.spaces.Spaces.flip). mremap first: measured on
        # Linux 6.18 (bench.remap_choices, 512 MiB of 4 KiB pages) the flip takes 0.2 ms instead
        # of 1.2-1.3 ms (a registered VMA's mremap moves PTE by PTE) and the install is no slower
        self.stw_register_first = False
        self.pins = None  # heap.pinning.PinTable once the host pinned something
        # leave the dense prefix in place (dense_prefix): neither flipped nor installed
        self.keep_prefix = True
        # the per-object work (mark, forwarding, fixup, root forwarding) in C (heap.core)
        # where the backend and the object model allow it; else the numpy paths
        self.core = core.supports(kernel, model)
        self._forwarding = np.zeros(0, dtype=np.int64)  # new_by_row, kept between collections
        self.collections = 0  # collections whose pause is over (an epoch: addresses may have changed)
        self.last_phase_ns: dict[str, int] = {}
        self.last_events: list[dict] = []

    # -- the steps -------------------------------------------------------------------------
    def roots(self) -> np.ndarray:
        parts = [self.handles.roots()]
        # before the flip: a scanner that fails here leaves nothing to undo
        parts.extend(np.asarray(self.host(s.scan_roots), dtype=np.int64) for s in self.scanners)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def mark(self, col: Collection):
        """Mark from the roots: (the old side-table columns, the marking).
        The columns are views, valid until ``commit`` rewrites them."""
        t, stats = self.table, col.stats
        old = {c: t.column(c) for c in ObjectTable.COLUMNS}
        with col.clock.phase("mark") as ev:
            if self.core:
                marking = core.mark(self.kernel, self.model, self.index, self.work, old["start"], old["nrefs"],
                                    old["slot"], self.roots(), old["total"])
                stats.live_objects, stats.live_bytes = marking.live_objects, marking.live_bytes
            else:
                marking = mark(self.kernel, self.model, self.index, self.work, old["start"], old["nrefs"],
                               old["slot"], self.roots())
                stats.live_objects = int(marking.live.sum())
                stats.live_bytes = int(old["total"][marking.live].sum())
            stats.freed_objects = t.n - stats.live_objects
            ev.update(objects=t.n, live=stats.live_objects, levels=marking.levels, slots=marking.slots_read)
        return old, marking

    def plan_remap(self, old, marking, col: Collection) -> tuple[Plan, np.ndarray]:
        """The plan of the compactors that move pages, and every old row's new address."""
        a = self.alloc
        with col.clock.phase("plan") as ev:
            units = self._pinned_units(old, ev)
            if units is not None:  # heap.pinning: pinned units stay, the stretches between are planned
                plan = plan_around_pins(plan_remap, old["start"], old["total"], marking.live, a.base, a.page_size,
                                        a.hpage_pages, a.used_pages, units, self.dense)
            else:
                budget = int(self.sparse_keep * col.stats.live_bytes) if a.hpage_pages else 0
                # retained buffers only where fresh arrays would be fresh memory (page faults in the pause);
                # a small plan's temporaries come from malloc's free lists, cheaper than a buffer lookup each
                work = self.work if old["start"].size >= RETAIN_PLAN_ROWS else None
                plan = plan_remap(old["start"], old["total"], marking.live, a.base, a.page_size, a.hpage_pages,
                                  a.used_pages, self.dense, budget, work=work)
            col.stats.kept_dead_bytes = plan.kept_dead_bytes
            ev.update(whole_pages=plan.whole_pages, rebuilt_pages=plan.rebuilt_pages,
                      evacuated=plan.evac_from.size, kept_dead_bytes=plan.kept_dead_bytes)
            new_by_row = self._new_by_row(old, plan)  # planning too: timed with it
        return plan, new_by_row

    def plan_slide(self, old, marking, col: Collection) -> tuple[Plan, np.ndarray]:
        """The copying compactor's plan (every live object slid down), and every old row's new address."""
        a = self.alloc
        with col.clock.phase("plan") as ev:
            units = self._pinned_units(old, ev)
            if units is not None:
                plan = plan_around_pins(plan_slide, old["start"], old["total"], marking.live, a.base, a.page_size,
                                        a.hpage_pages, a.used_pages, units)
            else:
                plan = plan_slide(old["start"], old["total"], marking.live, a.base, a.page_size, a.hpage_pages)
            ev.update(pages=plan.end_pages)
            new_by_row = self._new_by_row(old, plan)
        return plan, new_by_row

    def _pinned_units(self, old, ev) -> np.ndarray | None:
        """The page runs that stay in place because of pinned objects
        (heap.pinning; None when none is pinned); the plan event reports them."""
        pins = self.pins
        if pins is None or not pins.count:
            return None
        a = self.alloc
        addrs = pins.addresses()
        ends = addrs + old["total"][self.index.rows(old["start"], addrs, "pinned object")]
        units = pinned_units(addrs, ends, old["start"], old["total"], a.base, a.page_size, a.hpage_pages or 1)
        ev.update(pinned_objects=int(addrs.size), pinned_pages=int((units[:, 1] - units[:, 0]).sum()))
        return units

    def _new_by_row(self, old, plan: Plan) -> np.ndarray:
        """Every old row's new address (0: dead), in a table kept between
        collections (valid until the next collection's plan)."""
        n = old["start"].size
        if self.core:
            if self._forwarding.size < n:
                self._forwarding = np.zeros(max(n, 2 * self._forwarding.size), dtype=np.int64)
            return core.new_addresses(n, plan.live_rows, plan.new_starts, self._forwarding)
        new_by_row = np.zeros(n, dtype=np.int64)
        new_by_row[plan.live_rows] = plan.new_starts
        return new_by_row

    @staticmethod
    def slot_values(plan: Plan, marking, old, new_by_row) -> np.ndarray:
        """The new value of every slot of every live object (new order, object-major);
        an immediate's is meaningless: ``reference_slots`` says which to leave."""
        return slot_values(plan.live_rows, old["nrefs"], marking.slot_base, marking.slot_target, new_by_row)

    @staticmethod
    def reference_slots(plan: Plan, marking, old) -> np.ndarray | None:
        """Over ``slot_values``' slots: False for an immediate (its word stays as
        it is); None when no slot holds one (one pass over the marking's record)."""
        n = old["nrefs"].size
        nslots = int(marking.slot_base[n - 1] + old["nrefs"][n - 1]) if n else 0
        # IMMEDIATE is the least value a slot's record can hold: one reduction, no temporary
        if not nslots or marking.slot_target[:nslots].min() != IMMEDIATE:
            return None
        rows = plan.live_rows
        return marking.slot_target[expand(marking.slot_base[rows], old["nrefs"][rows], 1)] != IMMEDIATE

    def fixup(self, plan: Plan, marking, old, new_by_row: np.ndarray, locations: np.ndarray) -> int:
        """Write the new value of every slot of every live object, the objects
        (``plan.live_rows`` order) lying at ``locations``; returns the slots written."""
        rows = plan.live_rows
        if self.core:
            return core.fixup(self.kernel, self.model, rows, locations, old["nrefs"], marking.slot_base,
                              marking.slot_target, new_by_row)
        slots = self.model.slot_addresses(locations, old["nrefs"][rows])
        values = self.slot_values(plan, marking, old, new_by_row)
        refs = self.reference_slots(plan, marking, old)
        if refs is not None:
            slots, values = slots[refs], values[refs]
        self.kernel.store_words(slots.astype(np.uint64), values.astype(np.uint64))
        return int(slots.size)

    def forwarding(self, old_starts: np.ndarray, new_by_row: np.ndarray):
        """The function that maps old object addresses to new ones (0 -> 0)."""
        index = self.index

        def forward(addrs):
            if self.core:
                return core.forward(index, old_starts, new_by_row, addrs)
            addrs = np.asarray(addrs, dtype=np.int64)
            out = np.zeros(addrs.shape, dtype=np.int64)
            held = addrs != 0
            out[held] = new_by_row[index.rows(old_starts, addrs[held], "root")]
            return out

        return forward

    def update_scanners(self, old, plan: Plan, new_by_row: np.ndarray) -> None:
        """The root scanners rewrite what they hold to the new addresses. This
        runs once the plan is known and before anything moves (the flip, the
        copies), where a failure can still be undone: if a scanner raises (or
        calls the heap back: HookReentry), the scanners already updated are
        given their old addresses back and the collection stops, nothing
        changed. A scanner must rewrite all it holds or raise before rewriting."""
        if not self.scanners:
            return
        forward = self.forwarding(old["start"], new_by_row)
        done = []
        for scanner in self.scanners:
            try:
                self.host(scanner.update_roots, forward)
            except BaseException:
                back = _backward(old["start"], plan)
                for s in reversed(done):
                    self.host(s.update_roots, back)
                raise
            done.append(scanner)

    def forward(self, old_starts: np.ndarray, new_by_row: np.ndarray) -> None:
        """Rewrite every handle to its object's new address (the scanners were updated before the move)."""
        self.handles.forward(self.forwarding(old_starts, new_by_row))

    def commit(self, old, plan: Plan) -> None:
        """The new layout becomes the heap's; ``old`` is stale afterwards."""
        rows = plan.live_rows
        totals = old["total"][rows]
        if rows.size != old["start"].size or not np.array_equal(plan.new_starts, old["start"]):
            nbytes, nrefs = old["nbytes"][rows], old["nrefs"][rows]  # copies first
            self.table.replace(plan.new_starts, nbytes, nrefs, totals)
            self.index.add_many(plan.new_starts, 0)
        # else nothing died and nothing moved: every row and index entry is already right
        a = self.alloc
        self.alloc.reset(plan.new_starts, totals, a.base + plan.end_pages * a.page_size, plan.last_object_end)

    def forward_and_commit(self, old, plan: Plan, new_by_row: np.ndarray) -> None:
        self.forward(old["start"], new_by_row)
        self.commit(old, plan)
        self.collections += 1

    # -- the pause of the page-moving compactors ---------------------------------------------
    def remap(self, col: Collection, *, register_first: bool, prepare_phase: str,
              prepare: Callable, roots_phase: str | None = "roots", keep_in_place: bool = False):
        """Mark, plan, flip the arena to the from-space, ``prepare(plan,
        marking, old, new_by_row, ev)`` (the compactor's own step, timed as
        ``prepare_phase``; it undoes the flip itself if it fails before
        changing anything), then forward the roots and commit the tables
        (timed as ``roots_phase``; None: inside ``prepare_phase``, one event).
        ``keep_in_place`` (stop-the-world): when no page would move whole --
        every live object already sits where the plan puts it (nothing died
        since the last collection, or only above the last live object), or
        every unit is sparse (the plan copies every object anyway) -- the
        to-space is built in the arena itself: nothing is flipped or installed
        (``plan.in_arena``); ``prepare`` slides the objects that move
        down in place and releases the pages above.
        Returns (plan, what ``prepare`` returned). RemapRefused (from the
        flip): nothing was changed."""
        old, marking = self.mark(col)
        plan, new_by_row = self.plan_remap(old, marking, col)
        self.update_scanners(old, plan, new_by_row)
        with col.clock.phase("flip") as ev:
            a = self.alloc
            used = a.used_pages
            if keep_in_place and (plan.whole_pages == 0 or plan.identity
                                  or (plan.new_starts == old["start"][plan.live_rows]).all()):
                plan.in_arena, plan.in_place_pages = True, plan.end_pages
                ev.update(bytes=0, kept_bytes=plan.end_pages * a.page_size)
            else:
                # the dense prefix already where the plan puts it stays: neither flipped nor installed
                keep = dense_prefix(plan, old, a.base, a.page_size, a.hpage_pages or 1, a.size // a.page_size) \
                    if self.keep_prefix else 0
                plan.in_place_pages = keep
                self.spaces.flip(register_first=register_first, keep=keep * a.page_size)
                ev.update(bytes=max(used - keep, 0) * a.page_size, kept_bytes=keep * a.page_size)
            col.stats.pages_kept_in_place = plan.in_place_pages
        with col.clock.phase(prepare_phase) as ev:
            prepared = prepare(plan, marking, old, new_by_row, ev)
            if roots_phase is None:
                self.forward_and_commit(old, plan, new_by_row)
        if roots_phase is not None:
            with col.clock.phase(roots_phase):
                self.forward_and_commit(old, plan, new_by_row)
        return plan, prepared

    # -- inspection and the end of a collection ------------------------------------------------
    def rss(self, *, from_space_too: bool = False) -> int:
        """Resident bytes of the heap's mappings (see ``Spaces.rss``)."""
        a = self.alloc
        return self.spaces.rss(a.top, a.hpage_pages * a.page_size if a.hpage_pages else a.page_size,
                               from_space_too=from_space_too)

    def end(self, col: Collection, release: object | None) -> None:
        """Close a collection once its pause is over and every page is in:
        pay the from-space release it owes (``release``: its token, or None),
        then its total time, RSS after, phase record and ``gc_done``."""
        stats, clock = col.stats, col.clock
        if release is not None:
            with clock.phase("release") as ev:
                ev.update(self.spaces.release_owed(release) or {})
        stats.total_ns = time.perf_counter_ns() - col.t0
        stats.rss_after = self.rss()
        self.last_phase_ns = dict(clock.ns)
        self.last_events = list(clock.events)
        if log.enabled():
            log.debug("gc_done", compactor=clock.compactor, **stats.as_dict())
        if col.info is not None:  # the host's "stop" callbacks (heap.hooks), once the collection is whole
            col.info.ended(stats)


def dense_prefix(plan: Plan, old, base: int, ps: int, unit: int, arena_pages: int) -> int:
    """The pages from the arena's start that a flip may leave where they are
    (docs/design.md, "The pause": flip): the leading whole pieces that the
    plan puts onto themselves, contiguous from page 0 (so every object on
    them keeps its address, and nothing else is planned into them: evacuees
    go above the whole pieces), in whole units, and never the whole arena (a
    flip of nothing). An object reaching past the prefix ends it below that
    object's unit."""
    stay = (plan.piece_dst == plan.piece_src) & ~plan.piece_rebuilt
    if not stay.size or not stay[0] or plan.piece_dst[0] != 0:
        return 0
    k = int(np.argmin(stay)) if not stay.all() else stay.size
    ends = plan.piece_dst[:k] + plan.piece_n[:k]
    gaps = np.flatnonzero(plan.piece_dst[1:k] != ends[:k - 1])
    pages = int(ends[gaps[0]] if gaps.size else ends[-1])
    pages = min(pages // unit * unit, (arena_pages - 1) // unit * unit)
    while pages:
        boundary = base + pages * ps
        i = int(np.searchsorted(plan.new_starts, boundary))  # objects below the boundary: the first i
        if not i:
            return pages
        last = int(plan.new_starts[i - 1])
        if last + int(old["total"][plan.live_rows[i - 1]]) <= boundary:
            return pages
        pages = (last - base) // ps // unit * unit
    return 0


def kept_rows(plan: Plan, base: int, ps: int) -> int:
    """How many of the plan's live objects (its first ones) lie in the kept prefix."""
    return int(np.searchsorted(plan.new_starts, base + plan.in_place_pages * ps)) if plan.in_place_pages else 0


def split_plan(plan: Plan, n: int) -> tuple[Plan, Plan]:
    """The plan's first ``n`` live objects and the rest, each as a plan of
    its own (views; pieces, evacuees and sizes are the whole plan's): the
    kept prefix's objects are fixed in place, the rest go to the install."""
    if not n:
        return plan, plan
    head, tail = slice(None, n), slice(n, None)
    return tuple(dataclasses.replace(plan, live_rows=plan.live_rows[part], new_starts=plan.new_starts[part],
                                     evacuated=plan.evacuated[part]) for part in (head, tail))


def _backward(old_starts: np.ndarray, plan: Plan):
    """The inverse of a plan's forwarding: new addresses back to old ones (0 -> 0)."""
    def back(addrs):
        addrs = np.asarray(addrs, dtype=np.int64)
        out = np.zeros(addrs.shape, dtype=np.int64)
        held = addrs != 0
        if plan.new_starts.size:
            k = np.minimum(np.searchsorted(plan.new_starts, addrs[held]), plan.new_starts.size - 1)
            out[held] = old_starts[plan.live_rows[k]]
        return out
    return back
