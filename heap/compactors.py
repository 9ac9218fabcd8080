"""What each compactor does around the shared pause (heap.pause).

* ``remap`` (stop-the-world): the pause with the arena registered first
  (docs/design.md, "The pause"); in the from-space, where no mutator can see
  it, slide the sparse pages' live objects down into the first sparse pages
  and fix every reference slot; then the heap installs every to-space page
  (``PageInstaller``: one UFFDIO_MOVE per contiguous run, all runs in one
  batched call) before the pause ends. When no page would move whole, the
  to-space is built in the arena itself (``slide_in_place``), nothing is
  flipped or installed: a collection where nothing died costs its mark and
  plan; one where every unit is sparse costs what the copying compactor's
  does (moving pages would only add the flip and the MOVEs to the copies).
* ``concurrent``: in heap.concurrent (``concurrent_pause``).
* ``copy``: mark; slide every live object down with one ordered batch of
  memmoves; fix the slots; release the freed tail (inside the pause: it is
  arena memory). Used when userfaultfd is unusable, and the baseline of
  every benchmark.
"""

from __future__ import annotations

import numpy as np

from . import core
from .alloc import round_up
from .install import PageInstaller, evacuate
from .kernel import MADV_DONTNEED
from .pause import Collection, Pause, kept_rows


def remap_pause(pause: Pause, col: Collection) -> PageInstaller | None:
    """The stop-the-world remap compactor's pause up to the install: returns
    the installer of the to-space pages (None: the to-space was built in the
    arena, nothing to install). RemapRefused: nothing changed."""
    k, spaces, stats = pause.kernel, pause.spaces, col.stats
    base, fs, ps = spaces.base, spaces.from_space, k.page_size

    def fixup(plan, marking, old, new_by_row, ev):
        if plan.in_arena:  # the to-space is built in the arena: no flip, no evacuation into the from-space
            ev.update(slots=slide_in_place(pause, plan, marking, old, new_by_row, stats), evacuated_bytes=0)
            return
        rows = plan.live_rows
        locations = fs + (old["start"][rows] - base)
        locations[plan.evacuated] = fs + plan.evac_to
        kept = kept_rows(plan, base, ps)  # the first objects lie in the prefix left in the arena
        locations[:kept] = plan.new_starts[:kept]
        slots = None
        try:
            if pause.core:  # evacuation and fixup in one compiled pass (heap.core.slide), plan order
                slots = core.fixup(k, pause.model, rows[:kept], locations[:kept], old["nrefs"], marking.slot_base,
                                   marking.slot_target, new_by_row) if kept else 0
                moved, flipped = core.slide(k, pause.model, rows[kept:], old["start"], locations[kept:], old["total"],
                                            old["nrefs"], marking.slot_base, marking.slot_target, new_by_row,
                                            src_offset=fs - base)
                stats.bytes_copied += moved
                slots += flipped
            else:
                stats.bytes_copied += evacuate(k, plan, old["total"], fs)
        except OSError:
            spaces.unflip()
            raise
        if plan.last_object_end:  # bump allocation resumes there: the rest of its page must read zero
            end = int(locations[-1] + old["total"][rows[-1]])
            k.store(end, bytes(round_up(end - fs, ps) + fs - end))
        if slots is None:
            slots = pause.fixup(plan, marking, old, new_by_row, locations)
        ev.update(slots=slots, evacuated_bytes=stats.bytes_copied)

    # the roots are forwarded inside "fixup" too (one event): the phase is everything between the flip and the install
    plan, _ = pause.remap(col, register_first=pause.stw_register_first, prepare_phase="fixup", prepare=fixup,
                          roots_phase=None, keep_in_place=True)
    return None if plan.in_arena else PageInstaller(k, spaces.uffd, plan, base, fs)


def slide_in_place(pause: Pause, plan, marking, old, new_by_row, stats) -> int:
    """Build the to-space in the arena itself: slide the objects that move
    down (one ordered batch of memmoves, address order: none lands on one not
    yet moved), clear the rest of the last object's page, fix every slot
    (none when nothing moved). Returns the slots written."""
    k, a, ps = pause.kernel, pause.alloc, pause.kernel.page_size
    base = a.base
    rows = plan.live_rows
    slots = 0
    if plan.identity:  # nothing moves: no slide, no slot changes
        rows = rows[:0]
    elif pause.core:  # the slide and the fixup in one compiled pass (heap.core.slide)
        moved, slots = core.slide(k, pause.model, rows, old["start"], plan.new_starts, old["total"], old["nrefs"],
                                  marking.slot_base, marking.slot_target, new_by_row)
        stats.bytes_copied += moved
        rows = rows[:0]
    srcs = old["start"][rows]
    # objects only slide down, in address order: once one moves, every one after it does
    # (or lies where it is, a memmove of nothing): one slice from the first mover, no masks
    first = int(np.argmax(srcs != plan.new_starts)) if rows.size else 0
    if rows.size and srcs[first] != plan.new_starts[first]:
        lengths = old["total"][rows[first:]]
        k.copy_ranges(plan.new_starts[first:], srcs[first:], lengths)
        stats.bytes_copied += int(lengths @ (srcs[first:] != plan.new_starts[first:]))  # those that moved
        slots = pause.fixup(plan, marking, old, new_by_row, plan.new_starts)
    if plan.last_object_end:  # bump allocation resumes there: the rest of its page must read zero
        end = plan.last_object_end
        k.store(end, bytes(round_up(end - base, ps) + base - end))
    # the pages above the to-space hold only the dead (and what slid down): released
    # (with THP, the huge page under the old top may reach past it)
    unit = a.hpage_pages or 1
    dead_end = min(-(-a.used_pages // unit) * unit, a.size // ps)
    if dead_end > plan.end_pages:
        k.madvise(base + plan.end_pages * ps, (dead_end - plan.end_pages) * ps, MADV_DONTNEED)
    return slots


def copy_collect(pause: Pause, col: Collection) -> None:
    """The copying compactor, whole (it has no install after its pause)."""
    k, a, stats, clock = pause.kernel, pause.alloc, col.stats, col.clock
    ps, base = a.page_size, a.base
    old_top = a.top
    old, marking = pause.mark(col)
    plan, new_by_row = pause.plan_slide(old, marking, col)
    pause.update_scanners(old, plan, new_by_row)  # before anything moves: a failure leaves nothing to undo
    rows = plan.live_rows
    slots = None
    with clock.phase("install") as ev:
        if plan.identity or pause.core:  # nothing moves; or the slide and the fixup in one compiled pass
            moved, slots = (0, 0) if plan.identity else core.slide(
                k, pause.model, rows, old["start"], plan.new_starts, old["total"], old["nrefs"], marking.slot_base,
                marking.slot_target, new_by_row)
            stats.bytes_copied += moved
            ev.update(bytes=moved)
        else:
            srcs = old["start"][rows]
            moving = srcs != plan.new_starts
            lengths = old["total"][rows][moving]
            k.copy_ranges(plan.new_starts[moving].astype(np.uint64), srcs[moving].astype(np.uint64),
                          lengths.astype(np.uint64))
            stats.bytes_copied += int(lengths.sum())
            ev.update(objects_moved=int(moving.sum()), bytes=int(lengths.sum()))
    with clock.phase("fixup") as ev:
        if slots is None:
            slots = pause.fixup(plan, marking, old, new_by_row, plan.new_starts)
        pause.forward_and_commit(old, plan, new_by_row)
        ev.update(slots=slots)
    new_top = base + plan.end_pages * ps
    with clock.phase("release") as ev:
        if plan.last_object_end:
            tail = round_up(plan.last_object_end - base, ps) + base - plan.last_object_end
            k.store(plan.last_object_end, bytes(tail))
        # with THP, the huge page under the old top may reach past it
        unit = a.hpage_pages * ps if a.hpage_pages else ps
        old_end = min(base + round_up(old_top - base, unit), a.end)
        if old_end > new_top:
            k.madvise(new_top, old_end - new_top, MADV_DONTNEED)
        ev.update(released_bytes=max(old_end - new_top, 0))
