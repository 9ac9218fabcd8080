"""Child process of the GIL-hazard test (run as ``python -m tests.concurrent.gil_child MODE``).

api: mutator threads read every object through the heap's API while only the
     fault handler (a Python thread) installs pages: must finish.
raw-forwarded: one mutator touches an uninstalled page through a numpy
     view, holding the GIL while it is blocked in the fault, while a forked
     child shares the pages: the native fault server's MOVE gets EBUSY and it
     forwards the fault to the Python handler, which can never run. This
     hangs until the watchdog (faulthandler, a C thread) dumps the stacks and
     exits. The heap never hands out such a view; this shows why.
raw-whole, raw-rebuilt: the same touch, no child, of a page that moves whole
     or of a rebuilt one: the native fault server (a C thread, no GIL)
     installs it, so even this completes.
"""

from __future__ import annotations

import faulthandler
import random
import sys
import threading

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent
from tests.concurrent.model import Model, garbage, populate

WATCHDOG_S = 4


def main(mode: str) -> None:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    rnd = random.Random(1)
    heap = Heap(kernel="linux", size=8 << 20, compactor="remap", faults="thread")  # the handler-thread mode's hazard
    model = Model(heap, seed=1)
    populate(model, 80, rnd)
    garbage(heap, rnd, 100)
    cycle, stats, _ = begin_concurrent(heap, run_compactor=False)
    if mode == "api":
        threads = [threading.Thread(target=lambda objs=model.objects[i::4]: [model.read(o) for o in objs])
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end_concurrent(heap, cycle)
        print(f"api: done, faults_served={stats.faults_served}", flush=True)
    else:
        import numpy as np
        from uffd_backend._native import ffi

        pages = np.arange(cycle.program.npages)
        _, rebuilt = cycle.program.sources(pages)
        chosen = pages[rebuilt] if mode == "raw-rebuilt" else pages[~rebuilt]
        if mode == "raw-forwarded":
            heap.kernel.fork()  # shares every page: MOVE answers EBUSY (the child dies with us)
        if not chosen.size:
            sys.exit(f"{mode}: the plan has no such page")
        addr = heap.base + int(chosen[-1]) * 4096  # not installed yet: nobody touched it
        arr = np.frombuffer(ffi.buffer(ffi.cast("char *", addr), 4096), dtype=np.uint8)
        arr[8] = arr[8]  # GIL held while blocked in the userfault
        end_concurrent(heap, cycle)
        print(f"{mode}: done, faults_served={stats.faults_served}", flush=True)
    heap.close()


if __name__ == "__main__":
    main(sys.argv[1])
