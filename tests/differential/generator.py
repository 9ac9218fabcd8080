"""Random call sequences (hypothesis strategies) over a few small regions.

A generated scenario maps regions A, B and C (8 pages each), writes some of
A, opens uffds "u" and "v" and registers B and C with "u", then runs 3-14
random steps: writes, reads, memmoves, MADV_DONTNEED/FREE,
mprotect, munmap, mlock/munlock, (un)register, MOVE/COPY/ZEROPAGE with random
offsets, lengths and modes, fork and child exit, and in some sequences one
mremap (plain or DONTUNMAP) of part of A/B/C to a fresh region N that later
steps address too. Optionally a fourth region T
is a 2 MiB MADV_HUGEPAGE region so that THP moves, splits and the huge zero
page are reached too: T holds a THP (or the huge zero page), U is the
registered destination. Hypothesis shrinks a failing sequence to a minimal one,
printed as pasteable scenario data.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .steps import (
    DONTNEED,
    DONTWAKE,
    FREE,
    HOLES,
    HPAGES,
    MISSING,
    RO,
    RW,
    WP,
    ChildExit,
    Copy,
    Fork,
    Madvise,
    Map,
    Memmove,
    Mlock,
    Move,
    Mprotect,
    Mremap,
    Munlock,
    Munmap,
    Read,
    Register,
    Scenario,
    Uffd,
    Unregister,
    Write,
    Zeropage,
)

SMALL = ("A", "B", "C")  # A starts unregistered; B and C are registered with "u"
HUGE = ("T", "U")  # 2 MiB MADV_HUGEPAGE regions: T a THP (or the huge zero page), U registered
PAGES = 8


def is_huge(addr: str) -> bool:
    return addr[0] in HUGE


@st.composite
def spot(draw, regions=SMALL, max_pages=PAGES + 2):
    """(address, pages): a page of a region and a length that may run past it."""
    region = draw(st.sampled_from(regions))
    if region in HUGE:
        # THP-relevant shapes: the whole PMD, or a few pages at its edges
        off, n = draw(st.sampled_from([(0, HPAGES), (0, 4), (1, 4), (HPAGES - 4, 4), (0, HPAGES - 1)]))
    else:
        off = draw(st.integers(0, PAGES - 1))
        # mostly inside the region; sometimes running past its end (EINVAL/ENOENT paths)
        n = draw(st.one_of(st.integers(1, PAGES - off), st.integers(1, PAGES - off), st.integers(1, max_pages)))
    return f"{region}+{off}", n


def uffd_name():
    return st.sampled_from(["u", "u", "u", "u", "u", "v"])


def clip(a):
    """Writes and reads stay inside small regions (the runner stops at the end anyway)."""
    return a[0], a[1] if is_huge(a[0]) else min(a[1], PAGES - int(a[0].split("+")[1]))


def steps_strategy(regions):
    anywhere = spot(regions)
    small = spot(SMALL)
    dst = spot(tuple(r for r in regions if r not in ("A", "T")))
    move_mode = st.sampled_from([0, 0, 0, HOLES, DONTWAKE, HOLES | DONTWAKE])
    move = st.tuples(dst, anywhere, move_mode, uffd_name()).map(
        lambda t: Move(t[0][0], t[1][0], t[0][1] if is_huge(t[0][0]) else t[1][1], t[2], uffd=t[3]))
    return st.one_of(
        anywhere.map(lambda a: Write(*clip(a))),
        anywhere.map(lambda a: Write(*clip(a))),
        anywhere.map(lambda a: Read(*clip(a))),
        # (not onto itself: an open disagreement, see DISAGREEMENTS.md)
        st.tuples(anywhere, anywhere).filter(lambda t: t[0][0] != t[1][0]).map(
            lambda t: Memmove(t[0][0], t[1][0], min(clip(t[0])[1], clip(t[1])[1]))),
        st.tuples(anywhere, st.sampled_from([DONTNEED, DONTNEED, FREE])).map(
            lambda t: Madvise(t[0][0], t[0][1], t[1])),
        st.tuples(anywhere, st.sampled_from([RO, RW])).map(lambda t: Mprotect(t[0][0], t[0][1], t[1])),
        # small holes only: an mmap by the interpreter (>= 128 KiB) never fits in one
        anywhere.map(lambda a: Munmap(a[0], 1 if not is_huge(a[0]) else min(a[1], 4))),
        anywhere.map(lambda a: Mlock(a[0], a[1], onfault=True)),
        anywhere.map(lambda a: Munlock(a[0], a[1])),
        st.tuples(anywhere, st.sampled_from([MISSING, MISSING, WP]), uffd_name()).map(
            lambda t: Register(t[0][0], t[0][1], t[1], t[2])),
        st.tuples(anywhere, uffd_name()).map(lambda t: Unregister(t[0][0], t[0][1], t[1])),
        move, move, move, move,
        st.tuples(dst, small, uffd_name()).map(lambda t: Copy(t[0][0], t[1][0], min(t[0][1], PAGES), uffd=t[2])),
        st.tuples(dst, uffd_name()).map(lambda t: Zeropage(t[0][0], t[0][1], uffd=t[1])),
        st.just(Fork()),
        st.just(ChildExit()),
    )


@st.composite
def scenarios(draw, max_steps: int = 14, thp: bool = True, thp_every: int = 6):
    with_thp = thp and draw(st.integers(0, thp_every - 1)) == 0  # about 1 in thp_every sequences
    regions = SMALL + (HUGE if with_thp else ())
    steps = [Map(r, PAGES) for r in SMALL]
    if with_thp:
        steps += [Map("T", HPAGES, thp=True), Map("U", HPAGES, thp=True)]
        steps += draw(st.sampled_from([[Write("T", HPAGES)], [Write("T", HPAGES)], [Read("T")], []]))
    steps += [Write("A", draw(st.integers(1, PAGES)))]
    steps += [Uffd("u"), Uffd("v"), Register("B", PAGES), Register("C", PAGES)]
    if with_thp:
        steps.append(Register("U", HPAGES))
    with_mremap = draw(st.integers(0, 3)) == 0  # about 1 in 4: one mremap to a fresh region N
    if with_mremap:
        regions += ("N",)
    body = draw(st.lists(steps_strategy(regions), min_size=3, max_size=max_steps))
    if with_mremap:
        source, pages = draw(spot(SMALL))
        where = draw(st.integers(0, len(body)))
        body.insert(where, Mremap(source, min(pages, PAGES), "N", dontunmap=draw(st.booleans())))
    return Scenario("generated", tuple(steps) + tuple(legal_process_steps(body)))


def legal_process_steps(body):
    """Drop forks while a child lives and exits without one (the runner
    keeps one child "c"), so every generated step means something."""
    out, child = [], False
    for step in body:
        if isinstance(step, Fork):
            if child:
                continue
            child = True
        elif isinstance(step, ChildExit):
            if not child:
                continue
            child = False
        out.append(step)
    return out or [Write("A")]
