"""Weak references, finalization and the identity hash (heap.weak), on both
backends, with both compactors, stop-the-world and concurrent.

A random sequence of allocations, reference stores, root drops, weak
references, finalizer registrations, identity-hash requests and collections
runs against a Python model of the object graph: after every collection a
weak reference is alive exactly when the model says its object is
reachable, and then leads to that object (its bytes); each finalizer token
is reported by the collection that freed its object, once; an identity hash
never changes while its object lives.
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from heap import Heap, Ref
from heap import weak
from tests.embedding.modes import MODES, MODE_IDS


def oid_of(ref: Ref) -> int:
    return int.from_bytes(ref.read(8), "little")


def make_machine(kernel_name: str, compactor: str, concurrent: bool):
    class WeakMachine(RuleBasedStateMachine):
        @initialize()
        def start(self):
            self.heap = Heap(kernel=kernel_name, size=16 << 20, compactor=compactor)
            assert self.heap.compactor == compactor
            self.next_id = 1
            self.edges: dict[int, list[int | None]] = {}  # object id -> the ids its slots hold
            self.roots: dict[int, Ref] = {}
            self.weaks: list[tuple[int, weak.WeakRef]] = []  # (target id, weak reference)
            self.final: dict[str, int] = {}  # token -> target id, not yet reported
            self.reported: set[str] = set()
            self.hashes: dict[int, int] = {}  # object id -> its identity hash
            self.dead: set[int] = set()

        def teardown(self):
            if hasattr(self, "heap"):
                self.roots.clear()
                self.weaks.clear()
                self.heap.close()

        def reachable(self) -> set[int]:
            seen, todo = set(), list(self.roots)
            while todo:
                o = todo.pop()
                if o in seen:
                    continue
                seen.add(o)
                todo.extend(t for t in self.edges[o] if t is not None)
            return seen

        @rule(nbytes=st.sampled_from([8, 100, 3000, 5000]), nrefs=st.integers(0, 2))
        def alloc(self, nbytes, nrefs):
            oid = self.next_id
            self.next_id += 1
            ref = self.heap.alloc(nbytes, nrefs)
            ref.write(oid.to_bytes(8, "little"))
            self.edges[oid] = [None] * nrefs
            self.roots[oid] = ref

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def drop_root(self, data):
            del self.roots[data.draw(st.sampled_from(sorted(self.roots)))]

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def set_ref(self, data):
            src = data.draw(st.sampled_from(sorted(self.roots)))
            if not self.edges[src]:
                return
            slot = data.draw(st.integers(0, len(self.edges[src]) - 1))
            dst = data.draw(st.sampled_from([None] + sorted(self.roots)))
            self.roots[src].set_ref(slot, None if dst is None else self.roots[dst])
            self.edges[src][slot] = dst

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def make_weak(self, data):
            oid = data.draw(st.sampled_from(sorted(self.roots)))
            self.weaks.append((oid, self.heap.weakref(self.roots[oid])))

        @precondition(lambda self: self.weaks)
        @rule(data=st.data())
        def forget_weak(self, data):
            self.weaks.pop(data.draw(st.integers(0, len(self.weaks) - 1)))

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def register_finalizer(self, data):
            oid = data.draw(st.sampled_from(sorted(self.roots)))
            token = f"token-{len(self.final) + len(self.reported)}"
            self.heap.finalize(self.roots[oid], token)
            self.final[token] = oid

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def ask_hash(self, data):
            oid = data.draw(st.sampled_from(sorted(self.roots)))
            h = self.heap.identity_hash(self.roots[oid])
            assert self.hashes.setdefault(oid, h) == h

        @precondition(lambda self: self.weaks)
        @rule(data=st.data())
        def resurrect_through_weak(self, data):
            # before the collection that would free it, a weak reference still leads to its object,
            # and the Ref it gives is a root like any other
            oid, w = self.weaks[data.draw(st.integers(0, len(self.weaks) - 1))]
            if oid in self.dead:
                assert w.get() is None
                return
            ref = w.get()
            assert ref is not None and oid_of(ref) == oid
            self.roots.setdefault(oid, ref)

        @rule()
        def collect(self):
            live = self.reachable()
            newly_dead = set(self.edges) - live - self.dead
            st_ = self.heap.collect(concurrent=concurrent)
            assert st_.live_objects == len(live)
            self.dead |= newly_dead
            for oid in newly_dead:
                del self.edges[oid]
                self.hashes.pop(oid, None)
            expect = sorted(t for t, oid in self.final.items() if oid in newly_dead)
            got = self.heap.finalized()
            assert sorted(got) == expect, "finalization reports exactly the registrations whose object died now"
            assert not self.reported & set(got), "a token is reported once"
            for t in got:
                self.reported.add(t)
                del self.final[t]

        @invariant()
        def weak_references_follow_the_model(self):
            if not hasattr(self, "heap"):
                return
            for oid, w in self.weaks:
                if oid in self.dead:
                    assert not w.alive and w.get() is None
                else:
                    ref = w.get()
                    assert ref is not None and oid_of(ref) == oid
            for oid, h in self.hashes.items():
                assert self.heap.identity_hash(self.roots[oid]) == h if oid in self.roots else True

        @invariant()
        def heap_is_sound(self):
            if hasattr(self, "heap") and self.next_id % 5 == 0:
                self.heap.verify()

    return WeakMachine


@pytest.mark.timeout(600)
@pytest.mark.parametrize("compactor, concurrent", MODES, ids=MODE_IDS)
def test_weak_refs_finalizers_and_hashes_follow_a_model(kernel_name, compactor, concurrent):
    machine = make_machine(kernel_name, compactor, concurrent)
    run_state_machine_as_test(machine, settings=settings(max_examples=12, stateful_step_count=40, deadline=None,
                                                        suppress_health_check=list(HealthCheck)))


@pytest.fixture(params=MODES, ids=MODE_IDS)
def heap(request, kernel_name):
    compactor, concurrent = request.param
    h = Heap(kernel=kernel_name, size=16 << 20, compactor=compactor)
    h.concurrent = concurrent  # how these tests collect
    yield h
    h.close()


def collect(h: Heap):
    return h.collect(concurrent=h.concurrent)


@pytest.mark.timeout(120)
def test_a_weak_reference_follows_its_object_as_it_moves(heap):
    garbage = [heap.alloc(3000) for _ in range(30)]
    target = heap.alloc(3000)
    target.write(b"still me" * 375)
    w = heap.weakref(target)
    before = target.address
    del garbage
    collect(heap)
    assert target.address != before  # it moved down over the garbage
    got = w.get()
    assert got.address == target.address and got.read(3000) == b"still me" * 375
    assert got == target


@pytest.mark.timeout(120)
def test_a_weak_reference_is_cleared_by_the_collection_that_frees_its_object(heap):
    target = heap.alloc(64)
    w = heap.weakref(target)
    del target
    gc.collect()
    assert w.alive  # unreachable, but no collection ran yet
    collect(heap)
    assert not w.alive and w.get() is None and w() is None
    collect(heap)
    assert w.get() is None


@pytest.mark.timeout(120)
def test_an_object_reachable_only_through_the_heap_keeps_its_weak_reference(heap):
    holder = heap.alloc(8, 1)
    inner = heap.alloc(5000)
    inner.write(b"x" * 5000)
    holder.set_ref(0, inner)
    w = heap.weakref(inner)
    del inner
    for _ in range(3):
        collect(heap)
    assert w.get() == holder.get_ref(0)
    holder.set_ref(0, None)
    collect(heap)
    assert w.get() is None


@pytest.mark.timeout(120)
def test_finalization_reports_each_registration_once(heap):
    port = heap.alloc(100)
    other = heap.alloc(100)
    heap.finalize(port, "port 3")
    heap.finalize(port, "port 3, second registration")
    heap.finalize(other, "other")
    collect(heap)
    assert heap.finalized() == []  # both alive
    del port
    collect(heap)
    assert sorted(heap.finalized()) == ["port 3", "port 3, second registration"]
    collect(heap)
    assert heap.finalized() == []  # never again
    assert weak.state_of(heap).pending_finalizers == 1


def test_a_token_that_is_a_ref_of_the_heap_is_refused(heap):
    a = heap.alloc(8)
    with pytest.raises(ValueError, match="keep objects alive"):
        heap.finalize(a, a)


@pytest.mark.timeout(120)
def test_the_identity_hash_survives_moves_and_distinguishes_objects(heap):
    objs = []
    for i in range(50):
        heap.alloc(2000)  # garbage in between: every kept object moves
        objs.append(heap.alloc(16))
    hashes = [heap.identity_hash(o) for o in objs]
    addresses = [o.address for o in objs]
    collect(heap)
    assert [o.address for o in objs] != addresses
    assert [heap.identity_hash(o) for o in objs] == hashes
    assert len(set(hashes)) == len(hashes)
    copy = heap.alloc(16)  # a new object at a freed address gets its own hash
    assert heap.identity_hash(copy) not in hashes


@pytest.mark.timeout(120)
def test_dead_weak_references_give_their_cells_back(heap):
    a = heap.alloc(8)
    heap.weakref(a)  # the heap's weak tables exist from the first one
    cells = weak.state_of(heap).weak
    for _ in range(5):
        ws = [heap.weakref(a) for _ in range(100)]
        del ws
        gc.collect()
        collect(heap)
    assert cells.high <= 200  # reused, not grown per round
    assert cells.in_use == 0


@pytest.mark.timeout(300)
def test_weak_references_and_hashes_from_other_threads_while_collections_run(kernel_name):
    """docs/embedding.md section 10: weakref/get, finalize and identity_hash from
    any thread, also while another thread collects concurrently."""
    import threading

    with Heap(kernel=kernel_name, size=16 << 20, compactor="remap") as h:
        kept = [h.alloc(64) for _ in range(50)]
        for i, r in enumerate(kept):
            r.write(i.to_bytes(8, "little"))
        hashes = [h.identity_hash(r) for r in kept]
        stop = threading.Event()
        errors: list[BaseException] = []
        registered = []

        def mutator(seed: int):
            try:
                n = 0
                while not stop.is_set():
                    tmp = h.alloc(200)
                    w = h.weakref(tmp)
                    h.finalize(tmp, (seed, n))
                    registered.append((seed, n))
                    n += 1
                    del tmp
                    i = n % len(kept)
                    assert h.weakref(kept[i]).get().read(8) == i.to_bytes(8, "little")
                    assert h.identity_hash(kept[i]) == hashes[i]
                    w.get()  # alive or not, never an error
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)

        threads = [threading.Thread(target=mutator, args=(s,), daemon=True) for s in range(2)]
        for t in threads:
            t.start()
        for k in range(10):
            h.collect(concurrent=bool(k % 2))
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        gc.collect()
        h.collect()
        reported = h.finalized()
        assert len(reported) == len(set(reported)) == len(registered)  # every temporary, once
        assert sorted(reported) == sorted(registered)
        h.verify()
