"""Who serves a concurrent cycle's userfaults: the faulting thread itself, or a handler thread.

``Heap(faults=...)``:

* ``"self"``: the userfaultfd is opened with ``UFFD_FEATURE_SIGBUS``. A
  missing fault in the arena is never queued: the faulting thread takes
  SIGBUS and a native handler installs the page there and then (the Linux
  backend's ``accelerator.self_service``: csrc/sigbus.c), or the simulator's
  SIGBUS callback does it in Python (``heap.faults``). No round trip to
  another thread, and no access can deadlock on a userfault, whatever it
  holds (a numpy read holding the GIL, a C extension's lock).
* ``"thread"``: faults are queued on the userfaultfd and served by the
  cycle's handler (the native fault server, and a Python thread for what it
  forwards). docs/design.md, "The GIL", says what accesses must then avoid.
* ``"auto"`` (Heap's default): measured once per process on this kernel
  (``measure``: a fault's round trip as the mutator sees it, both ways, over
  a few dozen pages); self-served unless the handler thread is clearly
  faster (``pick``). Without a native fault service to measure
  (the simulator) it is "thread". The choice and its reason are kept
  (``Spaces.faults_reason``) and reported by ``remapgc doctor``.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .kernel import UFFD_FEATURE_MOVE, UFFD_FEATURE_SIGBUS, UFFDIO_REGISTER_MODE_MISSING

FAULT_MODES = ("auto", "self", "thread")
PROBE_PAGES = 48
_measured: dict[str, tuple[str, str]] = {}  # kernel class -> (mode, reason), measured once per process
_measure_lock = threading.Lock()


def uffd_features(mode: str) -> int:
    """The userfaultfd features a fault mode asks for beyond UFFD_FEATURE_MOVE."""
    return UFFD_FEATURE_SIGBUS if mode == "self" else 0


def self_service_refused(mode: str, uffd, kernel) -> str | None:
    """Why a uffd opened for ``mode`` cannot serve its faults in the faulting
    thread (None: it can, or the mode is "thread"). It needs a SIGBUS uffd
    (a wrapper may hide that) and a handler: the accelerator's native one, or
    the kernel's Python SIGBUS hook (the simulator's ``sigaction_sigbus``)."""
    if mode != "self":
        return None
    if not uffd.self_serving:
        return f"faults='self' asked for, but {type(uffd).__name__} is not self-serving: the handler thread serves"
    if uffd.accelerator is None and kernel.sigaction_sigbus is None:
        return (f"faults='self' asked for, but neither {type(uffd).__name__} (no accelerator) nor "
                f"{type(kernel).__name__} (no sigaction_sigbus) can serve a SIGBUS: the handler thread serves")
    return None


def choose_fault_mode(wanted: str, kernel) -> tuple[str, str]:
    """(mode, why) for ``Heap(faults=wanted)``."""
    if wanted not in FAULT_MODES:
        raise ValueError(f"faults must be one of {FAULT_MODES}, not {wanted!r}")
    if wanted != "auto":
        return wanted, "asked for"
    with _measure_lock:
        key = f"{type(kernel).__module__}.{type(kernel).__qualname__}"  # a wrapper measures apart
        if key not in _measured:
            _measured[key] = _decide(kernel)
        return _measured[key]


def _decide(kernel) -> tuple[str, str]:
    try:
        m = measure(kernel)
    except Exception as exc:  # no userfaultfd, no SIGBUS feature...: the queued faults always work
        return "thread", f"measuring the fault modes failed ({type(exc).__name__}: {exc})"
    if m is None:
        return "thread", "this backend has no native fault service to measure (self-served faults run in Python)"
    return pick(m)


# Self-served faults are kept unless the handler thread is clearly faster: they have no
# GIL hazard and no Python thread competing for the GIL during a cycle, and 48 round
# trips on a loaded 2-vCPU machine are noisy (p50 7.8 against 12.5 us here at load 1,
# 12.1 against 12.6 at load 3): a near tie must not flip a process to the handler thread.
SELF_MARGIN = 1.25


def pick(m: dict) -> tuple[str, str]:
    """(mode, why) from ``measure``'s round trips: "self" unless its p50 is more than
    SELF_MARGIN times the handler thread's."""
    mode = "self" if m["self_p50_ns"] <= SELF_MARGIN * m["thread_p50_ns"] else "thread"
    return mode, (f"measured at first use: a fault's round trip p50 {m['self_p50_ns'] / 1000:.1f} us self-served, "
                  f"{m['thread_p50_ns'] / 1000:.1f} us through the handler thread ({PROBE_PAGES} faults each; "
                  f"self-served unless {SELF_MARGIN}x slower)")


class _ProbeProgram:
    """An install program of ``n`` pages that move whole, nothing to fix up (the accelerator's protocol)."""

    def __init__(self, n: int):
        self.npages = n
        self.piece_dst = np.zeros(1, dtype=np.int64)
        self.piece_src = np.zeros(1, dtype=np.int64)
        self.piece_rebuilt = np.zeros(1, dtype=np.uint8)
        for name in ("slot_page", "slot_off", "seg_page", "seg_off", "seg_src", "seg_len"):
            setattr(self, name, np.zeros(0, dtype=np.int64))
        self.slot_val = np.zeros(0, dtype=np.uint64)


def measure(kernel, pages: int = PROBE_PAGES) -> dict | None:
    """The fault round trip a mutator sees in each mode, ns (p50 and p99), or None
    when the backend serves no faults natively. Each mode: a fresh userfaultfd,
    ``pages`` pages flipped away and touched one by one through the kernel's
    accessor while the native side installs them."""
    probe = kernel.userfaultfd(UFFD_FEATURE_MOVE)
    try:
        if probe.accelerator is None or not probe.features & UFFD_FEATURE_SIGBUS:
            return None
    finally:
        probe.close()
    out = {}
    for mode in ("self", "thread"):
        lat = _round_trips(kernel, mode, pages)
        out[f"{mode}_p50_ns"] = int(np.percentile(lat, 50))
        out[f"{mode}_p99_ns"] = int(np.percentile(lat, 99))
    return out


def _round_trips(kernel, mode: str, pages: int) -> np.ndarray:
    ps = kernel.page_size
    size = pages * ps
    arena, src = kernel.mmap(size), kernel.mmap(size)
    uffd = kernel.userfaultfd(UFFD_FEATURE_MOVE | uffd_features(mode))
    service = None
    try:
        kernel.store_words(np.arange(pages, dtype=np.uint64) * ps + src, np.arange(pages, dtype=np.uint64) + 1)
        uffd.register(arena, size, UFFDIO_REGISTER_MODE_MISSING)
        program = uffd.accelerator.load_program(_ProbeProgram(pages), arena, src)
        state, installed = np.zeros(pages, dtype=np.int8), np.zeros(1, dtype=np.int64)
        if mode == "self":
            service = uffd.accelerator.self_service(program, state=state, installed=installed)
            service.start()
        else:
            service = uffd.accelerator.fault_server(program, state=state, installed=installed)
            service.start()
        lat = np.zeros(pages, dtype=np.int64)
        for i in range(pages):
            t0 = time.perf_counter_ns()
            word = kernel.load_words(np.array([arena + i * ps], dtype=np.uint64))
            lat[i] = time.perf_counter_ns() - t0
            if int(word[0]) != i + 1:
                raise AssertionError(f"probe page {i} read {int(word[0])}")
        uffd.unregister(arena, size)
        return lat
    finally:
        if service is not None:
            if mode == "self":
                service.stop()
            else:
                service.request_stop()
                service.close()
        uffd.close()
        kernel.munmap(arena, size)
        kernel.munmap(src, size)
