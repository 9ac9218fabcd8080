"""The Linux backend's accelerator (heap.kernel.Accelerator): a concurrent
cycle's install walk and fault server, in C without the GIL
(csrc/install_walk.c, csrc/fault_server.c).

It knows the heap only through what heap/kernel.py declares: the install
program's arrays by name (PROGRAM_SCALARS, PROGRAM_ARRAYS), their layout as
``struct rgc_program`` (heap/csrc/remapgc_program.h) and the page states.
The compiled side reports the layout it was built with; importing this module
checks it against the declaration (``check_program_layout``).
"""

from __future__ import annotations

import errno
import os
import weakref

import numpy as np

from heap.kernel import (
    CHUNK_WALK_STATUS,
    PROGRAM_ARRAYS,
    PROT_READ,
    PROT_WRITE,
    ArgumentTypeError,
    ChunkWalk,
    UffdError,
    check_program_layout,
    compiled_program_layout,
)

from . import owned
from ._native import ffi, lib

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # read once: a sysconf call costs microseconds

MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
_CTYPES = {"int64": "int64_t", "uint64": "uint64_t", "uint8": "uint8_t"}
# PROGRAM_ARRAYS with each dtype and C array type resolved once (a program is loaded inside a self-serving pause)
_PROGRAM_GROUPS = tuple((count, tuple((name, np.dtype(dtype), f"{_CTYPES[dtype]}[]") for name, dtype in group))
                        for count, group in PROGRAM_ARRAYS.items())


check_program_layout(*compiled_program_layout(ffi, lib), "uffd_backend._native")
if tuple(ffi.string(lib.rgc_chunk_walk_statuses()).decode().split()) != CHUNK_WALK_STATUS:
    raise ImportError(f"uffd_backend._native numbers its chunk walk's outcomes "
                      f"{ffi.string(lib.rgc_chunk_walk_statuses()).decode().split()}, heap.kernel "
                      f"{list(CHUNK_WALK_STATUS)} (rebuild with pip install, or update both together)")


def _check_shared(**arrays) -> None:
    for name, (arr, dtype) in arrays.items():
        if not (isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.flags.c_contiguous):
            raise ArgumentTypeError(f"{name} must be a contiguous {np.dtype(dtype).name} array shared with the caller")


class LinuxProgram:
    """A concurrent cycle's install program as ``struct rgc_program``, filled
    from the arrays heap.kernel.PROGRAM_ARRAYS names. Keeps its arrays alive."""

    def __init__(self, program, arena: int, from_space: int):
        ps = _PAGE_SIZE
        self.npages = int(program.npages)
        if self.npages and not owned.covers(from_space, self.npages * ps):
            owned.check("UFFDIO_MOVE", from_space, self.npages * ps)  # the MOVE sources must be remapgc's
        g = self.struct = ffi.new("struct rgc_program *")
        g.npages, g.arena, g.from_space, g.page_size = self.npages, arena, from_space, ps
        self._arrays, self._ptrs = {}, {}
        for count, group in _PROGRAM_GROUPS:
            for name, dtype, ctype in group:
                arr = self._arrays[name] = np.ascontiguousarray(getattr(program, name), dtype=dtype)
                ptr = self._ptrs[name] = ffi.from_buffer(ctype, arr)
                setattr(g, name, ptr)
            sizes = {self._arrays[name].size for name, _, _ in group}
            if len(sizes) != 1:
                raise ValueError(f"the install program's arrays counted by {count} disagree in length: "
                                 + ", ".join(f"{n}={self._arrays[n].size}" for n, _, _ in group))
            setattr(g, count, sizes.pop())


# The fault server's and self-service's counters, as csrc/accelerator.h numbers them (enum rgc_server_counter).
(MOVED, FORWARDED, LATENCIES, FRESH, COPIED, BYTES_COPIED, RESOLVED, EBUSY_COPIES, EAGAIN, EEXIST, HOLES, RETRIES,
 WAITS, CORRUPT, SIGNALS, NCOUNTERS) = range(16)


def _counter(index: int) -> property:
    return property(lambda self: int(self.counters[index]), doc=f"counters[{index}]")


class LinuxFaultServer:
    """``LinuxAccelerator.fault_server``: the C fault-serving thread and the pipe of
    faults it forwards. ``start``, then ``read_forwarded`` from the Python
    handler's thread; ``request_stop``, and once that thread is done,
    ``close`` (joins the C thread)."""

    FORWARD_CLAIMED = 1  # the page is still claimed: a MOVE of it was refused (errno in bits 8..)

    def __init__(self, uffd, program: LinuxProgram, state, installed, max_latencies: int):
        self._keep = (program, state, installed)
        self.counters = np.zeros(NCOUNTERS, dtype=np.int64)
        # written up to counters[LATENCIES] and read only that far: not zeroed (512 KiB of
        # memset per cycle, inside a self-serving cycle's pause)
        self.latencies = np.empty(max_latencies, dtype=np.int64)
        self._forward_r, self._forward_w = os.pipe2(os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        ps = _PAGE_SIZE
        self._scratch = lib.rgc_mmap(0, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        if self._scratch < 0:
            self._close_fds()
            raise OSError(-self._scratch, "mapping the fault server's scratch page")
        srv = self._srv = ffi.new("struct rgc_fault_server *")
        srv.uffd, srv.forward_fd, srv.stop_fd = uffd._fd(), self._forward_w, self._stop_r
        srv.g, srv.scratch = program.struct, self._scratch
        self._ptrs = (ffi.from_buffer("int8_t[]", state), ffi.from_buffer("int64_t[]", installed),
                      ffi.from_buffer("int64_t[]", self.counters), ffi.from_buffer("int64_t[]", self.latencies))
        srv.state, srv.installed, srv.counters, srv.latencies = self._ptrs
        srv.max_latencies = max_latencies
        self._started = self._stopped = False
        self._buf = b""

    def start(self) -> None:
        ret = lib.rgc_fault_server_start(self._srv)
        if ret < 0:
            self._close_fds()
            raise OSError(-ret, f"starting the fault server thread: {os.strerror(-ret)}")
        self._started = True

    def read_forwarded(self, timeout: float) -> list[tuple[int, UffdError | None]]:
        """Faults the C thread left to Python, waiting up to ``timeout`` s:
        (address, None), or (address, the kernel's refusal of the server's
        MOVE of that page, which the server still holds claimed)."""
        import select

        if self._stopped:
            return []
        ready, _, _ = select.select([self._forward_r], [], [], timeout)
        if not ready:
            return []
        data = self._buf + os.read(self._forward_r, 24 * 256)
        whole = len(data) - len(data) % 24
        self._buf = data[whole:]
        words = np.frombuffer(data[:whole], dtype=np.uint64).reshape(-1, 3)
        return [(a, self._refusal(a, f, m) if f & self.FORWARD_CLAIMED else None)
                for a, f, m in words.tolist() if a]

    @staticmethod
    def _refusal(addr: int, flags: int, moved: int) -> UffdError:
        moved = moved - (1 << 64) if moved >> 63 else moved
        return UffdError(flags >> 8, f"{os.strerror(flags >> 8)} (UFFDIO_MOVE of 0x{addr:x}, native fault server)",
                         moved=max(moved, 0))

    def request_stop(self) -> None:
        """The C thread ends soon (it polls the stop pipe with the uffd), and a
        reader waiting in ``read_forwarded`` returns now (an empty message)."""
        if self._started and not self._stopped:
            try:
                os.write(self._stop_w, b"x")
                os.write(self._forward_w, bytes(24))
            except OSError:
                pass

    def close(self) -> None:
        """Joins the C thread and closes the pipes; call once nobody reads forwarded faults."""
        if self._stopped:
            return
        self.request_stop()
        self._stopped = True
        if self._started:
            lib.rgc_fault_server_join(self._srv)
        self._close_fds()

    def _close_fds(self) -> None:
        if getattr(self, "_scratch", -1) > 0:
            lib.rgc_munmap(self._scratch, _PAGE_SIZE)
            self._scratch = -1
        for fd in (self._forward_r, self._forward_w, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    pages_moved = _counter(MOVED)
    pages_copied = _counter(COPIED)
    bytes_copied = _counter(BYTES_COPIED)
    fresh_pages = _counter(FRESH)

    @property
    def served(self) -> int:
        """Faults resolved here (installs, zero pages, wakes)."""
        return int(self.counters[MOVED] + self.counters[COPIED] + self.counters[RESOLVED])

    def served_latencies(self) -> np.ndarray:
        return self.latencies[: int(self.counters[LATENCIES])].copy()


class SettledCounts:
    """Counters of refusals settled natively (a self-serving chunk walk's), named as LinuxSelfService's."""

    def __init__(self, counters):
        self.counters = counters

    pages_moved = _counter(MOVED)
    pages_copied = _counter(COPIED)
    bytes_copied = _counter(BYTES_COPIED)
    ebusy_copies = _counter(EBUSY_COPIES)
    eagain_retries = _counter(EAGAIN)
    eexist_races = _counter(EEXIST)
    holes = _counter(HOLES)
    install_retries = _counter(RETRIES)
    corrupt = _counter(CORRUPT)


SELF_SERVICE_SCRATCH_PAGES = 16  # rebuilt pages assembled at once by faulting threads (more wait for one)
REMOVE_TIMEOUT_MS = 10_000
_STILL_READ: list = []  # entries a handler may still read after a timed-out stop: kept alive


class LinuxSelfService:
    """``LinuxAccelerator.self_service``: a heap's entry in the SIGBUS
    handler's table (csrc/sigbus.c). Between ``start`` and ``stop`` a SIGBUS
    at an address of the arena is served by the thread that took it: the
    page claimed, built and installed as the fault server would (same C),
    a refusal settled there (EBUSY: COPY; EAGAIN: retry; ENOENT: ZEROPAGE),
    a page someone else holds waited for. The uffd must have been opened
    with UFFD_FEATURE_SIGBUS (``LinuxUffd.self_serving``)."""

    def __init__(self, uffd, program: LinuxProgram, state, installed, max_latencies: int,
                 nscratch: int = SELF_SERVICE_SCRATCH_PAGES):
        if not getattr(uffd, "self_serving", False):
            raise ValueError("self-served faults need a userfaultfd opened with UFFD_FEATURE_SIGBUS")
        ps = _PAGE_SIZE
        self._keep = (program, state, installed)
        self.counters = np.zeros(NCOUNTERS, dtype=np.int64)
        # written up to counters[LATENCIES] and read only that far: not zeroed (512 KiB of
        # memset per cycle, inside a self-serving cycle's pause)
        self.latencies = np.empty(max_latencies, dtype=np.int64)
        self._busy = np.zeros(nscratch, dtype=np.int32)
        self._nscratch = nscratch
        self._scratch = lib.rgc_mmap(0, nscratch * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        if self._scratch < 0:
            raise OSError(-self._scratch, "mapping the self-service scratch pages")
        e = self._entry = ffi.new("struct rgc_selfserve *")
        e.uffd, e.g = uffd._fd(), program.struct
        self._ptrs = (ffi.from_buffer("int8_t[]", state), ffi.from_buffer("int64_t[]", installed),
                      ffi.from_buffer("int64_t[]", self.counters), ffi.from_buffer("int64_t[]", self.latencies),
                      ffi.from_buffer("int32_t[]", self._busy))
        e.state, e.installed, e.counters, e.latencies, e.scratch_busy = self._ptrs
        e.max_latencies = max_latencies
        e.lo = program.struct.arena
        e.hi = program.struct.arena + max(program.npages, 0) * ps
        e.scratch, e.nscratch = self._scratch, nscratch
        self._started = self._stopped = False
        # dropped without stop() (a cycle abandoned half-built): out of the table before its memory goes
        self._finalizer = weakref.finalize(self, _remove_entry, e, (self._ptrs, self._keep, self.counters,
                                                                   self.latencies, self._busy))
        self._finalizer.atexit = False

    def cover(self, length: int) -> None:
        """Serve SIGBUS over ``length`` bytes of the arena (past the program: fresh pages)."""
        self._entry.hi = self._entry.lo + length

    def start(self) -> None:
        ret = lib.rgc_selfserve_add(self._entry)
        if ret < 0:
            raise OSError(-ret, f"entering the SIGBUS handler's table: {os.strerror(-ret)}")
        self._started = True

    def stop(self) -> None:
        """No longer served (after the arena is unregistered); waits for handlers still reading the entry."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            ret = lib.rgc_selfserve_remove(self._entry, REMOVE_TIMEOUT_MS)
            if ret == -errno.ETIMEDOUT:
                _STILL_READ.append(self)  # a handler still waits on a page: its memory must stay
                return
        self._finalizer.detach()
        self._unmap()

    def _unmap(self) -> None:
        if self._scratch > 0:
            lib.rgc_munmap(self._scratch, self._nscratch * _PAGE_SIZE)
            self._scratch = -1

    pages_moved = _counter(MOVED)
    pages_copied = _counter(COPIED)
    bytes_copied = _counter(BYTES_COPIED)
    fresh_pages = _counter(FRESH)
    ebusy_copies = _counter(EBUSY_COPIES)
    eagain_retries = _counter(EAGAIN)
    eexist_races = _counter(EEXIST)
    holes = _counter(HOLES)
    install_retries = _counter(RETRIES)
    waits = _counter(WAITS)
    corrupt = _counter(CORRUPT)
    signals = _counter(SIGNALS)

    @property
    def served(self) -> int:
        """Faults resolved (installs, zero pages, settled refusals)."""
        c = self.counters
        return int(c[MOVED] + c[COPIED] + c[RESOLVED] + c[EBUSY_COPIES] + c[HOLES] + c[EEXIST])

    def served_latencies(self) -> np.ndarray:
        return self.latencies[: min(int(self.counters[LATENCIES]), self.latencies.size)].copy()


def _remove_entry(entry, keep) -> None:
    """A LinuxSelfService's finalizer: its entry leaves the table before ``keep`` (its buffers) goes."""
    if lib.rgc_selfserve_remove(entry, REMOVE_TIMEOUT_MS) == -errno.ETIMEDOUT:
        _STILL_READ.append((entry, keep))


def sigbus_table() -> dict:
    """The SIGBUS handler's table: heaps served now, and the SIGBUS it passed on
    (at no heap's address, while a self-serving uffd was open) with the last address,
    and those of a cycle that had just ended (``late``: the access ran again)."""
    out = ffi.new("int64_t[4]")
    lib.rgc_selfserve_stats(out)
    return {"entries": int(out[0]), "passed_on": int(out[1]), "last_passed_on": int(out[2]), "late": int(out[3])}


def sigbus_handler_installed() -> bool:
    """Whether SIGBUS is handled by the self-service handler now."""
    return lib.rgc_selfserve_installed() == 1


class LinuxAccelerator:
    """What a LinuxUffd does natively for a concurrent cycle (heap.kernel.Accelerator)."""

    def __init__(self, uffd):
        self._uffd = uffd

    def load_program(self, program, arena: int, from_space: int) -> LinuxProgram:
        return LinuxProgram(program, arena, from_space)

    def chunk_walker(self, program: LinuxProgram, *, state, installed, stop, chunk: int, scratch: int,
                     settle_refusals: bool = False):
        """The concurrent compactor's walk over chunks nobody touched
        (``rgc_install_chunks`` in csrc/install_walk.c): ``walk(first_chunk) ->
        ChunkWalk``. ``state`` (int8), ``installed`` (int64[1]) and ``stop``
        (int32[1]) are shared with the caller, which claims pages with the same
        compare-and-swap. ``scratch``: ``chunk`` pages where rebuilt pages are
        assembled. ``settle_refusals`` (a self-serving heap): a refused MOVE is
        settled in C page by page as a self-served fault settles it, counted in
        ``walk.settled`` (``SettledCounts``); the walk never stops
        at one, so no page is left held for Python."""
        _check_shared(state=(state, np.int8), installed=(installed, np.int64), stop=(stop, np.int32))
        if chunk <= 0 or state.size < program.npages:
            raise ValueError("the page states do not cover the program's pages")
        ptrs = (program.struct, ffi.from_buffer("int8_t[]", state), ffi.from_buffer("int32_t[]", stop),
                ffi.from_buffer("int64_t[]", installed))
        out = np.zeros(8, dtype=np.int64)
        out_p = ffi.from_buffer("int64_t[]", out)
        mine = np.zeros(chunk, dtype=np.uint8)  # the pages of the chunk it stopped in that it claimed
        mine_p = ffi.from_buffer("uint8_t[]", mine)
        uffd = self._uffd
        counters = np.zeros(NCOUNTERS, dtype=np.int64) if settle_refusals else None
        counters_p = ffi.from_buffer("int64_t[]", counters) if settle_refusals else None

        def walk(first_chunk: int) -> ChunkWalk:
            if settle_refusals:
                ret = lib.rgc_install_chunks_settling(uffd._fd(), ptrs[0], ptrs[1], chunk, first_chunk, scratch,
                                                      ptrs[2], ptrs[3], mine_p, out_p, counters_p)
            else:
                ret = lib.rgc_install_chunks(uffd._fd(), ptrs[0], ptrs[1], chunk, first_chunk, scratch, ptrs[2],
                                             ptrs[3], mine_p, out_p)
            if ret < 0:
                raise OSError(-ret, f"the native chunk walk: {os.strerror(-ret)}")
            o = out.tolist()
            return ChunkWalk(CHUNK_WALK_STATUS[o[0]], *o[1:])

        walk.mine = mine
        walk.settled = SettledCounts(counters) if settle_refusals else None  # what it settled itself
        walk.keep = (program, state, installed, stop, out, ptrs, counters_p)  # buffers live as long as walk
        return walk

    def fault_server(self, program: LinuxProgram, *, state, installed,
                     max_latencies: int = 1 << 16) -> LinuxFaultServer:
        """A C thread that serves a concurrent cycle's common userfaults without
        the GIL (``rgc_fault_server_main`` in csrc/fault_server.c). What it does
        not serve it forwards: ``LinuxFaultServer.read_forwarded``."""
        _check_shared(state=(state, np.int8), installed=(installed, np.int64))
        if state.size < program.npages:
            raise ValueError("the page states do not cover the program's pages")
        return LinuxFaultServer(self._uffd, program, state, installed, max_latencies)

    def self_service(self, program: LinuxProgram, *, state, installed,
                     max_latencies: int = 1 << 16) -> LinuxSelfService:
        """The cycle's faults served by the faulting threads' SIGBUS (csrc/sigbus.c);
        the uffd must be self-serving (opened with UFFD_FEATURE_SIGBUS)."""
        _check_shared(state=(state, np.int8), installed=(installed, np.int64))
        if state.size < program.npages:
            raise ValueError("the page states do not cover the program's pages")
        return LinuxSelfService(self._uffd, program, state, installed, max_latencies)
