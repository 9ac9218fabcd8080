"""Ref operations and allocations from several threads while another thread
collects over and over: every value read back is the one written, whatever
moved in between. On the Linux backend these are the compiled accesses of
heap.fastpath (one call: gate, bounds, load or store, no heap lock) racing
the pauses that shut their gate; on the simulator the generic path."""

from __future__ import annotations

import threading

import pytest

from heap import Heap, HeapClosed, HookReentry

THREADS = 4
OBJECTS_PER_THREAD = 8
COLLECTIONS = 30
OP_TIMEOUT_S = 60


def _mutate(heap, mine, partners, tid, stop, errors, rounds):
    """Write, then read back, a payload stamp, an immediate and a reference per object, until ``stop``."""
    try:
        i = 0
        while not stop.is_set():
            mine[i % len(mine)] = heap.alloc(64, 3)  # the old one is garbage below it: collections move the new
            for k, (obj, partner) in enumerate(zip(mine, partners)):
                stamp = (tid << 48 | k << 32 | i).to_bytes(8, "little")
                obj.write(stamp, 8)
                obj.set_immediate(1, -(tid * 1000 + i))
                obj.set_ref(0, partner)
                got = obj.read(8, 8)
                assert got == stamp, (tid, k, i, got, stamp)
                assert obj.get_immediate(1) == -(tid * 1000 + i)
                assert obj.get_ref(0) == partner
                assert obj.get_slot(2) is None
            i += 1
            rounds[tid] = i
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("compactor, concurrent, faults",
                         [("copy", False, "thread"), ("remap", False, "thread"), ("remap", True, "thread"),
                          ("remap", True, "self")],
                         ids=["copy", "remap", "remap-concurrent", "remap-concurrent-self-served"])
def test_ref_operations_racing_collections_read_back_what_they_wrote(kernel_name, compactor, concurrent, faults):
    with Heap(kernel=kernel_name, size=16 << 20, compactor=compactor, faults=faults) as h:
        objs = [[h.alloc(64, 3) for _ in range(OBJECTS_PER_THREAD)] for _ in range(THREADS)]
        partners = [[h.alloc(16) for _ in range(OBJECTS_PER_THREAD)] for _ in range(THREADS)]
        stop, errors, rounds = threading.Event(), [], [0] * THREADS
        threads = [threading.Thread(target=_mutate, args=(h, objs[t], partners[t], t, stop, errors, rounds),
                                    daemon=True) for t in range(THREADS)]
        for t in threads:
            t.start()
        moved = 0
        try:
            for _ in range(COLLECTIONS):
                h.alloc(3 * 4096)  # garbage below the sentinel: it moves down by pages
                sentinel = h.alloc(16)
                before = sentinel.address
                h.collect(concurrent=concurrent)
                moved += sentinel.address != before
                if errors:
                    break
        finally:
            stop.set()
            for t in threads:
                t.join(OP_TIMEOUT_S)
        assert not any(t.is_alive() for t in threads), "a mutator is stuck"
        if errors:
            raise errors[0]
        assert all(r > 0 for r in rounds), rounds
        # collections moved objects while the mutators ran (an automatic one, started by a mutator's
        # alloc between the garbage and the sentinel, may leave nothing below the sentinel to free)
        assert moved >= COLLECTIONS // 2
        h.verify()


@pytest.mark.timeout(240)
def test_allocations_from_several_threads_racing_collections_are_all_recorded(kernel_name):
    with Heap(kernel=kernel_name, size=32 << 20, collect_every=64 << 10) as h:
        kept: list[list] = [[] for _ in range(THREADS)]
        errors: list[BaseException] = []
        collections = []
        h.add_callback(lambda phase, info: collections.append(info.automatic) if phase == "stop" else None)

        def allocate(tid):
            try:
                for i in range(600):
                    r = h.alloc(24, 1)
                    r.write((tid << 32 | i).to_bytes(8, "little"))
                    if i % 3 == 0:
                        kept[tid].append((i, r))
                    h.alloc_raw(40)  # unrooted: freed by the next collection
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=allocate, args=(t,), daemon=True) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(OP_TIMEOUT_S)
        assert not any(t.is_alive() for t in threads)
        if errors:
            raise errors[0]
        assert len(collections) >= 2 and all(collections)  # alloc's own collections, between the threads' allocations
        for tid, refs in enumerate(kept):
            assert len(refs) == 200
            for i, r in refs:
                assert r.read(8) == (tid << 32 | i).to_bytes(8, "little")
        h.verify()


def test_every_ref_operation_refuses_after_close(kernel_name):
    h = Heap(kernel=kernel_name, size=4 << 20)
    a, b = h.alloc(32, 2), h.alloc(16)
    a.set_ref(0, b)
    h.close()
    for op in (lambda: a.read(8), lambda: a.write(b"x"), lambda: a.set_ref(1, b), lambda: a.get_ref(0),
               lambda: a.set_immediate(1, 3), lambda: a.get_immediate(1), lambda: h.alloc(8)):
        with pytest.raises(HeapClosed):
            op()


def test_ref_operations_from_a_stop_callback_are_refused_on_its_thread_only(kernel_name):
    with Heap(kernel=kernel_name, size=4 << 20) as h:
        a = h.alloc(32, 1)
        a.write(b"abcdefgh")
        seen = {}

        def other_thread_reads():
            seen["other"] = a.read(8)

        def callback(phase, info):
            if phase != "stop":
                return
            with pytest.raises(HookReentry):
                a.read(8)
            with pytest.raises(HookReentry):
                a.set_immediate(0, 1)
            t = threading.Thread(target=other_thread_reads)
            t.start()
            t.join(OP_TIMEOUT_S)
            seen["refused"] = True

        h.add_callback(callback)
        h.collect()
        assert seen == {"refused": True, "other": b"abcdefgh"}
        assert a.read(8) == b"abcdefgh"  # the callback is over: the thread may use the heap again


HUGE = 1 << 70  # beyond 64 bits: the compiled call cannot take it, the generic path says what is wrong


@pytest.mark.parametrize("op, error", [
    (lambda a, b: a.read(8, HUGE), ValueError),
    (lambda a, b: a.read(8, -1), ValueError),
    (lambda a, b: a.read(40), ValueError),
    (lambda a, b: a.write(b"x", HUGE), ValueError),
    (lambda a, b: a.write(b"x" * 40), ValueError),
    (lambda a, b: a.get_ref(HUGE), IndexError),
    (lambda a, b: a.get_ref(-1), IndexError),
    (lambda a, b: a.get_ref(2), IndexError),
    (lambda a, b: a.set_ref(HUGE, b), IndexError),
    (lambda a, b: a.set_immediate(HUGE, 1), IndexError),
    (lambda a, b: a.set_immediate(0, HUGE), OverflowError),
    (lambda a, b: a.get_immediate(HUGE), IndexError),
    (lambda a, b: a.get_immediate(0), TypeError),
    (lambda a, b: a.get_ref(1), TypeError),
], ids=["read-huge-offset", "read-negative-offset", "read-past-payload", "write-huge-offset", "write-past-payload",
        "get_ref-huge-slot", "get_ref-negative-slot", "get_ref-past-slots", "set_ref-huge-slot",
        "set_immediate-huge-slot", "set_immediate-huge-value", "get_immediate-huge-slot", "get_immediate-of-a-ref",
        "get_ref-of-an-immediate"])
def test_out_of_range_arguments_raise_the_same_error_on_every_backend(kernel_name, op, error):
    with Heap(kernel=kernel_name, size=4 << 20) as h:
        a, b = h.alloc(32, 2), h.alloc(8)
        a.set_ref(0, b)
        a.set_immediate(1, 5)
        with pytest.raises(error):
            op(a, b)
        assert a.get_ref(0) == b and a.get_immediate(1) == 5 and a.read(32) == bytes(32)  # nothing changed
