"""Scenarios of the issue-16 regression tests that can hang or deadlock a
process: each runs here, in its own interpreter (``support.run_child``), and
prints ``RESULT {json}`` as its last line.

    python -m tests.regressions.child SCENARIO ARGS...

A faulthandler watchdog (REMAPGC_CHILD_WATCHDOG seconds) dumps every thread's
stack and ends the process if a scenario hangs.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time

import numpy as np

from heap import Heap, HeapClosed, HeapError
from tests.regressions.support import pattern

SCENARIOS = {}
N_OBJECTS = 400
PAYLOAD = 48


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def report(**fields) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


class Graph:
    """Objects with distinct payloads in a ring (each links the next), with
    garbage between them so that every collection moves them; only every
    other object is held by a Ref, the rest are reachable through the ring."""

    def __init__(self, heap: Heap, n: int = N_OBJECTS):
        self.heap, self.n = heap, n
        objs, junk = [], []
        for i in range(n):
            objs.append(heap.alloc(PAYLOAD, 1))
            objs[-1].write(pattern(i, PAYLOAD))
            junk.append(heap.alloc(200, 0))
        for i in range(n):
            objs[i].set_ref(0, objs[(i + 1) % n])
        self.held = {i: objs[i] for i in range(0, n, 2)}
        del objs, junk

    def check(self) -> int:
        """Every object's bytes and link, read through the public API; returns the number checked."""
        bad = 0
        for i, ref in self.held.items():
            nxt = ref.get_ref(0)
            bad += ref.read(PAYLOAD) != pattern(i, PAYLOAD)
            bad += nxt is None or nxt.read(PAYLOAD) != pattern((i + 1) % self.n, PAYLOAD)
        if bad:
            raise AssertionError(f"{bad} objects or links lost")
        return 2 * len(self.held)


class Churn:
    """Objects that die below live ones, so that every collection moves
    something: with nothing dead below the last live object a collection
    keeps everything in place and flips nothing."""

    def __init__(self, heap: Heap, keep: int = 64):
        self.heap, self.ring, self.keep = heap, [], keep

    def step(self) -> None:
        self.heap.alloc(48, 0)  # garbage at once
        self.ring.append(self.heap.alloc(48, 0))
        if len(self.ring) > self.keep:
            del self.ring[0]  # the oldest dies, below the newer ones


def settle_and_check(heap: Heap, graph: Graph) -> dict:
    """After the trouble: the heap must verify, keep everything, and collect again both ways."""
    heap.verify()
    checked = graph.check()
    heap.collect()
    heap.collect(concurrent=True)
    heap.verify()
    checked += graph.check()
    return dict(checked=checked)


class Interrupts:
    """SIGINT raises KeyboardInterrupt only while ``armed`` (inside the calls
    under test), so the harness itself is never interrupted."""

    def __init__(self):
        self.armed = False
        self.raised = 0
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        if self.armed:
            self.raised += 1
            raise KeyboardInterrupt

    def __enter__(self):
        self.armed = True
        return self

    def __exit__(self, *exc):
        self.armed = False


# -- 3: host callbacks --------------------------------------------------------------------
class Scanner:
    """A root scanner holding a few addresses, misbehaving as told."""

    def __init__(self, heap: Heap, fault: str):
        self.heap, self.fault = heap, fault
        self.objs = [heap.alloc(32, 0) for _ in range(8)]
        for i, o in enumerate(self.objs):
            o.write(pattern(1000 + i, 32))
        self.addrs = np.array([o.address for o in self.objs], dtype=np.int64)
        self.armed = True

    def scan_roots(self):
        if self.armed and self.fault == "alloc_in_scan":
            self.armed = False
            self.heap.alloc(16, 0)
        if self.armed and self.fault == "close_in_scan":
            self.armed = False
            self.heap.close()
        return self.addrs

    def update_roots(self, forward):
        if self.armed and self.fault == "raise_in_update":
            self.armed = False
            raise RuntimeError("a runtime's scanner failed")
        if self.armed and self.fault == "stats_in_update":
            self.armed = False
            self.heap.stats()
        if self.armed and self.fault == "read_in_update":
            self.armed = False
            self.objs[0].read(8)
        self.addrs = forward(self.addrs)


@scenario
def scanner(backend: str, mode: str, fault: str) -> None:
    h = Heap(backend, size=32 << 20)
    g = Graph(h)
    s = Scanner(h, fault)
    h.add_root_scanner(s)
    try:
        h.collect(concurrent=(mode == "concurrent"))
        error = None
    except BaseException as exc:  # what the caller of collect() sees
        error = f"{type(exc).__name__}: {exc}"
        error_class = [c.__name__ for c in type(exc).__mro__]
    if fault == "close_in_scan":
        report(error=error, error_classes=error_class if error else [], closed_after=_closed(h))
        return
    out = settle_and_check(h, g)
    h.remove_root_scanner(s)
    report(error=error, error_classes=error_class if error else [], **out)


def _closed(h: Heap) -> bool:
    try:
        h.stats()
    except HeapClosed:
        return True
    return False


# -- 4 / 9: Ctrl-C during Ref accesses while another thread collects concurrently -------------------
@scenario
def sigint_during_accesses(backend: str, seconds: str) -> None:
    h = Heap(backend, size=64 << 20)
    g = Graph(h, 2000)
    stop = threading.Event()
    errors: list[str] = []
    cycles = [0]

    churn = Churn(h)

    def collector():
        while not stop.is_set():
            try:
                for _ in range(8):
                    churn.step()
                h.collect(concurrent=True)
                cycles[0] += 1
            except Exception as exc:  # noqa: BLE001 -- reported, the test fails on it
                errors.append(f"collect: {type(exc).__name__}: {exc}")
                return

    def sender():  # bursts, as a user holding Ctrl-C: a second signal lands while the first unwinds
        while not stop.is_set():
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.001)

    ints = Interrupts()
    threads = [threading.Thread(target=collector, name="collector"), threading.Thread(target=sender, name="sender")]
    for t in threads:
        t.start()
    interrupts = accesses = 0
    deadline = time.monotonic() + float(seconds)
    refs = list(g.held.values())
    while time.monotonic() < deadline:
        try:
            for r in refs[:50]:
                with ints:
                    r.read(8)
                    r.write(b"\0", PAYLOAD - 1)
                    nxt = r.get_ref(0)
                    r.set_ref(0, nxt)
                accesses += 4
        except KeyboardInterrupt:
            interrupts += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"access: {type(exc).__name__}: {exc}")
            break
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop.set()
    for t in threads:
        t.join(30)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        report(stuck=stuck, errors=errors, interrupts=interrupts, cycles=cycles[0])
        os._exit(0)
    # the pattern byte written at PAYLOAD-1 was zeroed on purpose: restore before checking
    for i, r in g.held.items():
        r.write(pattern(i, PAYLOAD)[-1:], PAYLOAD - 1)
    for i in range(1, g.n, 2):
        g.held[i - 1].get_ref(0).write(pattern(i, PAYLOAD)[-1:], PAYLOAD - 1)
    out = settle_and_check(h, g) if not errors else {}
    report(stuck=[], errors=errors, interrupts=interrupts, accesses=accesses, cycles=cycles[0], **out)


# -- 5: the escape hatch (three SIGINTs) landing right after the flip ------------------------------
class Proxy:
    """A Kernel that forwards everything, and calls ``hook(name, args)`` after each call of ``names``."""

    def __init__(self, kernel, names, hook):
        self._k, self._names, self._hook = kernel, names, hook

    def __getattr__(self, name):
        attr = getattr(self._k, name)
        if name not in self._names:
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._hook(name, args, kwargs)
            return result
        return call


def _open(backend: str):
    from heap.kernel import open_kernel
    return open_kernel(backend)


@scenario
def three_sigints_after_flip(backend: str, mode: str) -> None:
    armed = [False]

    def hook(name, args, kwargs):
        if armed[0] and kwargs.get("dontunmap"):  # the flip
            armed[0] = False
            for _ in range(3):
                signal.raise_signal(signal.SIGINT)

    k = Proxy(_open(backend), {"mremap"}, hook)
    h = Heap(k, size=32 << 20)
    g = Graph(h)
    big = h.alloc(3 * 4096)  # live pages that move whole (garbage below them): the collection flips
    armed[0] = True
    try:
        h.collect(concurrent=(mode == "concurrent"))
        raised = None
    except KeyboardInterrupt:
        raised = "KeyboardInterrupt"
    out = settle_and_check(h, g)
    del big
    report(raised=raised, **out)


# -- 6: Ctrl-C inside close() while a concurrent cycle runs, then close() again -------------------
@scenario
def sigint_inside_close(backend: str, trials: str) -> None:
    ints = Interrupts()
    interrupted = 0
    problems: list[str] = []
    for trial in range(int(trials)):
        h = Heap(backend, size=64 << 20)
        g = Graph(h, 1500)
        outcome: list[str] = []
        started = threading.Event()

        churn = Churn(h)

        def collector():
            started.set()
            try:
                while True:
                    for _ in range(8):
                        churn.step()
                    h.collect(concurrent=True)
            except HeapClosed:
                outcome.append("closed")
            except BaseException as exc:  # noqa: BLE001
                outcome.append(f"{type(exc).__name__}: {exc}")

        t = threading.Thread(target=collector, name="collector")
        t.start()
        started.wait()
        time.sleep(0.002 * (trial % 10))
        stop = threading.Event()

        def sender():
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.0003)

        s = threading.Thread(target=sender)
        s.start()
        try:
            with ints:
                h.close()
        except KeyboardInterrupt:
            interrupted += 1
        stop.set()
        s.join()
        h.close()
        t.join(30)
        if t.is_alive():
            problems.append(f"trial {trial}: collect() still running 30 s after close()")
            break
        if outcome and outcome[0] != "closed":
            problems.append(f"trial {trial}: collect() raised {outcome[0]}")
        time.sleep(0.05)
        left = [x.name for x in threading.enumerate() if x.name.startswith("remapgc")]
        if left:
            problems.append(f"trial {trial}: threads still running after close(): {left}")
            break
        del g
    report(interrupted=interrupted, problems=problems, hits=ints.raised)


# -- 11: close() racing collect(concurrent=True) --------------------------------------------------------
@scenario
def close_races_concurrent_collect(backend: str, trials: str) -> None:
    outcomes: dict[str, int] = {}
    for trial in range(int(trials)):
        h = Heap(backend, size=16 << 20)
        g = Graph(h, 300)
        result: list[str] = []

        def collector():
            try:
                h.collect(concurrent=True)
                result.append("done")
            except HeapClosed:
                result.append("HeapClosed")
            except BaseException as exc:  # noqa: BLE001
                result.append(f"{type(exc).__name__}: {exc}")

        t = threading.Thread(target=collector)
        t.start()
        time.sleep((trial % 50) * 0.0002)
        h.close()
        t.join(30)
        key = "stuck" if t.is_alive() else result[0]
        outcomes[key] = outcomes.get(key, 0) + 1
        if t.is_alive():
            break
        del g
    report(outcomes=outcomes)


# -- 7: fork ------------------------------------------------------------------------------------------
@scenario
def child_of_fork_uses_its_heap(backend: str, action: str) -> None:
    """Parent and child go on with their own copies of one heap: the parent
    allocates first, then the child allocates (other sizes: other addresses
    for the same rows) or drops half its roots and collects; then the parent's
    heap must still verify and keep everything."""
    h = Heap(backend, size=32 << 20)
    g = Graph(h)
    h.collect()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: use the heap as its own
        code = 0
        try:
            os.read(go_r, 1)  # after the parent's allocations
            if action == "collect":
                for i in list(g.held)[::2]:
                    del g.held[i]
                h.collect()
            mine = [h.alloc(80, 0) for _ in range(3000)]
            for o in mine[::7]:
                o.write(b"child" * 16)
            h.verify()
        except BaseException:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    parents = [h.alloc(PAYLOAD, 0) for _ in range(3000)]
    for i, o in enumerate(parents):
        o.write(pattern(5000 + i, PAYLOAD))
    os.write(go_w, b"x")
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            report(child="stuck")
            return
        time.sleep(0.01)
    child_ok = os.waitstatus_to_exitcode(status) == 0
    try:
        out = settle_and_check(h, g)
        lost = sum(o.read(PAYLOAD) != pattern(5000 + i, PAYLOAD) for i, o in enumerate(parents))
        report(child_ok=child_ok, parent="ok" if not lost else f"{lost} objects lost", **out)
    except HeapError as exc:
        report(child_ok=child_ok, parent=f"{type(exc).__name__}: {exc}")


# -- 8: two heaps collecting in two threads -----------------------------------------------------------
@scenario
def two_heaps_two_threads(backend: str, cycles: str) -> None:
    errors: list[str] = []
    sys.setswitchinterval(1e-6)  # thread switches everywhere, as on a loaded machine

    def work(seed: int):
        h = Heap(backend, size=16 << 20)
        g = Graph(h, 200)
        try:
            for i in range(int(cycles)):
                h.collect(concurrent=bool(i % 2))
                h.alloc(100, 0)
            g.check()
            h.verify()
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"heap {seed}: {type(exc).__name__}: {exc}")
        try:
            h.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"close {seed}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    report(errors=errors, stuck=sum(t.is_alive() for t in threads))


# -- 9: Ctrl-C while the main thread waits in a simulated userfault ------------------------------------
@scenario
def sigint_in_simulated_userfault(faults: str) -> None:
    """The Kernel protocol directly: a server thread resolves the main thread's
    userfaults slowly while SIGINTs arrive; every KeyboardInterrupt is caught
    and the kernel must go on working."""
    from heap.kernel import UFFDIO_REGISTER_MODE_MISSING, open_kernel

    k = open_kernel("sim")
    ps = k.page_size
    npages = 64
    arena = k.mmap(npages * ps)
    uffd = k.userfaultfd()
    uffd.register(arena, npages * ps, UFFDIO_REGISTER_MODE_MISSING)
    stop = threading.Event()
    errors: list[str] = []

    def server():
        while not stop.is_set():
            try:
                for ev in uffd.read_events(timeout=0.01):
                    time.sleep(0.0005)
                    try:
                        uffd.zeropage(ev.address, ps)
                    except OSError:
                        uffd.wake(ev.address, ps)
            except BaseException as exc:  # noqa: BLE001
                errors.append(f"server: {type(exc).__name__}: {exc}")
                return

    def sender():
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.0007)

    other = k.mmap(16 * ps)

    def busy():  # another thread in the kernel all the time, as a heap's compactor is: its lock is contended
        try:
            while not stop.is_set():
                k.store(other, b"x" * (16 * ps))
                k.madvise(other, 16 * ps, 4)
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"busy thread: {type(exc).__name__}: {exc}")

    ints = Interrupts()
    threads = [threading.Thread(target=server), threading.Thread(target=sender), threading.Thread(target=busy)]
    for t in threads:
        t.start()
    interrupts = done = 0
    for i in range(int(faults)):
        page = arena + (i % npages) * ps
        try:
            k.madvise(page, ps, 4)  # MADV_DONTNEED: missing again, the next touch is a userfault
            with ints:
                k.load(page, 8)
            done += 1
        except KeyboardInterrupt:
            interrupts += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"access {i}: {type(exc).__name__}: {exc}")
            break
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop.set()
    for t in threads:
        t.join(30)
    if not errors:  # the kernel still serves a userfault and still answers calls
        try:
            k.madvise(arena, npages * ps, 4)
            stop.clear()
            t = threading.Thread(target=server)
            t.start()
            assert k.load(arena + 5 * ps, 8) == bytes(8)
            stop.set()
            t.join(30)
            uffd.unregister(arena, npages * ps)
            k.munmap(arena, npages * ps)
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"after: {type(exc).__name__}: {exc}")
    report(errors=errors, interrupts=interrupts, faults=done)


# -- Also: ENOMEM from the real kernel under a memory cgroup limit -------------------------------------
@scenario
def install_under_memcg_limit(cgroup: str) -> None:
    """install_page_range on Linux while this process is in a memory cgroup
    with almost no room: the MOVE's page-table charge is refused (ENOMEM); out
    of the cgroup, installing the rest completes, every byte in place."""
    from pathlib import Path

    from heap.install import install_page_range
    from heap.kernel import UFFDIO_REGISTER_MODE_MISSING, open_kernel
    from tests.regressions.real_kernel import own_memory_cgroup
    try:
        from heap.stats import InstallCounters
    except ImportError:
        from heap.install import InstallCounters
    try:
        from heap.install import InstallInterrupted
    except ImportError:
        InstallInterrupted = None

    k = open_kernel("linux")
    ps, unit = k.page_size, 1 << 21
    n = 8 * unit
    src = k.mmap(n, align=unit)
    data = bytes(range(256)) * (ps // 256)
    for off in range(0, n, ps):
        k.store(src + off, data[: ps - 8] + off.to_bytes(8, "little"))
    frames = k.page_frames(src, n // ps)
    dst = k.mmap(n, align=unit)
    uffd = k.userfaultfd()
    uffd.register(dst, n, UFFDIO_REGISTER_MODE_MISSING)
    counters = InstallCounters()
    parent = own_memory_cgroup()
    cg = Path(cgroup)
    # Only the installing thread joins the cgroup (cgroup v1 places threads,
    # ``tasks``): the page tables a MOVE allocates are charged to the current
    # thread's cgroup, while the process's user pages stay charged to its own,
    # so the interpreter's page faults elsewhere never wait on the limit.
    outcome: list = []

    def install_in_cgroup():
        tid = str(threading.get_native_id())
        (cg / "tasks").write_text(tid)
        try:
            install_page_range(k, uffd, dst, src, n, counters)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 -- the kernel's refusal, as the heap sees it
            outcome.append(exc)
        finally:
            (parent / "tasks").write_text(tid)

    t = threading.Thread(target=install_in_cgroup)
    t.start()
    t.join()
    refused = outcome[0]
    err = getattr(refused, "error", refused)
    done = getattr(refused, "done", 0)
    if refused is not None:
        install_page_range(k, uffd, dst + done, src + done, n - done, counters)
    whole = all(k.load(dst + off, ps) == data[: ps - 8] + off.to_bytes(8, "little") for off in range(0, n, ps))
    zero_copy = bool((k.page_frames(dst, n // ps) == frames).all())
    report(refused=None if refused is None else type(refused).__name__,
           errno=getattr(err, "errno", None), done=done, whole=whole, zero_copy=zero_copy,
           pages_moved=counters.pages_moved)


def main() -> None:
    faulthandler.dump_traceback_later(float(os.environ.get("REMAPGC_CHILD_WATCHDOG", "60")), exit=True)
    name, *args = sys.argv[1:]
    SCENARIOS[name](*args)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a stuck daemon thread must not hang the exit


if __name__ == "__main__":
    main()
