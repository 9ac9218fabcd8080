"""Child process of the self-service tests on Linux (``python -m tests.selfservice.child MODE``).

Each mode runs under a watchdog (faulthandler dumps the stacks and exits),
so a hang shows as a failure, never as a hung test.

raw-whole, raw-rebuilt: a numpy store to a page not installed yet (a page
    that moves whole, a rebuilt one), holding the GIL, in a self-serving
    heap with no compactor running: the faulting thread's SIGBUS installs it.
raw-cext: a C extension's loop over a page not installed yet (numpy's sum,
    bytes() of a buffer), GIL held: the same.
raw-forked: the same after a fork: the child shares every page, so the
    handler's MOVE is refused with EBUSY and it COPYs the page instead.
signal-during-fault, sim-signal-during-fault: the page is held by another installer (claimed here),
    the access waits for it inside the SIGBUS handler while SIGALRM fires
    every millisecond (each interrupts the handler's sleep); once the claim
    is given back the access installs the page, and the Python SIGALRM
    handler ran. (The access goes through the accessor, which releases the
    GIL: the holder here is a Python thread. A GIL-holding access waiting
    for a page a Python installer holds would wait for ever -- self-served
    faults take away the handler thread's need for the GIL, not a Python
    installer's.)
fork-settles: os.fork while a background collection runs (heap.forksafety
    settles it first); the child checks its heap and collects.
outside, outside-after-close, outside-default: a SIGBUS that is not for a
    heap page (a read past the end of a truncated file mapping) reaches the
    handler installed before ours -- faulthandler's, which dumps the stacks
    and dies of SIGBUS -- with a self-serving heap open, or after the last
    one closed; without faulthandler, the default action kills the process.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import random
import signal
import sys
import tempfile
import threading

import numpy as np

WATCHDOG_S = 20


def small_heap(kernel: str = "linux"):
    from heap import Heap
    from tests.concurrent.model import Model, garbage, populate

    rnd = random.Random(1)
    heap = Heap(kernel=kernel, size=8 << 20, compactor="remap", faults="self")
    model = Model(heap, seed=1)
    populate(model, 80, rnd)
    garbage(heap, rnd, 100)
    return heap, model


def raw_page(heap, page: int):
    from uffd_backend._native import ffi

    addr = heap.base + page * heap.kernel.page_size
    return np.frombuffer(ffi.buffer(ffi.cast("char *", addr), heap.kernel.page_size), dtype=np.uint8)


def pick_page(cycle, rebuilt: bool) -> int:
    pages = np.arange(cycle.program.npages)
    _, is_rebuilt = cycle.program.sources(pages)
    chosen = pages[is_rebuilt.astype(bool) == rebuilt]
    if not chosen.size:
        sys.exit("the plan has no such page")
    return int(chosen[-1])


def raw(mode: str) -> None:
    from heap.concurrent import begin_concurrent, end_concurrent

    heap, model = small_heap()
    cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
    page = pick_page(cycle, rebuilt=mode == "raw-rebuilt")
    if mode == "raw-forked":
        heap.kernel.fork()  # shares every page: MOVE answers EBUSY (the child dies with us)
    arr = raw_page(heap, page)
    if mode == "raw-cext":  # a C extension's loop (numpy's sum, then bytes()), GIL held, over the whole page
        print(f"sum={int(arr.sum())} bytes={len(bytes(raw_page(heap, pick_page(cycle, rebuilt=True))))}")
    else:
        arr[8] = arr[8]  # GIL held while the fault is served
    end_concurrent(heap, cycle)
    model.check_all()
    heap.verify()
    print(f"{mode}: done faults_served={stats.faults_served} ebusy_fallbacks={stats.ebusy_fallbacks} "
          f"pages_moved={stats.pages_moved}", flush=True)
    heap.close()


def signal_during_fault(kernel: str) -> None:
    from heap.concurrent import begin_concurrent, end_concurrent

    alarms = []
    signal.signal(signal.SIGALRM, lambda *_: alarms.append(1))
    heap, model = small_heap(kernel)
    cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
    page = pick_page(cycle, rebuilt=False)
    assert cycle.states.claim(page) == 0  # held by "another installer": the access must wait for it
    done = threading.Event()

    def give_back_later():
        done.wait(0.3)  # the access is waiting in the handler meanwhile, alarms firing
        cycle.states.settle_one(page, False)

    threading.Thread(target=give_back_later, daemon=True).start()
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    # main thread, through the accessor (the holder here is a Python thread: it needs the GIL to
    # give the page back); SIGALRM interrupts the handler's wait, its Python handler runs after
    value = heap.kernel.load(heap.base + page * heap.kernel.page_size + 8, 1)[0]
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    done.set()
    end_concurrent(heap, cycle)
    model.check_all()
    heap.verify()
    print(f"{kernel} signal-during-fault: done value={value} alarms={len(alarms)} faults_served={stats.faults_served}",
          flush=True)
    heap.close()


def fork_settles() -> None:
    """os.fork while a background cycle runs: heap.forksafety settles it first;
    the child has a whole heap (its own self-serving uffd) and collects."""
    heap, model = small_heap()
    handle = heap.collect(concurrent=True, wait=False)
    pid = os.fork()
    if pid == 0:  # the child: only this thread, the heap settled before the fork
        try:
            model.check_all()
            stats = heap.collect(concurrent=True)
            model.check_all()
            heap.verify()
            os._exit(0 if stats.pages_moved >= 0 and heap._uffd.self_serving else 3)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(2)
    done_before_wait = handle.done()
    _, status = os.waitpid(pid, 0)
    stats = handle.wait(20)
    model.check_all()
    heap.verify()
    print(f"fork-settles: done child={os.waitstatus_to_exitcode(status)} settled={done_before_wait} "
          f"pages_moved={stats.pages_moved}", flush=True)
    heap.close()


def sigbus_outside_the_heap() -> None:
    """A read past the end of a file mapping: SIGBUS (BUS_ADRERR) at an address no heap has."""
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * mmap.PAGESIZE)
        f.flush()
        m = mmap.mmap(f.fileno(), mmap.PAGESIZE)
        f.truncate(0)
        print("touching", flush=True)
        m[0]  # noqa: B018 -- the access is the point
    print("survived", flush=True)


def main(mode: str) -> None:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    if mode.startswith("raw-"):
        raw(mode)
    elif mode.endswith("signal-during-fault"):
        signal_during_fault("sim" if mode.startswith("sim-") else "linux")
    elif mode == "fork-settles":
        fork_settles()
    elif mode.startswith("outside"):
        from uffd_backend.accelerator import sigbus_handler_installed

        if mode == "outside-default":
            faulthandler.disable()
        heap, _ = small_heap()
        print(f"installed-open={sigbus_handler_installed()}", flush=True)
        if mode == "outside-after-close":
            heap.close()
            print(f"installed-closed={sigbus_handler_installed()}", flush=True)
        sigbus_outside_the_heap()
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1])
