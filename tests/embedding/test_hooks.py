"""The mutator protocol and the collection callbacks (heap.hooks,
docs/embedding.md section 4), disable/enable, a settable collect_every, and
what collect(concurrent=True) does with a compactor that cannot run
concurrently; on both backends, with both compactors, stop-the-world and
concurrent, explicit and automatic collections."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from heap import ConcurrentGCStats, GCStats, Heap, HeapFull
from heap.hooks import CollectionInfo, HookReentry


class Recorder:
    """Mutator hooks and a callback that write what they see into one journal."""

    def __init__(self, heap: Heap, name: str, journal: list):
        self.heap, self.name, self.journal = heap, name, journal

    def _note(self, what: str, info: CollectionInfo) -> None:
        self.journal.append((what, self.name, info.collection, threading.get_ident(), self.heap.lock._is_owned()))

    def stop_mutators(self, info: CollectionInfo) -> None:
        self._note("stop_mutators", info)

    def resume_mutators(self, info: CollectionInfo) -> None:
        self._note("resume_mutators", info)

    def __call__(self, phase: str, info: CollectionInfo) -> None:
        self._note(phase, info)
        if phase == "stop":
            self.stats = info.stats


def garbage_and_survivors(h: Heap, n: int = 20):
    keep = []
    for i in range(n):
        h.alloc(2000)
        keep.append(h.alloc(2000))
        keep[-1].write(bytes([i]) * 2000)
    return keep


@pytest.mark.timeout(120)
def test_hooks_run_in_the_documented_order_on_the_collecting_thread(heap, mode):
    _, concurrent = mode
    journal: list = []
    first, second = Recorder(heap, "first", journal), Recorder(heap, "second", journal)
    heap.add_callback(first)
    heap.add_mutator_hooks(first)
    heap.add_mutator_hooks(second)
    keep = garbage_and_survivors(heap)
    st = heap.collect(concurrent=concurrent)
    me = threading.get_ident()
    assert [(what, who) for what, who, *_ in journal] == [
        ("start", "first"), ("stop_mutators", "first"), ("stop_mutators", "second"),
        ("resume_mutators", "second"), ("resume_mutators", "first"), ("stop", "first")]
    assert {n for _, _, n, _, _ in journal} == {1}  # all about collection number 1
    assert all(t == me for _, _, _, t, _ in journal)
    # the pause steps hold the heap lock
    assert all(locked for what, _, _, _, locked in journal if what in ("start", "stop_mutators", "resume_mutators"))
    assert first.stats is st  # the stop callback saw the stats the caller got
    assert all(r.read(2000) == bytes([i]) * 2000 for i, r in enumerate(keep))


@pytest.mark.timeout(120)
def test_automatic_collections_call_the_hooks_too(kernel_name, mode):
    compactor, _ = mode
    journal: list = []
    with Heap(kernel=kernel_name, size=4 << 20, compactor=compactor, collect_every=64 << 10) as h:
        rec = Recorder(h, "r", journal)
        h.add_callback(rec)
        h.add_mutator_hooks(rec)
        infos = []
        h.add_callback(lambda phase, info: infos.append((phase, info.automatic, info.stats)))
        for _ in range(200):
            h.alloc(1000)
        assert h.collections >= 2
        stops = [i for i in infos if i[0] == "stop"]
        assert len(stops) == h.collections and all(auto for _, auto, _ in stops)
        assert all(isinstance(st, GCStats) and st.live_objects >= 0 for _, _, st in stops)
        assert [w for w, *_ in journal[:4]] == ["start", "stop_mutators", "resume_mutators", "stop"]


@pytest.mark.timeout(120)
def test_no_heap_access_runs_between_stop_and_resume(heap, mode):
    _, concurrent = mode
    target = heap.alloc(64)
    progress = [0]
    seen = {}
    done = threading.Event()

    def mutator():
        while not done.is_set():
            target.read(8)
            progress[0] += 1

    class Hooks:
        def stop_mutators(self, info):
            seen["at_stop"] = progress[0]
            time.sleep(0.05)  # the other thread would get many reads in, were it not held off

        def resume_mutators(self, info):
            seen["at_resume"] = progress[0]

    heap.add_mutator_hooks(Hooks())
    t = threading.Thread(target=mutator, daemon=True)
    t.start()
    while progress[0] < 10:
        time.sleep(0.001)
    garbage_and_survivors(heap, 5)
    heap.collect(concurrent=concurrent)
    done.set()
    t.join(10)
    assert seen["at_stop"] == seen["at_resume"]


@pytest.mark.timeout(120)
def test_heap_calls_from_inside_a_hook_are_refused_but_finalized_is_allowed(heap, mode):
    _, concurrent = mode
    errors, drained = [], []

    class Hooks:
        def stop_mutators(self, info):
            try:
                heap.alloc(8)
            except HookReentry as exc:
                errors.append(exc)

        def resume_mutators(self, info):
            pass

    def callback(phase, info):
        drained.append(heap.finalized())
        try:
            heap.stats()
        except HookReentry as exc:
            errors.append(exc)

    heap.add_mutator_hooks(Hooks())
    heap.add_callback(callback)
    heap.collect(concurrent=concurrent)
    assert len(errors) == 3 and drained == [[], []]
    heap.alloc(8)  # usable again once the collection is over
    heap.verify()


@pytest.mark.timeout(120)
def test_a_failing_stop_resumes_the_stopped_and_collects_nothing(heap, mode):
    _, concurrent = mode
    journal: list = []
    heap.add_mutator_hooks(Recorder(heap, "ok", journal))

    class Refuses:
        def stop_mutators(self, info):
            raise RuntimeError("a thread did not reach a safe point")

        def resume_mutators(self, info):
            journal.append(("resume_mutators", "refuses"))

    heap.add_mutator_hooks(Refuses())
    keep = garbage_and_survivors(heap, 5)
    before = [r.address for r in keep]
    with pytest.raises(RuntimeError, match="safe point"):
        heap.collect(concurrent=concurrent)
    assert [j[:2] for j in journal] == [("stop_mutators", "ok"), ("resume_mutators", "ok")]
    assert heap.collections == 0 and [r.address for r in keep] == before
    heap.verify()


@pytest.mark.timeout(120)
def test_a_failing_callback_is_logged_and_the_collection_completes(heap, mode, caplog):
    _, concurrent = mode
    caplog.set_level(logging.ERROR, logger="remapgc")

    def broken(phase, info):
        raise ValueError("host bug")

    heap.add_callback(broken)
    heap.collect(concurrent=concurrent)
    assert heap.collections == 1
    failed = [r for r in caplog.records if getattr(r, "event", None) == "callback_failed"]
    assert len(failed) == 2 and all("host bug" in r.getMessage() for r in failed)
    heap.remove_callback(broken)
    heap.collect(concurrent=concurrent)
    assert len([r for r in caplog.records if getattr(r, "event", None) == "callback_failed"]) == 2


@pytest.mark.timeout(120)
def test_disable_stops_automatic_collections_and_nests(kernel_name, mode):
    compactor, concurrent = mode
    with Heap(kernel=kernel_name, size=1 << 20, compactor=compactor, collect_every=32 << 10) as h:
        h.disable()
        h.disable()
        assert not h.enabled
        for _ in range(100):
            h.alloc(1000)  # 100 KB: three times collect_every, no collection
        assert h.collections == 0
        with pytest.raises(HeapFull, match="disabled"):
            for _ in range(2000):
                h.alloc(1000)  # the heap fills up: no collection makes room while disabled
        h.enable()
        assert not h.enabled  # nested: one more enable needed
        h.enable()
        assert h.enabled
        with pytest.raises(ValueError):
            h.enable()
        h.alloc(1000)  # now a collection makes room
        assert h.collections >= 1


@pytest.mark.timeout(120)
def test_collection_disabled_as_a_context_manager_and_explicit_collect_still_runs(kernel_name, mode):
    compactor, concurrent = mode
    with Heap(kernel=kernel_name, size=2 << 20, compactor=compactor, collect_every=16 << 10) as h:
        with h.disabled():
            for _ in range(50):
                h.alloc(1000)
            assert h.collections == 0
            h.collect(concurrent=concurrent)  # asked for explicitly: runs (as gc.collect() does)
            assert h.collections == 1
        assert h.enabled
        for _ in range(50):
            h.alloc(1000)
        assert h.collections > 1


@pytest.mark.timeout(120)
def test_collect_every_can_be_changed(kernel_name, mode):
    compactor, _ = mode
    with Heap(kernel=kernel_name, size=4 << 20, compactor=compactor) as h:
        assert h.collect_every is None
        for _ in range(100):
            h.alloc(1000)
        assert h.collections == 0
        h.collect_every = 20_000
        for _ in range(100):
            h.alloc(1000)
        assert h.collections >= 3
        h.collect_every = None
        n = h.collections
        for _ in range(100):
            h.alloc(1000)
        assert h.collections == n
        for bad, err in ((0, ValueError), (-5, ValueError), ("big", TypeError)):
            with pytest.raises(err):
                h.collect_every = bad


@pytest.mark.timeout(120)
def test_concurrent_collect_returns_concurrent_stats_and_says_when_it_could_not_be_concurrent(heap, mode):
    compactor, _ = mode
    keep = garbage_and_survivors(heap, 5)
    st = heap.collect(concurrent=True)
    assert isinstance(st, ConcurrentGCStats)
    assert st.stop_the_world == (1 if compactor == "copy" else 0)
    assert st.live_objects == len(keep)
    assert all(r.read(2000) == bytes([i]) * 2000 for i, r in enumerate(keep))


@pytest.mark.timeout(120)
def test_concurrent_mutators_are_resumed_before_the_install_and_run_during_it(kernel_name):
    """Step 5: resume_mutators comes at the end of the pause, and the runtime's
    threads then read objects whose pages are not installed yet (served on
    demand); the "stop" callback comes only once every page is in."""
    from heap.concurrent import begin_concurrent, end_concurrent

    with Heap(kernel=kernel_name, size=8 << 20, compactor="remap") as h:
        keep = garbage_and_survivors(h, 20)
        journal: list = []
        rec = Recorder(h, "r", journal)
        h.add_mutator_hooks(rec)
        h.add_callback(rec)
        cycle, stats, _ = begin_concurrent(h, run_compactor=False)  # every page left to the fault handler
        assert [w for w, *_ in journal] == ["start", "stop_mutators", "resume_mutators"]
        reads = []
        t = threading.Thread(target=lambda: reads.extend(r.read(2000) for r in keep))
        t.start()
        t.join(30)
        assert [r == bytes([i]) * 2000 for i, r in enumerate(reads)] == [True] * 20
        assert [w for w, *_ in journal] == ["start", "stop_mutators", "resume_mutators"]  # still installing
        end_concurrent(h, cycle)
        assert [w for w, *_ in journal] == ["start", "stop_mutators", "resume_mutators", "stop"]
        assert rec.stats is stats and stats.faults_served > 0
