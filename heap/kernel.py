"""The seam between remapgc and the kernel it runs on (docs/design.md, "Layers").

Everything the heap asks of an operating system goes through the `Kernel`
protocol defined here. ``uffd_backend.LinuxKernel`` drives the real kernel
through compiled C; ``sim_backend.SimKernel`` simulates Linux 6.18 faithfully
enough that the same call sequence gives the same results, and can force rare
races deterministically.

The protocol is syscall-shaped: each method is one system call or one ioctl,
so the simulator can be compared with Linux call by call. Errors are
``OSError`` with the kernel's errno; move/copy/zeropage raise ``UffdError``
whose ``moved`` says how many bytes were done first. The vectorised accesses
(``load_words``, ``store_words``, ``memmove``, ``copy_ranges``,
``resident_bytes``, ``page_frames``) behave as the equivalent user-mode loads
and stores would (they may fault and block), and on Linux release the GIL.

Everything else a backend may offer is declared here too, with its default
in ``KernelBase`` / ``UffdBase`` (both backends subclass them): batched moves,
diagnostics, what a fork needs redone, and the accelerator -- what a backend
does natively for a concurrent cycle, reading the install program in the
layout declared here and in heap/csrc/remapgc_program.h (docs/design.md,
"The accelerator protocol"). A leaf: imports nothing from ``heap`` nor any
backend; ``open_kernel`` lives in ``heap.backends`` (re-exported lazily).
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import numpy as np

# --- mmap / madvise (Linux x86-64 values) ---------------------------------
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

MADV_NORMAL = 0
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4
MLOCK_ONFAULT = 1

# --- userfaultfd (include/uapi/linux/userfaultfd.h, 6.18) -----------------
UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1  # flag to the userfaultfd() syscall
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2

UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_COPY_MODE_WP = 1 << 1
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_MOVE_MODE_DONTWAKE = 1 << 0
UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 1 << 1

# ioctl bit numbers, as reported in uffdio_register.ioctls / uffdio_api.ioctls (the
# request numbers themselves are spelled out only where they are used: in C)
_UFFDIO_REGISTER = 0x00
_UFFDIO_UNREGISTER = 0x01
_UFFDIO_WAKE = 0x02
_UFFDIO_COPY = 0x03
_UFFDIO_ZEROPAGE = 0x04
_UFFDIO_MOVE = 0x05
_UFFDIO_WRITEPROTECT = 0x06
_UFFDIO_CONTINUE = 0x07
_UFFDIO_POISON = 0x08
_UFFDIO_API = 0x3F

UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_EVENT_PAGEFAULT = 0x12

PAGE_SIZE = 4096
HPAGE_SIZE = 2 << 20


# --- argument checks shared by both backends ----------------------------------
# Bad input must give the same exception on every backend (the differential tests compare): both use these.
U64_MAX = (1 << 64) - 1


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a TypeError that ``except ValueError`` also catches."""


def _as_int(value, name: str, lo: int, hi: int, range_text: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range{range_text}")
    return value


def as_u64(value, name: str) -> int:
    """``value`` as an int in [0, 2**64) (what a syscall can take as u64), or a clear error."""
    return _as_int(value, name, 0, U64_MAX, ": must be in [0, 2**64)")


def as_c_int(value, name: str) -> int:
    """``value`` as a C int (prot, advice: the syscall takes an int), or a clear error."""
    return _as_int(value, name, -(1 << 31), (1 << 31) - 1, " for a C int")


def as_u64_array(values, name: str) -> np.ndarray:
    """A contiguous 1-D uint64 array of ``values`` (int64 is taken bit for bit)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.uint64)
    if arr.dtype == np.int64:
        arr = arr.view(np.uint64)
    elif arr.dtype.kind in "iu":
        if arr.dtype.kind == "i" and (arr < 0).any():
            raise ValueError(f"{name} holds negative values")
        arr = arr.astype(np.uint64, copy=False)
    elif arr.dtype == object:
        arr = np.array([as_u64(v, name) for v in arr], dtype=np.uint64)
    else:
        raise ValueError(f"{name} must hold integers, not {arr.dtype}")
    return np.ascontiguousarray(arr)


def as_ranges(dsts, srcs, lengths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three uint64 arrays of a batched call (copy_ranges, move_ranges), equal in size."""
    dsts, srcs, lengths = as_u64_array(dsts, "dsts"), as_u64_array(srcs, "srcs"), as_u64_array(lengths, "lengths")
    if not dsts.size == srcs.size == lengths.size:
        raise ValueError(f"{dsts.size} dsts, {srcs.size} srcs and {lengths.size} lengths: sizes must match")
    return dsts, srcs, lengths


# --- values that cross the seam --------------------------------------------
@dataclass(frozen=True)
class PageInfo:
    """What the kernel's page tables say about one virtual page."""

    state: str  # "none" | "zero" | "present" | "thp" (a page of a large folio)
    frame: int | None  # physical frame id (PFN on Linux); equal frames = same page
    exclusive: bool  # mapped by this address space alone
    huge: bool  # mapped by one PMD: a whole THP or the huge zero page


@dataclass(frozen=True)
class FaultEvent:
    """A userfault reported by ``Uffd.read_events``."""

    address: int  # page-aligned faulting address
    write: bool


class UffdError(OSError):
    """A userfaultfd ioctl failed with ``errno``.

    ``moved``: the bytes the kernel reported done before it stopped (the ioctl's
    ``move``/``copy``/``zeropage`` field when positive, else 0). EAGAIN with
    ``moved > 0`` is a partial move (resume at ``dst + moved``); with 0, a
    non-cooperative event is pending or there was contention (retry later).
    ``index``: in a batched call (``move_ranges``) the range that failed, the
    ones before it done; None for a single call.
    """

    moved: int
    index: int | None

    def __init__(self, err: int, message: str = "", moved: int = 0, index: int | None = None):
        super().__init__(err, message or os.strerror(err))
        self.moved = moved
        self.index = index

    def __reduce__(self):
        return (type(self), (self.errno, self.strerror, self.moved, self.index))

    def __str__(self) -> str:
        where = "" if self.index is None else f", range {self.index}"
        return f"[Errno {self.errno}] {self.strerror} (moved={self.moved}{where})"


class KernelUnsupported(RuntimeError):
    """The requested kernel facility is unusable here; ``str()`` says why."""


# --- the install program, as compiled accelerators read it -------------------------
# Declared once here and once in heap/csrc/remapgc_program.h; a module compiled from that
# header reports what it was built with (``rgc_program_layout``), checked against this at
# import (``check_program_layout``). Page states of a concurrent cycle's to-space pages:
# unprocessed -> processing (claimed by one installer, by compare-and-swap) -> installed.
PAGE_UNPROCESSED, PAGE_PROCESSING, PAGE_INSTALLED = 0, 1, 2
PAGE_STATES = (("PAGE_UNPROCESSED", PAGE_UNPROCESSED), ("PAGE_PROCESSING", PAGE_PROCESSING),
               ("PAGE_INSTALLED", PAGE_INSTALLED))

PROGRAM_LAYOUT_VERSION = 1
# struct rgc_program, field by field in order; every field is 8 bytes (LP64).
PROGRAM_SCALARS = ("npages", "npieces", "nslots", "nsegs",  # int64_t counts
                   "arena", "from_space", "page_size")  # uint64_t addresses and size
# The arrays (struct pointers), read by name from the heap's program object, grouped by the count
# that is their length. Pages are arena page indices [0, npages); slots, segments sorted by to-space page.
PROGRAM_ARRAYS = {
    "npieces": (("piece_dst", "int64"),  # first to-space page of a piece
                ("piece_src", "int64"),  # its first from-space page
                ("piece_rebuilt", "uint8")),  # nonzero: its pages are assembled from evacuees, not moved whole
    "nslots": (("slot_page", "int64"),  # to-space page of a reference slot
               ("slot_off", "int64"),  # its offset in that page
               ("slot_val", "uint64")),  # the value it must hold
    "nsegs": (("seg_page", "int64"),  # an evacuation copy, cut at page boundaries: its to-space page
              ("seg_off", "int64"),  # offset in that page
              ("seg_src", "int64"),  # source address (the from-space original)
              ("seg_len", "int64")),
}


def program_layout() -> dict[str, int]:
    """What a compiled module built from remapgc_program.h must report, by label:
    the version, sizeof(struct rgc_program), each field's offset, the page states."""
    fields = list(PROGRAM_SCALARS) + [name for group in PROGRAM_ARRAYS.values() for name, _ in group]
    return {"PROGRAM_LAYOUT_VERSION": PROGRAM_LAYOUT_VERSION, "sizeof(struct rgc_program)": 8 * len(fields),
            **{f"offsetof(struct rgc_program, {name})": 8 * i for i, name in enumerate(fields)}, **dict(PAGE_STATES)}


def compiled_program_layout(ffi, lib) -> tuple[list[int], str]:
    """What a cffi module built from remapgc_program.h reports: its stamp and field names."""
    out = ffi.new("int64_t[]", 64)
    return list(out[0:lib.rgc_program_layout(out, 64)]), ffi.string(lib.rgc_program_field_names()).decode()


def check_program_layout(values: list[int], field_names: str, module: str) -> None:
    """Raise ImportError naming the first value in which ``module`` disagrees with this
    declaration. ``values`` and ``field_names``: what its rgc_program_layout and
    rgc_program_field_names (remapgc_program.h) report."""
    labels = (["PROGRAM_LAYOUT_VERSION", "sizeof(struct rgc_program)"]
              + [f"offsetof(struct rgc_program, {name})" for name in field_names.split()] + [n for n, _ in PAGE_STATES])
    compiled, expected = dict(zip(labels, values)), program_layout()
    for label in {**expected, **compiled}:
        there, here = compiled.get(label, "missing"), expected.get(label, "missing")
        if there != here:
            raise ImportError(f"{module} was built with another install-program layout than heap.kernel declares: "
                              f"{label} is {there} there, {here} here (rebuild with pip install, or update "
                              f"heap/kernel.py and heap/csrc/remapgc_program.h together)")


# --- the accelerator protocol: what a backend may do natively ----------------------
CHUNK_WALK_STATUS = ("done", "stopped", "refused", "faulted")


class ChunkWalk(NamedTuple):
    """Where an accelerator's chunk walk stopped, and what it did on the way."""

    status: str  # one of CHUNK_WALK_STATUS
    chunk: int  # the chunk it stopped at
    run_page: int  # refused: first page of the refused run (pages before it are in, the rest still claimed)
    errno: int  # refused, faulted: the error
    moved: int  # refused: the MOVE's output field (bytes moved before it stopped, if > 0)
    bytes_copied: int  # into rebuilt pages
    pages: int  # installed
    ioctls: int


@runtime_checkable
class FaultServer(Protocol):
    """A native thread serving a concurrent cycle's common userfaults without the GIL.

    ``read_forwarded(timeout)`` gives the faults it left to the caller: (address, None),
    or (address, the kernel's refusal of its MOVE of that page, which it still holds
    claimed). ``served`` counts installs, zero pages and wakes; ``fresh_pages``, zero
    pages past the program; ``served_latencies()`` is in ns.
    """

    served: int
    pages_moved: int
    pages_copied: int
    bytes_copied: int
    fresh_pages: int

    def start(self) -> None: ...
    def read_forwarded(self, timeout: float) -> list[tuple[int, UffdError | None]]: ...
    def request_stop(self) -> None: ...
    def close(self) -> None: ...  # joins the thread; once nobody reads forwarded faults
    def served_latencies(self) -> np.ndarray: ...


@runtime_checkable
class Accelerator(Protocol):
    """What a backend's uffd does natively for a concurrent cycle.

    ``Uffd.accelerator`` is one of these, or None (the heap then does it all in
    Python). Page states are shared int8 arrays the heap owns, claimed with
    the same compare-and-swap (PAGE_UNPROCESSED -> PAGE_PROCESSING) on both
    sides; ``installed`` is an int64[1] the native side adds its installs to.
    """

    def load_program(self, program: Any, arena: int, from_space: int) -> Any:
        """The cycle's install program as the native side reads it. ``program``
        has ``npages`` and every PROGRAM_ARRAYS array as an attribute."""

    def chunk_walker(self, program: Any, *, state: np.ndarray, installed: np.ndarray, stop: np.ndarray,
                     chunk: int, scratch: int) -> Callable[[int], ChunkWalk]:
        """``walk(first_chunk) -> ChunkWalk``: installs the chunks nobody holds, ``chunk`` pages each
        (built in ``scratch``), until done, stopped (``stop[0]`` set), or a MOVE is refused.
        ``walk.mine`` marks the pages of the chunk it stopped in that it claimed."""

    def fault_server(self, program: Any, *, state: np.ndarray, installed: np.ndarray,
                     max_latencies: int = 1 << 16) -> FaultServer:
        """A native fault server for the cycle (not started)."""

    def self_service(self, program: Any, *, state: np.ndarray, installed: np.ndarray) -> Any:
        """Faults served in the faulting thread's SIGBUS (a ``self_serving`` uffd): start/stop, FaultServer's counts."""


# --- the protocols ----------------------------------------------------------------
@runtime_checkable
class Child(Protocol):
    """A forked child that holds copy-on-write references to our pages."""

    pid: int

    def exit(self) -> None:
        """The child exits and is reaped; its page references drop."""


@runtime_checkable
class Uffd(Protocol):
    """A userfaultfd context (one file descriptor on Linux)."""

    features: int  # the feature bits UFFDIO_API reported back

    def register(self, addr: int, length: int, mode: int = UFFDIO_REGISTER_MODE_MISSING) -> int:
        """Register a range; returns the ioctls bitmask the kernel advertises."""

    def unregister(self, addr: int, length: int) -> None: ...

    def move(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        """UFFDIO_MOVE: returns ``length`` or raises ``UffdError``."""

    def copy(self, dst: int, src: int, length: int, mode: int = 0) -> int: ...
    def zeropage(self, dst: int, length: int, mode: int = 0) -> int: ...
    def wake(self, addr: int, length: int) -> None: ...

    def read_events(self, timeout: float | None = 0) -> list[FaultEvent]:
        """Pending faults; waits up to ``timeout`` seconds (None: forever) for one."""

    def close(self) -> None: ...

    # -- optional capabilities: defaults in UffdBase ---------------------------------
    accelerator: Accelerator | None  # what this uffd does natively for a concurrent cycle; None: nothing

    def move_ranges(self, dsts, srcs, lengths, mode: int = 0) -> int:
        """UFFDIO_MOVE each ``(dsts[i], srcs[i], lengths[i])`` in order (uint64
        arrays); returns the bytes moved. The first range that fails raises its
        ``UffdError`` with ``index`` set (earlier ranges are done)."""


@runtime_checkable
class Kernel(Protocol):
    """The syscall-shaped interface both backends implement."""

    name: str  # "linux" or "sim"
    page_size: int  # 4096
    hpage_size: int  # PMD size, 2 MiB on x86-64

    # -- the mmap family: anonymous memory only -----------------------------
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE, *,
             shared: bool = False, align: int = 0, at: int | None = None,
             noreserve: bool = False) -> int: ...  # noreserve: MAP_NORESERVE, a VMA flag
    def munmap(self, addr: int, length: int) -> None: ...
    def mremap(self, old_addr: int, length: int, new_addr: int, *,
               dontunmap: bool = False) -> int: ...
    def mprotect(self, addr: int, length: int, prot: int) -> None: ...
    def madvise(self, addr: int, length: int, advice: int) -> None: ...
    def mlock(self, addr: int, length: int, *, onfault: bool = False) -> None: ...
    def munlock(self, addr: int, length: int) -> None: ...

    # -- user-mode access: may fault or block; page by page in address order (a fault: EFAULT, done before it)
    def load(self, addr: int, length: int) -> bytes: ...
    def store(self, addr: int, data: bytes) -> None: ...
    def load_words(self, addrs) -> np.ndarray: ...  # one native u64 at each address of ``addrs`` (uint64)
    def store_words(self, addrs, values) -> None: ...  # ``values[i]`` as a u64 at ``addrs[i]``, in order
    def memmove(self, dst: int, src: int, length: int) -> None: ...  # as a user-mode memmove would
    # memmove(dsts[i], srcs[i], lengths[i]) for each i, in order (uint64 arrays): evacuating a
    # million small objects is one call, not a million
    def copy_ranges(self, dsts, srcs, lengths) -> None: ...

    # -- introspection --------------------------------------------------------
    def page_info(self, addr: int) -> PageInfo: ...
    def page_frames(self, addr: int, npages: int) -> np.ndarray: ...  # frame ids (int64; -1 = no frame)
    def resident_bytes(self, addr: int, length: int) -> int: ...  # bytes backed by a private frame (RSS)

    # -- processes and userfaultfd -------------------------------------------
    def fork(self) -> Child: ...
    def userfaultfd(self, features: int = UFFD_FEATURE_MOVE, *,
                    user_mode_only: bool = True) -> Uffd: ...

    # -- optional capabilities: defaults in KernelBase -------------------------------
    # True when a child made by os.fork must open its own userfaultfd (an inherited one still acts
    # on the parent's address space: Linux); False when the backend's state is copied with the process.
    reopen_uffd_after_fork: bool

    def after_fork_in_child(self) -> None:
        """Redo what a child made by os.fork cannot share with its parent."""

    def diagnostics(self) -> dict:
        """What this backend may do here, for ``remapgc doctor`` (JSON-ready)."""

    # Whether compiled code (heap.core) may read and write this backend's memory in place;
    # frame_pointers says where: None (the addresses are this process's own) or each page's
    # host address as uint64, 0 where that access would fault.
    memory_in_place: bool

    def frame_pointers(self, addr: int, npages: int, write: bool = False) -> np.ndarray | None: ...

    def close(self) -> None:
        """Release what the backend holds (descriptors, children); idempotent."""


# --- defaults of the optional capabilities: both backends subclass these -------------
class UffdBase:
    """The optional parts of ``Uffd`` with their defaults: no accelerator, and
    batched moves as one ``move`` per range. A wrapper that subclasses it
    exposes no accelerator unless it declares one, so nothing bypasses it."""

    accelerator: Accelerator | None = None
    self_serving = False  # opened with UFFD_FEATURE_SIGBUS: a missing fault is the faulting thread's SIGBUS

    def move_ranges(self, dsts, srcs, lengths, mode: int = 0) -> int:
        dsts, srcs, lengths = as_ranges(dsts, srcs, lengths)
        total = 0
        for i, (dst, src, length) in enumerate(zip(dsts.tolist(), srcs.tolist(), lengths.tolist())):
            try:
                total += self.move(dst, src, length, mode)
            except UffdError as exc:
                exc.index = i
                raise
        return total


class KernelBase:
    """The optional parts of ``Kernel`` with their defaults."""

    reopen_uffd_after_fork = False
    memory_in_place = False
    simulated = False  # memory is modelled, not real: "auto" warns when it has to pick such a kernel
    sigaction_sigbus: Callable | None = None  # a Python SIGBUS hook, handler -> previous (the simulator's)

    def after_fork_in_child(self) -> None:
        pass

    def frame_pointers(self, addr: int, npages: int, write: bool = False) -> np.ndarray | None:
        raise KernelUnsupported(f"{type(self).__name__} gives compiled code no access to its memory")

    def diagnostics(self) -> dict:
        return {}

    def close(self) -> None:
        pass


# --- choosing a backend: heap.backends, re-exported without importing it here --------
_BACKENDS_NAMES = ("choose_auto", "probe_move", "open_linux", "open_sim", "linux_disabled_reason", "DISABLE_LINUX_ENV")


def open_kernel(name: str = "auto", **options) -> Kernel:
    """``heap.backends.open_kernel``: "linux", "sim", or "auto" (see there)."""
    from .backends import open_kernel as _open_kernel
    return _open_kernel(name, **options)


def __getattr__(name: str):
    if name in _BACKENDS_NAMES:
        from . import backends
        return getattr(backends, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
