"""Real-kernel stress: 8 mutator threads through 200 concurrent cycles.

Mutators read (checksum on every read), write, link and follow references
in a shared shadow model (tests/concurrent/model.py) and allocate objects of
random sizes, THP-sized ones included (the heap advises MADV_HUGEPAGE and
places objects >= 2 MiB 2 MiB-aligned), while another thread runs
``collect(concurrent=True)`` back to back. No wait is unbounded: every
join has a timeout, and a watchdog dumps every thread's stack to stderr
before the test gives up, so a deadlock is a diagnostic, not a hang.
"""

from __future__ import annotations

import faulthandler
import random
import sys
import threading

import pytest

from heap import Heap
from tests.concurrent.model import Model, garbage, populate

MiB = 1 << 20
MUTATORS = 8
CYCLES = 200
WATCHDOG_S = 150


@pytest.mark.timeout(240)
def test_eight_mutators_through_200_concurrent_cycles_lose_nothing(linux_kernel):
    rnd = random.Random(8)
    errors: list[BaseException] = []
    totals = {"cycles": 0, "faults": 0, "by_faults": 0, "huge": 0}
    with Heap(kernel=linux_kernel, size=256 * MiB, compactor="remap", thp=True) as heap:
        model = Model(heap, seed=8)
        populate(model, 300, rnd)
        stop = threading.Event()
        started = threading.Barrier(MUTATORS + 1)
        huge_lock = threading.Lock()

        def mutator(seed: int):
            r = random.Random(seed)
            started.wait()
            steps = 0
            while not stop.is_set():
                model.step(r)
                steps += 1
                if steps % 61 == 0:
                    model.new(r.randrange(16, 3000), r.randrange(0, 3), r)
                if steps % 400 == 0:
                    with huge_lock:
                        if totals["huge"] >= 24:  # bounded: each one is 2-3 MiB of checked bytes
                            continue
                        totals["huge"] += 1
                    model.new(r.randrange(2 * MiB, 3 * MiB), r.randrange(0, 2), r)  # THP-sized
                if steps % 173 == 0:
                    heap.alloc(r.randrange(4096, 64 * 1024))  # garbage that owns pages

        def collector():
            started.wait()
            try:
                for i in range(CYCLES):
                    garbage(heap, rnd, 30)
                    if i % 25 == 0:
                        heap.alloc(2 * MiB + 100)  # a dead THP-sized object: its unit is freed
                    st = heap.collect(concurrent=True)
                    totals["cycles"] += 1
                    totals["faults"] += st.faults_served
                    totals["by_faults"] += st.pages_installed_by_faults
            finally:
                stop.set()

        def guarded(fn, *args):
            def run():
                try:
                    fn(*args)
                except BaseException as exc:  # reported below
                    errors.append(exc)
                    stop.set()
            return run

        threads = [threading.Thread(target=guarded(mutator, s), name=f"mutator-{s}", daemon=True)
                   for s in range(MUTATORS)]
        threads.append(threading.Thread(target=guarded(collector), name="collector", daemon=True))
        faulthandler.dump_traceback_later(WATCHDOG_S, exit=False, file=sys.stderr)
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(WATCHDOG_S + 5)
        finally:
            faulthandler.cancel_dump_traceback_later()
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        assert not stuck, f"threads still running after {WATCHDOG_S} s (stacks dumped): {stuck}"
        if errors:
            raise errors[0]
        assert totals["cycles"] == CYCLES
        assert totals["faults"] > 0 and totals["by_faults"] > 0, totals  # mutators did meet missing pages
        assert totals["huge"] > 0
        model.check_all()
        heap.verify()
        assert not [t for t in threading.enumerate() if t.name.startswith("remapgc-") and t.is_alive()]
