"""Hostile API input: every bad call raises a clear exception and the heap stays whole.

A hypothesis state machine mixes valid operations (kept in a Python model)
with invalid ones -- bad sizes and indices, writes past the end, Refs of
another heap or of a closed one, copies of Refs that outlive the original --
on both backends, and checks ``Heap.verify()`` and the model after every step.
Plus named regressions for the cases that once broke the heap, and a close
racing with mutator threads.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from heap import Heap, HeapClosed

HEAP_BYTES = 1 << 20
BAD_INPUT = (TypeError, ValueError, IndexError)


# -- regressions: each of these once corrupted the heap or answered wrongly ---------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("sizes", [[(1 << 63) - 1], [1 << 62, 1 << 62], [2 ** 40] * 9000],
                         ids=["one-size-near-2**63", "sizes-summing-past-2**63", "many-sizes-past-the-heap"])
def test_alloc_many_with_overflowing_sizes_is_refused_and_the_heap_survives(kernel_name, sizes):
    with Heap(kernel=kernel_name, size=HEAP_BYTES) as h:
        keep = h.alloc(32)
        keep.write(b"k" * 32)
        with pytest.raises(ValueError):
            h.alloc_many(sizes, 0)
        h.verify()
        assert keep.read(32) == b"k" * 32
        h.collect()
        h.verify()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("nbytes", [1 << 63, 1 << 70], ids=["2**63", "2**70"])
def test_alloc_of_an_enormous_size_is_a_value_error(kernel_name, nbytes):
    with Heap(kernel=kernel_name, size=HEAP_BYTES) as h:
        with pytest.raises(ValueError, match="cannot fit"):
            h.alloc(nbytes)
        h.verify()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_a_copied_ref_is_its_own_root(kernel_name, copier):
    """Dropping a copy must not leave the original pointing at a freed handle
    (which a later allocation would reuse: the original would read another object)."""
    with Heap(kernel=kernel_name, size=HEAP_BYTES) as h:
        x = h.alloc(16)
        x.write(b"A" * 16)
        y = copier(x)
        assert y.same_object(x) and y is not x
        del y
        z = h.alloc(16)
        z.write(b"Z" * 16)
        h.collect()
        assert x.read(16) == b"A" * 16
        assert z.read(16) == b"Z" * 16
        h.verify()


# -- the state machine ---------------------------------------------------------------------------
class Hostile(RuleBasedStateMachine):
    """Valid calls keep a model; invalid ones must raise and change nothing."""

    backend = "sim"

    def __init__(self):
        super().__init__()
        self.heap = Heap(kernel=self.backend, size=HEAP_BYTES)
        self.other = Heap(kernel=self.backend, size=1 << 20)
        self.foreign = self.other.alloc(8, 1)
        self.foreign_array = self.other.alloc_many([8], 1)
        self.arrays: list = []  # (RefArray, target index or None per element)
        self.closed_heap = Heap(kernel=self.backend, size=1 << 20)
        self.dead = self.closed_heap.alloc(8, 1)
        self.closed_heap.close()
        self.refs: list = []  # Refs into self.heap
        self.bodies: list[bytearray] = []
        self.slots: list[list] = []  # index of the target in self.refs (or None) per slot

    def teardown(self):
        self.refs.clear()
        self.arrays.clear()
        self.foreign_array = None
        self.heap.close()
        self.other.close()

    def expect_bad(self, error, call):
        try:
            call()
        except error:
            return
        except BaseException as exc:
            raise AssertionError(f"expected {error}, got {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"expected {error}, the call succeeded")

    # valid operations
    @rule(nbytes=st.integers(0, 3000), nrefs=st.integers(0, 3))
    def alloc(self, nbytes, nrefs):
        if len(self.refs) >= 40:
            return
        self.refs.append(self.heap.alloc(nbytes, nrefs))
        self.bodies.append(bytearray(nbytes))
        self.slots.append([None] * nrefs)

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100), data=st.binary(min_size=1, max_size=64), off=st.integers(0, 3000))
    def write(self, i, data, off):
        i %= len(self.refs)
        if off + len(data) > len(self.bodies[i]):
            self.expect_bad(ValueError, lambda: self.refs[i].write(data, off))
            return
        self.refs[i].write(data, off)
        self.bodies[i][off:off + len(data)] = data

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100), j=st.integers(-1, 100), slot=st.integers(-2, 4))
    def set_ref(self, i, j, slot):
        i %= len(self.refs)
        target = None if j < 0 else j % len(self.refs)
        if not 0 <= slot < len(self.slots[i]):
            self.expect_bad(IndexError, lambda: self.refs[i].set_ref(slot, None if target is None
                                                                     else self.refs[target]))
            return
        self.refs[i].set_ref(slot, None if target is None else self.refs[target])
        self.slots[i][slot] = target

    @rule(concurrent=st.booleans())
    def collect(self, concurrent):
        self.heap.collect(concurrent=concurrent)

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100))
    def copy_then_drop(self, i):
        i %= len(self.refs)
        dup = copy.copy(self.refs[i])
        assert dup.same_object(self.refs[i])
        del dup

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100))
    def drop(self, i):
        i %= len(self.refs)
        # the object may live on through slots; the model forgets it only when nothing points to it
        if any(i in s for k, s in enumerate(self.slots) if k != i):
            return
        del self.refs[i], self.bodies[i], self.slots[i]
        for s in self.slots:
            for k, t in enumerate(s):
                if t == i:
                    s[k] = None
                elif t is not None and t > i:
                    s[k] = t - 1

    @rule(n=st.integers(1, 8))
    def alloc_many(self, n):
        if len(self.arrays) >= 4:
            return
        self.arrays.append((self.heap.alloc_many([16] * n, 1), [None] * n))

    @precondition(lambda self: self.arrays)
    @rule(a=st.integers(0, 10), src=st.lists(st.integers(-12, 12), min_size=1, max_size=4),
          dst=st.lists(st.integers(-3, 12), min_size=1, max_size=4), slot=st.integers(-1, 2))
    def set_refs(self, a, src, dst, slot):
        arr, slots = self.arrays[a % len(self.arrays)]
        n = len(slots)
        if len(src) != len(dst):
            self.expect_bad(ValueError, lambda: arr.set_refs(slot, src, arr, dst))
        elif min(src) < 0 or max(src) >= n or max(dst) >= n or min(dst) < -1 or slot != 0:
            self.expect_bad(IndexError, lambda: arr.set_refs(slot, src, arr, dst))
        else:
            arr.set_refs(slot, src, arr, dst)
            for i, j in zip(src, dst):
                slots[i] = None if j == -1 else j

    @precondition(lambda self: self.arrays)
    @rule(a=st.integers(0, 10), i=st.integers(-20, 20))
    def array_index(self, a, i):
        arr, slots = self.arrays[a % len(self.arrays)]
        if -len(slots) <= i < len(slots):
            assert arr[i].nbytes == 16
        else:
            self.expect_bad(IndexError, lambda: arr[i])

    @precondition(lambda self: self.arrays)
    @rule(a=st.integers(0, 10))
    def foreign_array(self, a):
        arr, _ = self.arrays[a % len(self.arrays)]
        self.expect_bad(ValueError, lambda: arr.set_refs(0, [0], self.foreign_array, [0]))

    # invalid operations
    @rule(nbytes=st.one_of(st.integers(max_value=-1), st.integers(min_value=HEAP_BYTES + 1, max_value=1 << 80)),
          nrefs=st.integers(0, 2))
    def alloc_bad_size(self, nbytes, nrefs):
        self.expect_bad(ValueError, lambda: self.heap.alloc(nbytes, nrefs))

    @rule(nrefs=st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 32, max_value=1 << 70)))
    def alloc_bad_nrefs(self, nrefs):
        self.expect_bad(ValueError, lambda: self.heap.alloc(8, nrefs))

    @rule(value=st.sampled_from([1.5, "8", None, b"8", [8]]))
    def alloc_not_an_int(self, value):
        self.expect_bad(TypeError, lambda: self.heap.alloc(value))

    @rule(sizes=st.lists(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), min_size=1, max_size=5)
          .filter(lambda s: min(s) < 0 or sum(s) > HEAP_BYTES))
    def alloc_many_bad(self, sizes):
        self.expect_bad(ValueError, lambda: self.heap.alloc_many(sizes, 0))

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100), length=st.integers(-5, 5000), off=st.integers(-5, 5000))
    def read_out_of_range(self, i, length, off):
        i %= len(self.refs)
        n = len(self.bodies[i])
        if 0 <= off and 0 <= length and off + length <= n:
            assert self.refs[i].read(length, off) == bytes(self.bodies[i][off:off + length])
        else:
            self.expect_bad(ValueError, lambda: self.refs[i].read(length, off))

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100), slot=st.integers(0, 3))
    def foreign_target(self, i, slot):
        i %= len(self.refs)
        if slot < len(self.slots[i]):
            self.expect_bad(ValueError, lambda: self.refs[i].set_ref(slot, self.foreign))

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100))
    def closed_heap_ref(self, i):
        i %= len(self.refs)
        self.expect_bad(HeapClosed, lambda: self.dead.read(1))
        self.expect_bad(HeapClosed, lambda: self.dead.set_ref(0, None))
        if self.slots[i]:
            self.expect_bad(ValueError, lambda: self.refs[i].set_ref(0, self.dead))
        self.expect_bad(HeapClosed, lambda: self.closed_heap.alloc(8))

    @precondition(lambda self: self.refs)
    @rule(i=st.integers(0, 100), value=st.sampled_from([1234, "ref", 0.5, object()]))
    def target_not_a_ref(self, i, value):
        i %= len(self.refs)
        if self.slots[i]:
            self.expect_bad(TypeError, lambda: self.refs[i].set_ref(0, value))

    @invariant()
    def heap_is_whole_and_matches_the_model(self):
        self.heap.verify()
        for ref, body, slots in zip(self.refs, self.bodies, self.slots):
            assert ref.read(len(body)) == bytes(body)
            for s, t in enumerate(slots):
                got = ref.get_ref(s)
                assert (got is None) if t is None else got.same_object(self.refs[t])
        for arr, slots in self.arrays:
            assert len(arr) == len(slots)
            for i, t in enumerate(slots):
                got = arr[i].get_ref(0)
                assert (got is None) if t is None else got.address == arr.addresses[t]


@pytest.mark.timeout(180)
def test_hostile_sequences_raise_clearly_and_leave_the_heap_whole(kernel_name):
    machine = type(f"Hostile_{kernel_name}", (Hostile,), {"backend": kernel_name})
    run_state_machine_as_test(machine, settings=settings(max_examples=50, stateful_step_count=40, deadline=None,
                                                         suppress_health_check=list(HealthCheck)))


# -- close racing with mutators ------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrent", [False, True], ids=["stw", "concurrent-cycle"])
def test_close_while_threads_use_the_heap_raises_heap_closed_in_them(kernel_name, concurrent):
    h = Heap(kernel=kernel_name, size=8 << 20)
    refs = [h.alloc(200, 1) for _ in range(200)]
    for i, r in enumerate(refs):
        r.write(bytes([i % 256]) * 200)
        r.set_ref(0, refs[i - 1])
    seen: dict[str, int] = {}
    bad: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Event()

    def mutator(k: int):
        rnd = np.random.default_rng(k)
        go.wait()
        for step in range(100_000):
            r = refs[int(rnd.integers(len(refs)))]
            try:
                if step % 50 == 0:
                    h.collect(concurrent=concurrent)
                elif step % 3 == 0:
                    r.write(b"x", 0)
                elif step % 3 == 1:
                    r.get_ref(0)
                else:
                    h.alloc(64, 1)
            except HeapClosed:
                with lock:
                    seen["closed"] = seen.get("closed", 0) + 1
                return
            except BaseException as exc:
                with lock:
                    bad.append(exc)
                return

    threads = [threading.Thread(target=mutator, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    go.set()
    threading.Event().wait(0.3)
    h.close()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a mutator is stuck after close"
    assert not bad, [f"{type(e).__name__}: {e}" for e in bad]
    assert seen.get("closed") == 4  # every thread was told, cleanly
    with pytest.raises(HeapClosed):
        refs[0].read(1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("handle", [0, 1, 10 ** 9, -1], ids=["held-by-a-live-ref", "free", "out-of-range", "negative"])
def test_a_ref_made_by_hand_is_refused_and_no_root_is_lost(kernel_name, handle):
    """A handle number names a root: a hand-made Ref(heap, n) would drop
    another Ref's root when it dies, or break the handle table's reaper."""
    from heap import Ref

    with Heap(kernel=kernel_name, size=HEAP_BYTES) as h:
        keep = h.alloc(64)
        keep.write(b"r" * 64)
        with pytest.raises(TypeError, match="made by its heap"):
            Ref(h, handle)
        h.alloc(64)
        h.collect()  # keep's root is still there: the object survives and moves with it
        h.verify()
        assert keep.read(64) == b"r" * 64
