"""Random call sequences (hypothesis strategies) over a few small regions.

A generated scenario maps regions A, B, C and E (8 pages each), writes some
of A, opens uffds "u" and "v" and registers B and C (and sometimes E) with
"u", then runs 3-14 random steps: writes, reads, stores and loads of several
pages in one call (across holes and protections: they stop at the first
fault), memmoves, MADV_DONTNEED/FREE, mprotect of a few pages or of a whole
VMA (PROT_NONE included), munmap, mlock (populating or on fault)/munlock,
(un)register, MOVE/COPY/ZEROPAGE with random offsets, lengths and modes, fork
and child exit, and in some sequences one mremap (plain or DONTUNMAP) to a
fresh region N that later steps address too: of part of A/B/C, of the
never-touched E placed right after a (registered) region it may merge with,
or of part of the THP region T (a folio then mapped in two places).
Optionally two regions are 2 MiB MADV_HUGEPAGE ones, so that THP moves,
splits, partial munmap/MADV_FREE of PTE-mapped THPs and the huge zero page are
reached too: T holds a THP (or the huge zero page), U is the registered
destination. Hypothesis shrinks a failing sequence to a minimal one, printed
as pasteable scenario data.
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
    NONE,
    RO,
    RW,
    WP,
    ChildExit,
    Copy,
    Fork,
    Load,
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
    Store,
    Uffd,
    Unregister,
    Write,
    Zeropage,
)

SMALL = ("A", "B", "C", "E")  # A starts unregistered, B and C registered with "u"; E is never written first
HUGE = ("T", "U")  # 2 MiB MADV_HUGEPAGE regions: T a THP (or the huge zero page), U registered
PAGES = 8


def is_huge(addr: str) -> bool:
    return addr[0] in HUGE


@st.composite
def spot(draw, regions=SMALL, max_pages=PAGES + 2):
    """(address, pages): a page of a region and a length that may run past it."""
    region = draw(st.sampled_from(regions))
    if region in HUGE:
        # THP-relevant shapes: the whole PMD, a few pages at its edges or inside it
        off, n = draw(st.sampled_from([(0, HPAGES), (0, 4), (1, 4), (HPAGES - 4, 4), (0, HPAGES - 1),
                                       (HPAGES - 1, 1), (100, 8), (256, 8)]))
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
    whole_vma = st.sampled_from(SMALL)
    return st.one_of(
        anywhere.map(lambda a: Write(*clip(a))),
        anywhere.map(lambda a: Store(*a)),  # one call, may run past the region or across a hole
        anywhere.map(lambda a: Load(*a)),
        anywhere.map(lambda a: Write(*clip(a))),
        anywhere.map(lambda a: Read(*clip(a))),
        # (not onto itself: an open disagreement, see DISAGREEMENTS.md)
        st.tuples(anywhere, anywhere).filter(lambda t: t[0][0] != t[1][0]).map(
            lambda t: Memmove(t[0][0], t[1][0], min(clip(t[0])[1], clip(t[1])[1]))),
        st.tuples(anywhere, st.sampled_from([DONTNEED, DONTNEED, FREE])).map(
            lambda t: Madvise(t[0][0], t[0][1], t[1])),
        st.tuples(anywhere, st.sampled_from([RO, RW])).map(lambda t: Mprotect(t[0][0], t[0][1], t[1])),
        st.tuples(whole_vma, st.sampled_from([NONE, RO, RW, RW])).map(lambda t: Mprotect(t[0], PAGES, t[1])),
        # small holes only: an mmap by the interpreter (>= 128 KiB) never fits in one
        anywhere.map(lambda a: Munmap(a[0], 1 if not is_huge(a[0]) else min(a[1], 4))),
        st.tuples(anywhere, st.booleans()).map(lambda t: Mlock(t[0][0], t[0][1], onfault=t[1])),
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
def scenarios(draw, max_steps: int = 14, thp: bool = True, thp_every: int = 6, min_steps: int = 3):
    with_thp = thp and draw(st.integers(0, thp_every - 1)) == 0  # about 1 in thp_every sequences
    regions = SMALL + (HUGE if with_thp else ())
    steps = [Map(r, PAGES, RO if r == "E" and draw(st.integers(0, 3)) == 0 else RW) for r in SMALL]
    if with_thp:
        steps += [Map("T", HPAGES, thp=True), Map("U", HPAGES, thp=True)]
        # a THP written all over, or in its first pages only (the rest zero-filled: a split maps
        # them to the zero page), the huge zero page, or nothing yet
        steps += draw(st.sampled_from([[Write("T", 4)], [Write("T", HPAGES)], [Read("T")], [Write("T", 4)], []]))
    steps += [Write("A", draw(st.integers(1, PAGES)))]
    steps += [Uffd("u"), Uffd("v"), Register("B", PAGES), Register("C", PAGES)]
    if draw(st.booleans()):
        steps.append(Register("E", PAGES))
    if with_thp:
        steps.append(Register("U", HPAGES))
    with_mremap = draw(st.integers(0, 3)) == 0  # about 1 in 4: one mremap to a fresh region N
    if with_mremap:
        regions += ("N",)
    body = draw(st.lists(steps_strategy(regions), min_size=min_steps, max_size=max_steps))
    if with_mremap:
        where = draw(st.integers(0, len(body)))
        body.insert(where, draw(mremap_step(with_thp)))
    return Scenario("generated", tuple(steps) + tuple(legal_process_steps(body)))


@st.composite
def mremap_step(draw, with_thp: bool):
    """One mremap to the fresh region N: part of a small region; the never-touched E
    right after a region (a VMA without anon_vma takes the pgoff of its new place and
    may merge there, with a registered neighbour too); or part of the THP T."""
    kind = draw(st.sampled_from(["thp", "untouched", "part"] if with_thp else ["untouched", "part"]))
    dontunmap = draw(st.booleans())
    if kind == "untouched":
        return Mremap("E", PAGES, "N", dontunmap=dontunmap, after=draw(st.sampled_from(["A", "B", "C"])))
    if kind == "thp":
        off, n = draw(st.sampled_from([(0, 8), (256, 8), (HPAGES - 8, 8), (100, 4)]))
        return Mremap(f"T+{off}", n, "N", dontunmap=dontunmap)
    source, pages = draw(spot(SMALL))
    return Mremap(source, min(pages, PAGES), "N", dontunmap=dontunmap)


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
