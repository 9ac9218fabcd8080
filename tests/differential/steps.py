"""The scenario format: a scenario is plain data, a named list of steps.

A step is one system call (or one ioctl) expressed relative to *labelled
regions*, so the same scenario runs unchanged on every Kernel backend and its
recorded result can be compared between them. Addresses are written

* ``"S+3"``      page 3 of region S (``"S"`` alone is page 0),
* ``("S+3", 5)`` the same plus 5 bytes (unaligned addresses),
* an ``int``     an absolute address (beyond TASK_SIZE, wrapping, ...).

Lengths are given in pages (``pages=``) or, to test validation, in bytes
(``nbytes=``, which wins when given).

A scenario may state what the semantics document
(shared/design/uffdio_move_semantics.md) says must happen: ``expect`` maps a
step's ``tag`` to an outcome string and ``pages`` lists page expectations.
The real kernel is checked against them too, so a runner bug cannot pass by
both backends being wrong in the same way.

Outcome strings (what the runner records for every step):

* ``"ok"`` plus the return value where there is one (``"ok 8192"`` for a
  move/copy/zeropage of 8192 bytes, ``"ok ioctls=0x..."`` for a register),
* ``"EAGAIN moved=4096"`` for a ``UffdError`` (errno name, ``moved``),
* ``"EINVAL"`` for any other ``OSError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Union

from heap.kernel import (
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    UFFD_FEATURE_MOVE,
    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
    UFFDIO_MOVE_MODE_DONTWAKE,
    UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP,
)

Addr = Union[str, int, tuple]

RW = PROT_READ | PROT_WRITE
RO = PROT_READ
RWX = PROT_READ | PROT_WRITE | PROT_EXEC
NONE = PROT_NONE
HOLES = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES
DONTWAKE = UFFDIO_MOVE_MODE_DONTWAKE
MISSING = UFFDIO_REGISTER_MODE_MISSING
WP = UFFDIO_REGISTER_MODE_WP
DONTNEED = MADV_DONTNEED
FREE = MADV_FREE
DONTFORK = MADV_DONTFORK
HUGEPAGE = MADV_HUGEPAGE
NOHUGEPAGE = MADV_NOHUGEPAGE
HPAGES = 512  # pages per 2 MiB PMD on x86-64


class Step:
    """Base of all steps; ``tag`` names a step for expectations."""

    def as_data(self) -> str:
        """The step as Python source, so a reproducer can be pasted back."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                text = value.as_data() if isinstance(value, Step) else repr(value)
                args.append(f"{f.name}={text}")
        return f"{type(self).__name__}({', '.join(args)})"


# --- address space ------------------------------------------------------------
@dataclass(frozen=True)
class Map(Step):
    """mmap an anonymous region. ``offset`` pages past a 2 MiB boundary;
    ``after`` places it directly after another region (adjacent VMAs may
    merge); ``thp`` True/False issues MADV_HUGEPAGE/MADV_NOHUGEPAGE."""

    label: str
    pages: int
    prot: int = RW
    shared: bool = False
    thp: bool | None = None
    offset: int = 0
    after: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class Munmap(Step):
    at: Addr
    pages: int = 1
    tag: str | None = None


@dataclass(frozen=True)
class Mprotect(Step):
    at: Addr
    pages: int
    prot: int
    tag: str | None = None


@dataclass(frozen=True)
class Madvise(Step):
    at: Addr
    pages: int
    advice: int
    tag: str | None = None


@dataclass(frozen=True)
class Mlock(Step):
    at: Addr
    pages: int
    onfault: bool = False
    tag: str | None = None


@dataclass(frozen=True)
class Munlock(Step):
    at: Addr
    pages: int
    tag: str | None = None


@dataclass(frozen=True)
class Mremap(Step):
    """mremap(MAYMOVE|FIXED[|DONTUNMAP]) of ``pages`` at ``at`` to a fresh
    region ``new`` (which is laid out like a Map of that size)."""

    at: Addr
    pages: int
    new: str
    dontunmap: bool = False
    offset: int = 0  # pages past a 2 MiB boundary where ``new`` starts
    after: str | None = None  # place ``new`` directly after this region instead (it may merge with it)
    tag: str | None = None


# --- user-mode memory access --------------------------------------------------------
@dataclass(frozen=True)
class Write(Step):
    """Store a self-describing pattern into each page (one store per page)."""

    at: Addr
    pages: int = 1
    tag: str | None = None


@dataclass(frozen=True)
class Store(Step):
    """One Kernel.store of ``pages`` patterned pages (one call across every
    page, holes and protections included: it stops at the first fault)."""

    at: Addr
    pages: int = 1
    tag: str | None = None


@dataclass(frozen=True)
class Load(Step):
    """One Kernel.load of ``pages`` pages (one call; stops at the first fault)."""

    at: Addr
    pages: int = 1
    tag: str | None = None


@dataclass(frozen=True)
class Memmove(Step):
    """A user-mode memmove of ``pages`` pages (Kernel.memmove): faults like
    loads and stores would."""

    dst: Addr
    src: Addr
    pages: int = 1
    tag: str | None = None


@dataclass(frozen=True)
class Read(Step):
    """Load each page (a read fault maps the zero page); records contents."""

    at: Addr
    pages: int = 1
    tag: str | None = None


# --- processes ---------------------------------------------------------------------
@dataclass(frozen=True)
class Fork(Step):
    child: str = "c"
    tag: str | None = None


@dataclass(frozen=True)
class ChildExit(Step):
    child: str = "c"
    tag: str | None = None


# --- userfaultfd ---------------------------------------------------------------------
@dataclass(frozen=True)
class Uffd(Step):
    name: str = "u"
    features: int = UFFD_FEATURE_MOVE
    tag: str | None = None


@dataclass(frozen=True)
class Register(Step):
    at: Addr
    pages: int
    mode: int = MISSING
    uffd: str = "u"
    tag: str | None = None


@dataclass(frozen=True)
class Unregister(Step):
    at: Addr
    pages: int
    uffd: str = "u"
    tag: str | None = None


@dataclass(frozen=True)
class Move(Step):
    dst: Addr
    src: Addr
    pages: int = 1
    mode: int = 0
    nbytes: int | None = None
    uffd: str = "u"
    tag: str | None = None


@dataclass(frozen=True)
class Copy(Step):
    dst: Addr
    src: Addr
    pages: int = 1
    mode: int = 0
    uffd: str = "u"
    tag: str | None = None


@dataclass(frozen=True)
class Zeropage(Step):
    dst: Addr
    pages: int = 1
    mode: int = 0
    uffd: str = "u"
    tag: str | None = None


@dataclass(frozen=True)
class Wake(Step):
    at: Addr
    pages: int = 1
    uffd: str = "u"
    tag: str | None = None


@dataclass(frozen=True)
class CloseUffd(Step):
    uffd: str = "u"
    tag: str | None = None


# --- threads (wake semantics) -----------------------------------------------------
@dataclass(frozen=True)
class StartReader(Step):
    """A thread loads one page at ``at`` (or, with ``write``, stores a
    pattern into it); the runner waits until the fault shows up on the uffd,
    so the thread is known to be blocked in it."""

    name: str
    at: Addr
    uffd: str = "u"
    write: bool = False
    tag: str | None = None


@dataclass(frozen=True)
class CheckReaders(Step):
    """Record, per reader, whether it finished (and what it read) or is
    still blocked ``grace`` seconds later."""

    grace: float = 0.3
    tag: str | None = None


@dataclass(frozen=True)
class ReadEvents(Step):
    """Record the fault events queued on a uffd (waiting up to ``timeout``
    seconds for the first), as region-relative page addresses."""

    uffd: str = "u"
    timeout: float = 0.2
    tag: str | None = None


@dataclass(frozen=True)
class Background(Step):
    """Run ``step`` in a thread of its own (e.g. an madvise that waits for
    its non-cooperative uffd event to be read); recorded as "blocked" if it
    has not returned ``settle`` seconds later. CheckReaders reports it too."""

    name: str
    step: Step
    settle: float = 0.3
    tag: str | None = None


# --- observation -------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot(Step):
    """Record the state of every page of every region at this point."""

    tag: str


# --- expectations ------------------------------------------------------------------
@dataclass(frozen=True)
class Pages:
    """What the semantics document says about ``count`` pages from ``at``
    at the end of the scenario (or at Snapshot ``when``). ``origin`` is the
    page whose frame the first of them holds (then consecutive), ``"zero"``
    for the zero page, or None for no frame."""

    at: str
    count: int = 1
    state: str | None = None
    origin: str | None = ...  # type: ignore[assignment]
    huge: bool | None = None
    when: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple
    expect: dict = field(default_factory=dict)
    pages: tuple = ()
    doc: str = ""  # which row of the semantics document this covers

    def as_data(self) -> str:
        body = ",\n        ".join(step.as_data() for step in self.steps)
        return f"Scenario({self.name!r}, steps=(\n        {body},\n    ))"


def scenario(name: str, *steps, expect=None, pages=(), doc: str = "") -> Scenario:
    return Scenario(name, tuple(steps), dict(expect or {}), tuple(pages), doc)
