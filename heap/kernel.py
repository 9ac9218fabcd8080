"""The seam between remapgc and the kernel it runs on.

Everything the heap asks of an operating system goes through the `Kernel`
protocol defined here; two backends implement it:

* ``uffd_backend.LinuxKernel`` drives the real kernel (mmap family,
  /proc/self/pagemap, userfaultfd and UFFDIO_MOVE) through compiled C;
* ``sim_backend.SimKernel`` simulates a Linux 6.18 kernel faithfully enough
  that the same call sequence gives the same results (checked by the
  differential tests), and can force rare races deterministically.

The protocol is syscall-shaped on purpose: each method is one system call or
one ioctl, so the simulator can be compared with Linux call by call. Errors
are ``OSError`` carrying the kernel's errno; move/copy/zeropage raise
``UffdError`` whose ``moved`` says how many bytes were done first.

A handful of methods go beyond one syscall (``load_words``, ``store_words``,
``memmove``, ``copy_ranges``, ``resident_bytes``, ``page_frames``): they are the vectorised
user-mode memory accesses the heap needs so that marking and fixing up a
million objects does not cost a Python call per word. They behave exactly as
the equivalent sequence of user-mode loads and stores would (they may fault
and block on registered missing pages), and on Linux they release the GIL.

This module imports no backend; ``open_kernel`` imports one lazily.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import structlog

log = structlog.get_logger("remapgc.kernel")

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

# ioctl bit numbers, as reported in uffdio_register.ioctls / uffdio_api.ioctls
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


def _ioc(direction: int, nr: int, size: int) -> int:
    # asm-generic/ioctl.h: dir<<30 | size<<16 | type<<8 | nr
    return (direction << 30) | (size << 16) | (UFFD_API << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
UFFDIO_API = _ioc(_IOC_READ | _IOC_WRITE, _UFFDIO_API, 24)
UFFDIO_REGISTER = _ioc(_IOC_READ | _IOC_WRITE, _UFFDIO_REGISTER, 32)
UFFDIO_UNREGISTER = _ioc(_IOC_READ, _UFFDIO_UNREGISTER, 16)
UFFDIO_WAKE = _ioc(_IOC_READ, _UFFDIO_WAKE, 16)
UFFDIO_COPY = _ioc(_IOC_READ | _IOC_WRITE, _UFFDIO_COPY, 40)
UFFDIO_ZEROPAGE = _ioc(_IOC_READ | _IOC_WRITE, _UFFDIO_ZEROPAGE, 32)
UFFDIO_MOVE = _ioc(_IOC_READ | _IOC_WRITE, _UFFDIO_MOVE, 40)
USERFAULTFD_IOC_NEW = _ioc(0, 0x00, 0)  # _IO(0xAA, 0x00) on /dev/userfaultfd
assert UFFDIO_MOVE == 0xC028AA05

PAGE_SIZE = 4096
HPAGE_SIZE = 2 << 20


# --- argument checks shared by both backends ----------------------------------
# Bad input must give the same exception on every backend (the differential
# tests compare them), so both use these.
U64_MAX = (1 << 64) - 1


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a TypeError that ``except ValueError`` also catches."""


def as_u64(value, name: str) -> int:
    """``value`` as an int in [0, 2**64) (what a syscall can take as u64), or a clear error."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{name}={value} is out of range: must be in [0, 2**64)")
    return value


def as_u64_array(values, name: str) -> np.ndarray:
    """A contiguous 1-D uint64 array of ``values`` (int64 is taken bit for bit)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.uint64)
    if arr.dtype == np.uint64:
        pass
    elif arr.dtype == np.int64:
        arr = arr.view(np.uint64)
    elif arr.dtype.kind in "iu":
        if arr.dtype.kind == "i" and (arr < 0).any():
            raise ValueError(f"{name} holds negative values")
        arr = arr.astype(np.uint64)
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
    """A userfaultfd ioctl failed.

    ``errno`` is what the ioctl returned. ``moved`` is the byte count the
    kernel reported as done before stopping (the ioctl's ``move``/``copy``/
    ``zeropage`` field when it is positive, else 0). EAGAIN with ``moved > 0``
    is a partial move: resume at ``dst + moved``. EAGAIN with ``moved == 0``
    means a non-cooperative event is pending (or contention): retry later.
    """

    def __init__(self, err: int, message: str = "", moved: int = 0):
        super().__init__(err, message or os.strerror(err))
        self.moved = moved

    def __reduce__(self):
        return (type(self), (self.errno, self.strerror, self.moved))

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror} (moved={self.moved})"


class KernelUnsupported(RuntimeError):
    """The requested kernel facility is unusable here; ``str()`` says why."""


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


@runtime_checkable
class Kernel(Protocol):
    """The syscall-shaped interface both backends implement."""

    name: str  # "linux" or "sim"
    page_size: int  # 4096
    hpage_size: int  # PMD size, 2 MiB on x86-64

    # -- the mmap family: anonymous memory only -----------------------------
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE, *,
             shared: bool = False, align: int = 0, at: int | None = None) -> int: ...

    def munmap(self, addr: int, length: int) -> None: ...

    def mremap(self, old_addr: int, length: int, new_addr: int, *,
               dontunmap: bool = False) -> int: ...

    def mprotect(self, addr: int, length: int, prot: int) -> None: ...

    def madvise(self, addr: int, length: int, advice: int) -> None: ...

    def mlock(self, addr: int, length: int, *, onfault: bool = False) -> None: ...

    def munlock(self, addr: int, length: int) -> None: ...

    # -- user-mode memory access: may fault, may block on a userfault -------
    def load(self, addr: int, length: int) -> bytes: ...

    def store(self, addr: int, data: bytes) -> None: ...

    def load_words(self, addrs) -> np.ndarray:
        """Read one native u64 at each address of ``addrs`` (a uint64 array)."""

    def store_words(self, addrs, values) -> None:
        """Write ``values[i]`` as a u64 at ``addrs[i]``, in order."""

    def memmove(self, dst: int, src: int, length: int) -> None:
        """Copy ``length`` bytes as a user-mode memmove would."""

    def copy_ranges(self, dsts, srcs, lengths) -> None:
        """``memmove(dsts[i], srcs[i], lengths[i])`` for each i, in order.

        The batched form of ``memmove`` (uint64 arrays), so that evacuating a
        million small objects is one call, not a million.
        """

    # -- introspection --------------------------------------------------------
    def page_info(self, addr: int) -> PageInfo: ...

    def page_frames(self, addr: int, npages: int) -> np.ndarray:
        """Frame ids of ``npages`` pages from ``addr`` (int64; -1 = no frame)."""

    def resident_bytes(self, addr: int, length: int) -> int:
        """Bytes of ``[addr, addr+length)`` backed by a private frame (RSS)."""

    # -- processes and userfaultfd -------------------------------------------
    def fork(self) -> Child: ...

    def userfaultfd(self, features: int = UFFD_FEATURE_MOVE, *,
                    user_mode_only: bool = True) -> Uffd: ...


# --- choosing a backend --------------------------------------------------------
DISABLE_LINUX_ENV = "REMAPGC_DISABLE_LINUX"


def linux_disabled_reason() -> str | None:
    """Why the Linux backend must not be used here, or None if it may be."""
    if os.environ.get(DISABLE_LINUX_ENV, "") not in ("", "0"):
        return f"the Linux backend is disabled by {DISABLE_LINUX_ENV}={os.environ[DISABLE_LINUX_ENV]}"
    if not os.uname().sysname == "Linux":
        return f"not Linux ({os.uname().sysname})"
    return None


def open_linux(**options) -> Kernel:
    """The real-kernel backend, or KernelUnsupported saying why not."""
    reason = linux_disabled_reason()
    if reason:
        raise KernelUnsupported(reason)
    try:
        from uffd_backend import LinuxKernel
    except ImportError as exc:  # the extension was not built (not Linux, no compiler)
        raise KernelUnsupported(f"the Linux backend's compiled extension is missing: {exc}") from exc
    return LinuxKernel(**options)


def open_sim(**options) -> Kernel:
    from sim_backend import SimKernel

    return SimKernel(**options)


def probe_move(kernel: Kernel) -> None:
    """Move one page with UFFDIO_MOVE and check it kept its frame.

    Raises KernelUnsupported with the reason when userfaultfd or MOVE is
    unusable on ``kernel``.
    """
    ps = kernel.page_size
    try:
        uffd = kernel.userfaultfd(UFFD_FEATURE_MOVE)
    except KernelUnsupported:
        raise
    except OSError as exc:
        raise KernelUnsupported(f"userfaultfd refused: {exc}") from exc
    src = dst = 0
    try:
        if not uffd.features & UFFD_FEATURE_MOVE:
            raise KernelUnsupported(
                f"the kernel does not offer UFFD_FEATURE_MOVE (features {uffd.features:#x}); Linux >= 6.8 needed")
        src = kernel.mmap(ps)
        dst = kernel.mmap(ps)
        kernel.store(src, b"remapgc-probe")
        before = kernel.page_info(src).frame
        uffd.register(dst, ps)
        try:
            uffd.move(dst, src, ps)
        except OSError as exc:
            raise KernelUnsupported(f"UFFDIO_MOVE failed: {exc}") from exc
        after = kernel.page_info(dst).frame
        if kernel.load(dst, 13) != b"remapgc-probe":
            raise KernelUnsupported("UFFDIO_MOVE did not carry the page's contents")
        if before is not None and after != before:
            raise KernelUnsupported(f"UFFDIO_MOVE copied instead of moving (frame {before} -> {after})")
    finally:
        uffd.close()
        for addr in (src, dst):
            if addr:
                kernel.munmap(addr, ps)


def open_kernel(name: str = "auto", **options) -> Kernel:
    """Open a backend by name: "linux", "sim", or "auto".

    "auto" picks the Linux backend when userfaultfd with UFFD_FEATURE_MOVE
    works here (checked with a real one-page move), else the simulator, and
    logs which one it chose and why.
    """
    if name == "linux":
        return open_linux(**options)
    if name == "sim":
        return open_sim(**options)
    if name != "auto":
        raise ValueError(f"unknown kernel {name!r}: expected 'auto', 'linux' or 'sim'")
    kernel, reason = choose_auto(**options)
    log.info("kernel_chosen", kernel=kernel.name, reason=reason)
    return kernel


def choose_auto(**options) -> tuple[Kernel, str]:
    """The backend "auto" picks and the reason, without logging."""
    try:
        kernel = open_linux(**options)
        probe_move(kernel)
    except KernelUnsupported as exc:
        return open_sim(**options), f"falling back to the simulator because {exc} (run `remapgc doctor`)"
    return kernel, "userfaultfd with UFFDIO_MOVE works here (a one-page probe move kept its frame)"


def move_ranges(uffd: Uffd, dsts, srcs, lengths, mode: int = 0) -> int:
    """UFFDIO_MOVE each ``(dsts[i], srcs[i], lengths[i])`` in order; returns the bytes moved.

    Uses the backend's batched ``move_ranges`` when it has one (one call into
    C for all the ioctls), else one ``move`` per range. On the first range
    that fails it raises that range's ``UffdError`` with ``index`` set to
    its position (earlier ranges are done) and ``moved`` to its own progress.
    """
    batched = getattr(uffd, "move_ranges", None)
    if batched is not None:
        return batched(dsts, srcs, lengths, mode)
    total = 0
    for i, (dst, src, length) in enumerate(zip(dsts.tolist(), srcs.tolist(), lengths.tolist())):
        try:
            total += uffd.move(dst, src, length, mode)
        except UffdError as exc:
            exc.index = i
            raise
    return total
