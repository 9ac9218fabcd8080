"""LinuxKernel: the Kernel protocol (heap/kernel.py) on the real Linux kernel.

Each method is one system call (or one ioctl) made by the compiled wrappers in
``uffd_backend._native``; cffi releases the GIL around every one of them, so a
thread that sleeps in a userfault never blocks the Python thread that would
resolve it.

This is the interpreter's own address space, so bad input is stopped where it
could hurt the process, and nowhere else (elsewhere the kernel's own errno is
what the caller sees):

* types and ranges cffi would reject, and sizes of buffers we allocate, are
  checked in Python (ValueError; a wrong type raises ArgumentTypeError, which
  is both a TypeError and a ValueError);
* user-mode accesses (load/store/memmove/...) run under a SIGSEGV/SIGBUS guard
  in C: touching unmapped or protected memory raises EFAULT instead of
  crashing, while a registered missing page still blocks in a real userfault;
* calls that would unmap, protect, register or move memory that remapgc did
  not map (the interpreter's) are refused with EPERM (``owned.py``) -- once
  the kernel would have accepted their arguments: alignment, zero and
  wrapping lengths and unknown flags get the kernel's own answer, in its
  order (``kernel_args.py``).

What it does natively for a concurrent cycle is its uffd's ``accelerator``
(``accelerator.py``; docs/design.md, "The accelerator protocol").
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import weakref

import numpy as np

from heap.kernel import U64_MAX, ArgumentTypeError, as_ranges
from heap.kernel import as_c_int as _c_int
from heap.kernel import as_u64 as _u64
from heap.kernel import as_u64_array as _u64_array
from heap.kernel import (
    HPAGE_SIZE,
    MLOCK_ONFAULT,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    UFFD_API,
    UFFD_EVENT_PAGEFAULT,
    UFFD_FEATURE_MOVE,
    UFFD_FEATURE_SIGBUS,
    UFFD_PAGEFAULT_FLAG_WRITE,
    UFFD_USER_MODE_ONLY,
    UFFDIO_REGISTER_MODE_MISSING,
    FaultEvent,
    KernelBase,
    KernelUnsupported,
    PageInfo,
    UffdBase,
    UffdError,
)

from . import kernel_args, owned
from ._native import ffi, lib
from .accelerator import LinuxAccelerator

log = logging.getLogger("remapgc.linux")  # stdlib logging only: the library prints nothing (heap/events.py)

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000

# The largest single load() we allocate a buffer for; larger reads are a caller bug.
MAX_LOAD = 1 << 32

# /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_EXCLUSIVE = 1 << 56
PM_SWAPPED = 1 << 62
PM_PRESENT = 1 << 63
# /proc/kpageflags bits
KPF_THP = 1 << 22
KPF_ZERO_PAGE = 1 << 24
# PAGEMAP_SCAN categories
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6


# --- argument checks ----------------------------------------------------------
def _raise_os(ret: int, call: str) -> None:
    err = -ret
    raise OSError(err, f"{os.strerror(err)} ({call})")


def _check(ret: int, call: str, *args) -> int:
    """``ret`` if it is a result; raise its errno if it is ``-errno``.

    ``call`` is a format string filled with ``args`` only on failure, so that
    the success path formats nothing.
    """
    if ret < 0:
        _raise_os(ret, call.format(*args) if args else call)
    return ret


# --- fork --------------------------------------------------------------------
def _reap(pid: int, keepalive_fd: int) -> None:
    """Kill and reap one child (idempotent per Child through weakref.finalize)."""
    lib.rgc_kill_reap(pid)
    try:
        os.close(keepalive_fd)
    except OSError:
        pass


class LinuxChild:
    """A forked copy of this process that only sleeps, holding our pages COW.

    The child runs no Python code: it is cloned in C, closes every descriptor
    but a keep-alive pipe and blocks reading it. ``exit()`` kills and reaps it;
    so does garbage collection of this object and interpreter exit, and if this
    process dies the pipe closes and the child exits by itself.
    """

    def __init__(self, pid: int, keepalive_fd: int):
        self.pid = pid
        self._finalizer = weakref.finalize(self, _reap, pid, keepalive_fd)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def exit(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"LinuxChild(pid={self.pid}, {'alive' if self.alive else 'reaped'})"


# --- userfaultfd -----------------------------------------------------------
def _close_fd(fd: int, self_serving: bool = False) -> None:
    lib.rgc_close(fd)
    if self_serving:  # the last self-serving uffd gone: the SIGBUS handler before ours comes back
        with _SIGBUS_LOCK:
            lib.rgc_selfserve_release()


# acquire/release of the self-serving SIGBUS handler (csrc/sigbus.c) are serialised here
_SIGBUS_LOCK = threading.RLock()  # re-entrant: a uffd finalized by the GC inside the block


class LinuxUffd(UffdBase):
    """One userfaultfd context: its descriptor and the ioctls on it."""

    def __init__(self, fd: int, features: int, ioctls: int, via: str, user_mode_only: bool, requested: int = 0):
        self.fd = fd
        self.features = features  # what UFFDIO_API reported back: everything this kernel offers
        self.api_ioctls = ioctls
        self.via = via  # "syscall" or "/dev/userfaultfd"
        self.user_mode_only = user_mode_only
        # opened with UFFD_FEATURE_SIGBUS: a missing fault raises SIGBUS in the faulting
        # thread, which serves it itself (csrc/sigbus.c, the accelerator's self_service)
        self.self_serving = bool(requested & UFFD_FEATURE_SIGBUS)
        if self.self_serving:
            with _SIGBUS_LOCK:
                _check(lib.rgc_selfserve_acquire(), "sigaction(SIGBUS)")
        self._closer = weakref.finalize(self, _close_fd, fd, self.self_serving)
        # close() while a thread waits in read_events must not free the fd
        # number under it (a reused number would be read as ours): the last
        # reader closes it instead.
        self._state_lock = threading.Lock()
        self._closing = False
        self._readers = 0
        self._out = threading.local()

    @property
    def closed(self) -> bool:
        return self._closing or not self._closer.alive

    def _fd(self) -> int:
        if self._closing or not self._closer.alive:
            raise OSError(errno.EBADF, "the userfaultfd is closed")
        return self.fd

    def _cell(self, ctype: str):
        # One output cell per thread and type: the ioctls run concurrently without the GIL.
        cells = self._out.__dict__
        cell = cells.get(ctype)
        if cell is None:
            cell = cells[ctype] = ffi.new(ctype + " *")
        return cell

    def register(self, addr: int, length: int, mode: int = UFFDIO_REGISTER_MODE_MISSING) -> int:
        addr, length, mode = _u64(addr, "addr"), _u64(length, "length"), _u64(mode, "mode")
        if not kernel_args.uffdio_register(addr, length, mode):  # else the kernel refuses the arguments themselves
            owned.check("UFFDIO_REGISTER", addr, length)  # a registered interpreter page would hang us
        out = self._cell("uint64_t")
        _check(lib.rgc_uffd_register(self._fd(), addr, length, mode, out),
               "UFFDIO_REGISTER {:#x}+{:#x}", addr, length)
        return int(out[0])

    def unregister(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        _check(lib.rgc_uffd_unregister(self._fd(), addr, length), "UFFDIO_UNREGISTER {:#x}+{:#x}", addr, length)
        # UFFDIO_UNREGISTER wakes the range's faulters before it clears the VMA; a fault
        # retried in between (under the per-VMA lock) queues again and nothing wakes it:
        # seen as a mutator parked in handle_userfault with no range registered
        # (tests/reliability/test_stress.py, ~1 run in 3). Woken now, it faults normally.
        _check(lib.rgc_uffd_wake(self._fd(), addr, length), "UFFDIO_WAKE {:#x}+{:#x}", addr, length)

    def wake(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        _check(lib.rgc_uffd_wake(self._fd(), addr, length), "UFFDIO_WAKE {:#x}+{:#x}", addr, length)

    @staticmethod
    def _fail(ret: int, out, call: str, index: int | None = None):
        # The kernel stores progress (> 0) or -errno in the struct's output
        # field; a positive value with a failed ioctl is a partial operation
        # (always EAGAIN), anything else means nothing was done.
        err, field = -ret, int(out[0])
        raise UffdError(err, f"{os.strerror(err)} ({call})", moved=field if field > 0 else 0, index=index)

    def move(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        # The per-page fault path calls this: plain ints in range skip the slow checks.
        if not (type(dst) is int and type(src) is int and type(length) is int and type(mode) is int
                and 0 <= dst <= U64_MAX and 0 <= src <= U64_MAX and 0 <= length <= U64_MAX and 0 <= mode <= U64_MAX):
            dst, src = _u64(dst, "dst"), _u64(src, "src")
            length, mode = _u64(length, "length"), _u64(mode, "mode")
        if not owned.covers(src, length) and not kernel_args.uffdio_move(dst, src, length, mode):
            owned.check("UFFDIO_MOVE", src, length)  # moving the interpreter's pages away would crash it
        out = self._cell("int64_t")
        ret = lib.rgc_uffd_move(self._fd(), dst, src, length, mode, out)
        if ret == 0:
            return length
        self._fail(ret, out, f"UFFDIO_MOVE {src:#x} -> {dst:#x} +{length:#x}")

    def move_ranges(self, dsts, srcs, lengths, mode: int = 0) -> int:
        """One UFFDIO_MOVE per range, in one call into C.

        Returns the total bytes moved. On the first range that fails, raises
        UffdError as ``move`` would for it, with ``index`` set to that range's
        position (earlier ranges are done) and ``moved`` to its own progress.
        """
        dsts, srcs, lengths = as_ranges(dsts, srcs, lengths)
        mode = _u64(mode, "mode")
        if not dsts.size:
            return 0
        for i in range(0, dsts.size, 4096):  # the ownership check, in slices of ranges
            lo, hi = int(srcs[i:i + 4096].min()), int((srcs[i:i + 4096] + lengths[i:i + 4096]).max())
            if not owned.covers(lo, hi - lo):
                for d, s, n in zip(dsts[i:i + 4096].tolist(), srcs[i:i + 4096].tolist(),
                                   lengths[i:i + 4096].tolist()):
                    if not kernel_args.uffdio_move(d, s, n, mode):
                        owned.check("UFFDIO_MOVE", s, n)
        done, moved = ffi.new("uint64_t *"), ffi.new("int64_t *")
        as_ptr = lambda arr: ffi.from_buffer("uint64_t[]", arr)  # noqa: E731
        ret = lib.rgc_uffd_move_ranges(self._fd(), as_ptr(dsts), as_ptr(srcs), as_ptr(lengths), dsts.size, mode,
                                       done, moved)
        if ret == 0:
            return int(lengths.sum())
        i = int(done[0])
        self._fail(ret, moved, f"UFFDIO_MOVE range {i}: {int(srcs[i]):#x} -> {int(dsts[i]):#x} +{int(lengths[i]):#x}",
                   index=i)

    # -- what it does natively for a concurrent cycle (heap.kernel.Accelerator) -----------
    @property
    def accelerator(self) -> LinuxAccelerator:
        return LinuxAccelerator(self)

    def copy(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        dst, src = _u64(dst, "dst"), _u64(src, "src")
        length, mode = _u64(length, "length"), _u64(mode, "mode")
        out = self._cell("int64_t")
        ret = lib.rgc_uffd_copy(self._fd(), dst, src, length, mode, out)
        if ret == 0:
            return length
        self._fail(ret, out, f"UFFDIO_COPY {src:#x} -> {dst:#x} +{length:#x}")

    def zeropage(self, dst: int, length: int, mode: int = 0) -> int:
        dst, length, mode = _u64(dst, "dst"), _u64(length, "length"), _u64(mode, "mode")
        out = self._cell("int64_t")
        ret = lib.rgc_uffd_zeropage(self._fd(), dst, length, mode, out)
        if ret == 0:
            return length
        self._fail(ret, out, f"UFFDIO_ZEROPAGE {dst:#x} +{length:#x}")

    def read_events(self, timeout: float | None = 0) -> list[FaultEvent]:
        """Every queued fault; waits up to ``timeout`` seconds (None: forever) for the first."""
        import time

        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise ArgumentTypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
            if not timeout >= 0:  # also rejects NaN
                raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_lock:
            fd = self._fd()
            self._readers += 1
        try:
            return self._wait_and_read(fd, deadline)
        finally:
            with self._state_lock:
                self._readers -= 1
                close_now = self._closing and not self._readers
            if close_now:
                self._closer()

    # Waits are cut in slices so that signals (Ctrl-C) and close() are noticed.
    WAIT_SLICE_MS = 250

    def _wait_and_read(self, fd: int, deadline: float | None) -> list[FaultEvent]:
        import time

        events = self._cell_events()
        while True:
            if deadline is None:
                wait_ms = self.WAIT_SLICE_MS
            else:
                left = deadline - time.monotonic()
                wait_ms = max(0, min(self.WAIT_SLICE_MS, int(left * 1000 + 0.999)))
            n = lib.rgc_uffd_read_events(fd, wait_ms, events, 256)
            if n == -errno.EINTR:
                n = 0
            _check(n, "read(userfaultfd)")
            if n:
                return self._decode(events, n)
            if deadline is not None and time.monotonic() >= deadline:
                return []
            if self._closing:
                raise OSError(errno.EBADF, "the userfaultfd was closed while waiting")

    def _cell_events(self):
        cells = self._out.__dict__
        buf = cells.get("events")
        if buf is None:
            buf = cells["events"] = ffi.new("uint64_t[]", 3 * 256)
        return buf

    @staticmethod
    def _decode(events, n: int) -> list[FaultEvent]:
        raw = np.frombuffer(ffi.buffer(events, 3 * 8 * n), dtype=np.uint64).reshape(n, 3)
        out = []
        for kind, flags, address in raw.tolist():
            if kind != UFFD_EVENT_PAGEFAULT:
                log.debug("uffd_event_ignored uffd_event=%s", kind)
                continue
            out.append(FaultEvent(address=address & ~(PAGE_SIZE - 1), write=bool(flags & UFFD_PAGEFAULT_FLAG_WRITE)))
        return out

    def close(self) -> None:
        with self._state_lock:
            self._closing = True
            if self._readers:
                return  # the last thread leaving read_events closes the fd
        self._closer()

    def __enter__(self) -> "LinuxUffd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"LinuxUffd({state}, via={self.via}, features={self.features:#x})"


VIA_SYSCALL = "syscall"
VIA_DEV = "/dev/userfaultfd"


def open_userfaultfd(features: int = UFFD_FEATURE_MOVE, *, user_mode_only: bool = True,
                     via: str = "auto") -> LinuxUffd:
    """A userfaultfd context with UFFDIO_API done, or KernelUnsupported saying why not.

    ``via="auto"``: the userfaultfd(2) syscall first; if it is refused (EPERM:
    not privileged and vm.unprivileged_userfaultfd=0; ENOSYS), /dev/userfaultfd
    and its USERFAULTFD_IOC_NEW ioctl. ``via="syscall"`` or
    ``via="/dev/userfaultfd"`` tries only that one (``remapgc doctor`` does).
    """
    features = _u64(features, "features")
    if via not in ("auto", VIA_SYSCALL, VIA_DEV):
        raise ValueError(f"via must be 'auto', {VIA_SYSCALL!r} or {VIA_DEV!r}, not {via!r}")
    flags = O_CLOEXEC | O_NONBLOCK | (UFFD_USER_MODE_ONLY if user_mode_only else 0)
    failures = []
    fd = -1
    for path in (VIA_SYSCALL, VIA_DEV):
        if via not in ("auto", path):
            continue
        fd = _open_uffd_fd(path, flags)
        if fd >= 0:
            via = path
            break
        failures.append(f"{path} failed with {errno.errorcode.get(-fd, -fd)} ({os.strerror(-fd)})")
    if fd < 0:
        filtered = user_mode_only and any(f.startswith(f"{VIA_SYSCALL} failed with EPERM") for f in failures)
        raise KernelUnsupported(
            "userfaultfd is refused: " + "; ".join(failures) + ". Allow it with sysctl "
            "vm.unprivileged_userfaultfd=1, read/write access to /dev/userfaultfd, or CAP_SYS_PTRACE"
            + ("" if user_mode_only else ", or open it with user_mode_only=True")
            # Linux >= 5.11 grants user-mode-only contexts to anyone: EPERM is a filter's doing
            + (". A user-mode-only userfaultfd needs no privilege, so EPERM for it means a seccomp filter or "
               "security module forbids the syscall (container runtimes' default profiles do): allow "
               "userfaultfd there, or give read/write access to /dev/userfaultfd" if filtered else ""))
    out_features, out_ioctls = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    ret = lib.rgc_uffd_api(fd, features, out_features, out_ioctls)
    if ret < 0:
        lib.rgc_close(fd)
        raise KernelUnsupported(_api_refusal(-ret, features, flags, via))
    uffd = LinuxUffd(fd, int(out_features[0]), int(out_ioctls[0]), via, user_mode_only, requested=features)
    return uffd


def _open_uffd_fd(via: str, flags: int) -> int:
    return lib.rgc_userfaultfd_syscall(flags) if via == VIA_SYSCALL else lib.rgc_userfaultfd_dev(flags)


def _api_refusal(err: int, features: int, flags: int, via: str) -> str:
    """Why UFFDIO_API refused ``features``, asking the kernel what it does offer."""
    offered = None
    probe = _open_uffd_fd(via, flags)
    if probe >= 0:
        out_features, out_ioctls = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        if lib.rgc_uffd_api(probe, 0, out_features, out_ioctls) == 0:
            offered = int(out_features[0])
        lib.rgc_close(probe)
    if err == errno.EINVAL and offered is not None and features & ~offered:
        missing = features & ~offered
        hint = "; UFFD_FEATURE_MOVE needs Linux >= 6.8" if missing & UFFD_FEATURE_MOVE else ""
        return (f"the kernel does not offer the userfaultfd features {missing:#x} "
                f"(it offers {offered:#x}){hint}")
    return f"UFFDIO_API failed with {errno.errorcode.get(err, err)} ({os.strerror(err)}) for features {features:#x}"


# --- the kernel ---------------------------------------------------------------
class LinuxKernel(KernelBase):
    """The Kernel protocol on this process's own address space."""

    name = "linux"
    reopen_uffd_after_fork = True  # an inherited userfaultfd acts on the parent's address space
    memory_in_place = True  # the heap's addresses are this process's own (frame_pointers: None)

    def __init__(self):
        if os.uname().sysname != "Linux":
            raise KernelUnsupported(f"not Linux ({os.uname().sysname})")
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.hpage_size = _pmd_size()
        _check(lib.rgc_guard_install(), "sigaction(SIGSEGV/SIGBUS)")
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._kpageflags = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._kpageflags = -1  # unprivileged: no page flags (and no PFNs in pagemap)
        self._children: weakref.WeakSet[LinuxChild] = weakref.WeakSet()
        self._scan = ffi.new("uint64_t[]", 3 * 4)
        self._scan_works = True  # PAGEMAP_SCAN answered (cleared on the first refusal: before Linux 6.7)
        self._scan_lock = threading.Lock()
        self._closer = weakref.finalize(self, _close_kernel, self._pagemap, self._kpageflags, self._children)
        self._raw_alloc = ffi.new_allocator(should_clear_after_alloc=False)

    def after_fork_in_child(self) -> None:
        """In a child made by os.fork: /proc/self/pagemap was opened by the parent
        and still shows the parent's page tables; re-open it (same descriptor number)."""
        fresh = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(fresh, self._pagemap, inheritable=False)
        os.close(fresh)

    def close(self) -> None:
        """Reap forked children and close the /proc descriptors (also done on garbage collection)."""
        self._closer()

    # -- the mmap family ---------------------------------------------------------
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE, *,
             shared: bool = False, align: int = 0, at: int | None = None,
             noreserve: bool = False) -> int:
        length = _u64(length, "length")
        prot = _c_int(prot, "prot")
        align = _u64(align, "align")
        flags = MAP_ANONYMOUS | (MAP_SHARED if shared else MAP_PRIVATE) | (MAP_NORESERVE if noreserve else 0)
        if align and (align & (align - 1) or align % self.page_size):
            raise ValueError(f"align={align:#x} must be a power of two and a multiple of the page size")
        if at is not None:
            at = _u64(at, "at")
            if align and at % align:
                raise ValueError(f"at={at:#x} is not a multiple of align={align:#x}")
        with owned.changing:  # mapped and recorded in one step (owned.py)
            if at is not None:
                addr = _check(lib.rgc_mmap(at, length, prot, flags | MAP_FIXED_NOREPLACE), "mmap at {:#x}", at)
                if addr != at:  # a kernel older than 4.17 treats the flag as a hint
                    lib.rgc_munmap(addr, length)
                    raise OSError(errno.EEXIST, f"{os.strerror(errno.EEXIST)} (mmap at {at:#x})")
            elif align <= self.page_size or length == 0:
                addr = _check(lib.rgc_mmap(0, length, prot, flags), "mmap {:#x}", length)
            else:
                addr = self._mmap_aligned(length, prot, flags, align)
            owned.add(addr, length)
        return addr

    def _mmap_aligned(self, length: int, prot: int, flags: int, align: int) -> int:
        # Over-map by the alignment, then trim both ends: one extra VMA op, no races.
        span = length + align
        if span > U64_MAX:
            raise OSError(errno.ENOMEM, f"{os.strerror(errno.ENOMEM)} (mmap {length:#x} aligned {align:#x})")
        base = _check(lib.rgc_mmap(0, span, prot, flags), "mmap {:#x} aligned {:#x}", length, align)
        start = (base + align - 1) & ~(align - 1)
        rounded = (length + self.page_size - 1) & ~(self.page_size - 1)
        if start > base:
            lib.rgc_munmap(base, start - base)
        tail = base + span - (start + rounded)
        if tail > 0:
            lib.rgc_munmap(start + rounded, tail)
        return start

    def munmap(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        with owned.changing:  # unmapped and forgotten in one step (owned.py)
            if not kernel_args.munmap(addr, length):
                owned.check("munmap", addr, length)
            _check(lib.rgc_munmap(addr, length), "munmap {:#x}+{:#x}", addr, length)
            owned.remove(addr, length)

    def mremap(self, old_addr: int, length: int, new_addr: int, *, dontunmap: bool = False) -> int:
        old_addr, length, new_addr = _u64(old_addr, "old_addr"), _u64(length, "length"), _u64(new_addr, "new_addr")
        flags = MREMAP_MAYMOVE | MREMAP_FIXED | (MREMAP_DONTUNMAP if dontunmap else 0)
        refused = kernel_args.mremap(old_addr, length, new_addr, flags)  # by the kernel, from the arguments alone
        with owned.changing:  # moved and recorded in one step (owned.py)
            if not refused:
                owned.check("mremap", old_addr, length)
                owned.check("mremap (target)", new_addr, length)  # MREMAP_FIXED unmaps whatever is there
            ret = lib.rgc_mremap(old_addr, length, length, flags, new_addr)
            if ret < 0 and not refused:
                # Since 6.17 a move spanning several VMAs can fail (EFAULT) after
                # moving the first ones: what now lies at the target is ours.
                owned.add(new_addr, length)
            addr = _check(ret, "mremap {:#x}+{:#x} -> {:#x}", old_addr, length, new_addr)
            if not dontunmap:
                owned.remove(old_addr, length)
            owned.add(addr, length)
        return addr

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        addr, length, prot = _u64(addr, "addr"), _u64(length, "length"), _c_int(prot, "prot")
        if not kernel_args.mprotect(addr, length, prot):
            owned.check("mprotect", addr, length)
        _check(lib.rgc_mprotect(addr, length, prot), "mprotect {:#x}+{:#x} {:#x}", addr, length, prot)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        addr, length, advice = _u64(addr, "addr"), _u64(length, "length"), _c_int(advice, "advice")
        if not owned.covers(addr, length) and not kernel_args.madvise(addr, length, self._advice_known(advice)):
            owned.check("madvise", addr, length)
        _check(lib.rgc_madvise(addr, length, advice), "madvise {:#x}+{:#x} {}", addr, length, advice)

    @staticmethod
    def _advice_known(advice: int) -> bool:
        """Whether this kernel knows ``advice``: an empty madvise checks the advice and touches nothing."""
        return lib.rgc_madvise(0, 0, advice) == 0

    def mlock(self, addr: int, length: int, *, onfault: bool = False) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        if onfault:
            _check(lib.rgc_mlock2(addr, length, MLOCK_ONFAULT), "mlock2(ONFAULT) {:#x}+{:#x}", addr, length)
        else:
            _check(lib.rgc_mlock(addr, length), "mlock {:#x}+{:#x}", addr, length)

    def munlock(self, addr: int, length: int) -> None:
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        _check(lib.rgc_munlock(addr, length), "munlock {:#x}+{:#x}", addr, length)

    # -- user-mode memory access ----------------------------------------------------
    @staticmethod
    def _range(addr: int, length: int) -> tuple[int, int]:
        if type(addr) is int and type(length) is int and 0 <= addr and 0 <= length and addr + length <= U64_MAX + 1:
            return addr, length  # the common case, checked in one expression
        addr, length = _u64(addr, "addr"), _u64(length, "length")
        if addr + length > U64_MAX + 1:
            raise OSError(errno.EFAULT, f"{os.strerror(errno.EFAULT)} ({addr:#x}+{length:#x} wraps around)")
        return addr, length

    def load(self, addr: int, length: int) -> bytes:
        """Read ``length`` bytes at ``addr``, page by page in address order.

        A fault that cannot be resolved (unmapped, protection) raises EFAULT;
        the pages before it were read (and faulted in), those after it were
        not touched. A range inside one page is one memcpy.
        """
        addr, length = self._range(addr, length)
        if length == 0:
            return b""
        if length > MAX_LOAD:
            raise ValueError(f"length={length:#x} is larger than one load may read ({MAX_LOAD:#x})")
        try:
            buf = self._raw_alloc("char[]", length)
        except MemoryError:
            raise OSError(errno.ENOMEM,
                          f"{os.strerror(errno.ENOMEM)} (no buffer for a load of {length:#x} bytes)") from None
        if (addr & (PAGE_SIZE - 1)) + length <= PAGE_SIZE:
            _check(lib.rgc_load(addr, buf, length), "load {:#x}+{:#x}", addr, length)
        else:
            self._copy_page_by_page(int(ffi.cast("uintptr_t", buf)), addr, length, "load", addr)
        return ffi.buffer(buf, length)[:]

    def store(self, addr: int, data) -> None:
        """Write ``data`` at ``addr``, page by page in address order.

        A fault that cannot be resolved raises EFAULT with exactly the pages
        before the faulting one written (glibc's memcpy alone may write the
        tail of a range first). A range inside one page is one memcpy.
        """
        try:
            view = ffi.from_buffer(data)
        except TypeError:
            raise ArgumentTypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
        addr, length = self._range(addr, len(view))
        if not length:
            return
        if (addr & (PAGE_SIZE - 1)) + length <= PAGE_SIZE:
            _check(lib.rgc_store(addr, view, length), "store {:#x}+{:#x}", addr, length)
        else:
            self._copy_page_by_page(addr, int(ffi.cast("uintptr_t", view)), length, "store", addr)

    @staticmethod
    def _copy_page_by_page(dst: int, src: int, length: int, what: str, user_addr: int) -> None:
        """memmove ``length`` bytes in pieces that end at the page boundaries of
        ``user_addr`` (the user-memory side), in address order, in one C call
        without the GIL; stops at the first piece that faults (EFAULT)."""
        end = user_addr + length
        first = user_addr & ~(PAGE_SIZE - 1)
        if end - first <= 8 * PAGE_SIZE:  # a few pages: plain ints are quicker than numpy
            starts = [user_addr, *range(first + PAGE_SIZE, end, PAGE_SIZE)]
            lengths = [b - a for a, b in zip(starts, [*starts[1:], end])]
            dsts = ffi.new("uint64_t[]", [dst - user_addr + a for a in starts])
            srcs = ffi.new("uint64_t[]", [src - user_addr + a for a in starts])
            lens = ffi.new("uint64_t[]", lengths)
        else:
            cuts = np.arange(first + PAGE_SIZE, end, PAGE_SIZE, dtype=np.uint64)
            starts = np.concatenate([np.array([user_addr], dtype=np.uint64), cuts])
            offsets = starts - np.uint64(user_addr)
            dsts = ffi.from_buffer("uint64_t[]", np.uint64(dst) + offsets)
            srcs = ffi.from_buffer("uint64_t[]", np.uint64(src) + offsets)
            lens = ffi.from_buffer("uint64_t[]", np.diff(np.append(starts, np.uint64(end))))
        done = ffi.new("uint64_t *")
        ret = lib.rgc_copy_ranges(dsts, srcs, lens, len(starts), done)
        if ret < 0:
            _raise_os(ret, f"{what} {user_addr:#x}+{length:#x}: page {int(starts[done[0]]):#x} faulted, "
                           f"the {done[0]} page(s) before it done")

    def frame_pointers(self, addr: int, npages: int, write: bool = False) -> None:
        """None: this backend's addresses are this process's own, so compiled
        code (heap.core) reads and writes them directly, no table needed
        (the simulator answers with a table of host pointers)."""
        return None

    def load_words(self, addrs) -> np.ndarray:
        addrs = _u64_array(addrs, "addrs")
        out = np.empty(addrs.size, dtype=np.uint64)
        if addrs.size:
            done = ffi.new("uint64_t *")
            ret = lib.rgc_load_words(ffi.from_buffer("uint64_t[]", addrs), ffi.from_buffer("uint64_t[]", out),
                                     addrs.size, done)
            if ret < 0:
                _raise_os(ret, f"load_words at addrs[{done[0]}]={int(addrs[done[0]]):#x}")
        return out

    def store_words(self, addrs, values) -> None:
        addrs = _u64_array(addrs, "addrs")
        values = _u64_array(values, "values")
        if addrs.size != values.size:
            raise ValueError(f"{addrs.size} addresses but {values.size} values")
        if addrs.size:
            done = ffi.new("uint64_t *")
            ret = lib.rgc_store_words(ffi.from_buffer("uint64_t[]", addrs), ffi.from_buffer("uint64_t[]", values),
                                      addrs.size, done)
            if ret < 0:
                _raise_os(ret, f"store_words at addrs[{done[0]}]={int(addrs[done[0]]):#x} "
                               f"({done[0]} words written before it)")

    def memmove(self, dst: int, src: int, length: int) -> None:
        dst, length = self._range(dst, length)
        src, _ = self._range(src, length)
        if length:
            _check(lib.rgc_memmove(dst, src, length), "memmove {:#x} -> {:#x} +{:#x}", src, dst, length)

    def copy_ranges(self, dsts, srcs, lengths) -> None:
        dsts, srcs, lengths = as_ranges(dsts, srcs, lengths)
        if not dsts.size:
            return
        top = np.uint64(U64_MAX)
        if ((lengths > top - dsts) | (lengths > top - srcs)).any():
            raise OSError(errno.EFAULT, f"{os.strerror(errno.EFAULT)} (copy_ranges: a range wraps around)")
        done = ffi.new("uint64_t *")
        ret = lib.rgc_copy_ranges(ffi.from_buffer("uint64_t[]", dsts), ffi.from_buffer("uint64_t[]", srcs),
                                  ffi.from_buffer("uint64_t[]", lengths), dsts.size, done)
        if ret < 0:
            i = done[0]
            _raise_os(ret, f"copy_ranges at range {i}: {int(srcs[i]):#x} -> {int(dsts[i]):#x} +{int(lengths[i]):#x}")

    # -- introspection ----------------------------------------------------------------
    def _pagemap_entries(self, addr: int, npages: int) -> np.ndarray:
        if not self._closer.alive:  # its descriptor numbers may belong to other files by now
            raise OSError(errno.EBADF, "this LinuxKernel is closed")
        first = addr // self.page_size
        want = 8 * npages
        raw = os.pread(self._pagemap, want, 8 * first) if npages else b""
        entries = np.zeros(npages, dtype=np.uint64)
        got = len(raw) // 8
        entries[:got] = np.frombuffer(raw, dtype=np.uint64, count=got)
        return entries

    def _kflags(self, pfn: int) -> int | None:
        """/proc/kpageflags of one frame, or None when frames or flags are hidden from us."""
        if self._kpageflags < 0 or pfn == 0:
            return None
        raw = os.pread(self._kpageflags, 8, 8 * pfn)
        return int.from_bytes(raw, "little") if len(raw) == 8 else None

    def _categories(self, addr: int) -> int:
        """PAGEMAP_SCAN's categories of one page (needs no privilege), or -1 before Linux 6.7."""
        page = addr & ~(self.page_size - 1)
        with self._scan_lock:
            n = lib.rgc_pagemap_scan(self._pagemap, page, page + self.page_size, 0,
                                     PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_HUGE, self._scan, 4)
            return int(self._scan[2]) if n > 0 else (0 if n == 0 else -1)

    def page_info(self, addr: int) -> PageInfo:
        """The page at ``addr``: frame and exclusive bit from /proc/self/pagemap, zero
        page and PMD mapping from PAGEMAP_SCAN, large folio from /proc/kpageflags.

        Without CAP_SYS_ADMIN frames read as None and a large folio can only be
        recognised while PMD-mapped. A swapped-out page reads as "present"
        without a frame (there is no swap device on the machines remapgc targets).
        """
        addr = _u64(addr, "addr")
        entry = int(self._pagemap_entries(addr, 1)[0])
        if not entry & PM_PRESENT:
            if entry & PM_SWAPPED:
                return PageInfo(state="present", frame=None, exclusive=bool(entry & PM_EXCLUSIVE), huge=False)
            return PageInfo(state="none", frame=None, exclusive=False, huge=False)
        pfn = entry & PM_PFN_MASK
        cats = self._categories(addr)
        huge = cats > 0 and bool(cats & PAGE_IS_HUGE)
        kflags = self._kflags(pfn)
        if kflags is not None:
            zero, thp = bool(kflags & KPF_ZERO_PAGE), bool(kflags & KPF_THP)
        else:
            zero, thp = cats > 0 and bool(cats & PAGE_IS_PFNZERO), huge
        state = "zero" if zero else "thp" if thp else "present"
        return PageInfo(state=state, frame=pfn or None, exclusive=bool(entry & PM_EXCLUSIVE), huge=huge)

    def page_frames(self, addr: int, npages: int) -> np.ndarray:
        addr, npages = _u64(addr, "addr"), _u64(npages, "npages")
        if npages > (1 << 36):
            raise ValueError(f"npages={npages} is too many")
        entries = self._pagemap_entries(addr, npages)
        present = (entries & np.uint64(PM_PRESENT)) != 0
        pfns = (entries & np.uint64(PM_PFN_MASK)).astype(np.int64)
        return np.where(present & (pfns != 0), pfns, np.int64(-1))

    def resident_bytes(self, addr: int, length: int) -> int:
        """Bytes backed by a private frame: present pages that are not the (huge) zero page.

        With PAGEMAP_SCAN (Linux 6.7) the kernel sums the range as regions of
        like pages: a few ioctls instead of 8 bytes of /proc/self/pagemap per
        page (1 GiB: ~0.2 ms against ~15 ms here); the heap reads its RSS
        around every collection."""
        addr, length = self._range(addr, length)
        if self._scan_works:
            scanned = self._resident_by_scan(addr, length)
            if scanned is not None:
                return scanned
        return self._resident_by_pagemap(addr, length)

    def _resident_by_scan(self, addr: int, length: int) -> int | None:
        ps = self.page_size
        start, end = addr // ps * ps, (addr + length + ps - 1) // ps * ps
        resident = lib.rgc_resident_bytes(self._pagemap, start, end, PAGE_IS_PRESENT, PAGE_IS_PFNZERO)
        if resident < 0:
            self._scan_works = False
            return None
        return resident

    def _resident_by_pagemap(self, addr: int, length: int) -> int:
        first = addr // self.page_size
        last = (addr + length + self.page_size - 1) // self.page_size
        entries = self._pagemap_entries(first * self.page_size, last - first)
        present = (entries & np.uint64(PM_PRESENT)) != 0
        # Exclusive pages are private frames for sure; only shared ones (the
        # zero page, or pages COW-shared with a child) need their flags read.
        shared = present & ((entries & np.uint64(PM_EXCLUSIVE)) == 0)
        resident = int(present.sum())
        if shared.any():
            pfns = (entries[shared] & np.uint64(PM_PFN_MASK)).astype(np.int64)
            zero = self._zero_pfns(pfns)
            resident -= int(np.isin(pfns, zero).sum()) if zero.size else 0
        return resident * self.page_size

    def _zero_pfns(self, pfns: np.ndarray) -> np.ndarray:
        """The subset of ``pfns`` that are the zero page or part of the huge zero page."""
        unique = np.unique(pfns[pfns > 0])
        if unique.size == 0 or self._kpageflags < 0:
            return np.empty(0, dtype=np.int64)
        # Read /proc/kpageflags once per run of consecutive frames.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        zero = []
        for run in np.split(unique, breaks):
            raw = os.pread(self._kpageflags, 8 * run.size, 8 * int(run[0]))
            flags = np.frombuffer(raw, dtype=np.uint64, count=len(raw) // 8)
            hit = (flags & np.uint64(KPF_ZERO_PAGE)) != 0
            zero.append(run[: flags.size][hit])
        return np.concatenate(zero)

    # -- processes and userfaultfd --------------------------------------------------
    def fork(self) -> LinuxChild:
        keepalive = ffi.new("int *")
        pid = _check(lib.rgc_fork_sleeper(keepalive), "fork")
        child = LinuxChild(pid, keepalive[0])
        self._children.add(child)
        return child

    def userfaultfd(self, features: int = UFFD_FEATURE_MOVE, *, user_mode_only: bool = True) -> LinuxUffd:
        return open_userfaultfd(features, user_mode_only=user_mode_only)

    # -- diagnostics (for `remapgc doctor`) ------------------------------------------------
    def diagnostics(self) -> dict:
        """What this process may do here: userfaultfd by each path, pagemap PFNs, PAGEMAP_SCAN."""
        paths = {}
        for via in (VIA_SYSCALL, VIA_DEV):
            for user_mode_only in (True, False):
                key = f"{via} ({'user-mode faults only' if user_mode_only else 'all faults'})"
                try:
                    uffd = open_userfaultfd(0, user_mode_only=user_mode_only, via=via)
                except KernelUnsupported as exc:
                    paths[key] = {"ok": False, "detail": str(exc)}
                else:
                    paths[key] = {"ok": True, "features": uffd.features,
                                  "move_offered": bool(uffd.features & UFFD_FEATURE_MOVE)}
                    uffd.close()
        page = self.mmap(self.page_size)
        try:
            self.store(page, b"\1")
            frame = self.page_info(page).frame
            with self._scan_lock:
                scan = lib.rgc_pagemap_scan(self._pagemap, page, page + self.page_size, 0,
                                            PAGE_IS_PRESENT, self._scan, 4)
        finally:
            self.munmap(page, self.page_size)
        return {
            "userfaultfd": paths,
            "pagemap_frames_visible": frame is not None,
            "kpageflags_readable": self._kpageflags >= 0,
            "pagemap_scan": scan >= 0,
            "pagemap_scan_detail": "ok" if scan >= 0 else os.strerror(-scan),
        }

    def __repr__(self) -> str:
        return f"LinuxKernel(page_size={self.page_size}, hpage_size={self.hpage_size})"


def _close_kernel(pagemap: int, kpageflags: int, children) -> None:
    for child in list(children):
        child.exit()
    for fd in (pagemap, kpageflags):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _pmd_size() -> int:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return HPAGE_SIZE


assert UFFD_API == 0xAA
