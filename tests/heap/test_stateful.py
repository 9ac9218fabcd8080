"""Random sequences of heap operations against a Python model (hypothesis
state machine): after every collection the heap holds exactly what the model
says is reachable, with the same references and bytes."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

import numpy as np

from heap import Heap, HeapFull
from heap.alloc import large_pages

SIZES = st.sampled_from([0, 8, 24, 100, 1000, 3000, 4090, 5000, 70_000, (2 << 20) + 8])


def make_machine(kernel_name: str, compactor: str, thp: bool):
    class HeapMachine(RuleBasedStateMachine):
        @initialize()
        def start(self):
            self.heap = Heap(kernel=kernel_name, size=(64 if thp else 32) << 20, compactor=compactor, thp=thp)
            self.next_id = 1
            self.model: dict[int, dict] = {}
            self.roots: dict[int, object] = {}

        def teardown(self):
            if hasattr(self, "heap"):
                self.roots.clear()
                self.heap.close()

        @rule(nbytes=SIZES, nrefs=st.integers(0, 3))
        def alloc(self, nbytes, nrefs):
            oid = self.next_id
            try:
                ref = self.heap.alloc(nbytes + 8, nrefs)
            except HeapFull:
                # only when a collection really left no room: the model keeps what it had
                total = int(self.heap.object_model.total_bytes(nbytes + 8, nrefs))
                need = int(large_pages(np.int64(total), 4096, 512 if thp else 0)) * 4096
                assert self.heap.stats().free_bytes < need + (2 << 20 if thp else 4096)
                return
            self.next_id += 1
            ref.write(oid.to_bytes(8, "little"))
            self.model[oid] = dict(refs=[None] * nrefs, data=bytearray(oid.to_bytes(8, "little") + bytes(nbytes)))
            self.roots[oid] = ref

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def drop_root(self, data):
            oid = data.draw(st.sampled_from(sorted(self.roots)))
            del self.roots[oid]

        @precondition(lambda self: self.roots)
        @rule(data=st.data())
        def set_ref(self, data):
            src = data.draw(st.sampled_from(sorted(self.roots)))
            if not self.model[src]["refs"]:
                return
            slot = data.draw(st.integers(0, len(self.model[src]["refs"]) - 1))
            dst = data.draw(st.sampled_from([None] + sorted(self.roots)))
            self.roots[src].set_ref(slot, None if dst is None else self.roots[dst])
            self.model[src]["refs"][slot] = dst

        @precondition(lambda self: self.roots)
        @rule(data=st.data(), chunk=st.binary(min_size=1, max_size=16))
        def write(self, data, chunk):
            oid = data.draw(st.sampled_from(sorted(self.roots)))
            body = self.model[oid]["data"]
            if len(body) - 8 < len(chunk):
                return
            off = data.draw(st.integers(8, len(body) - len(chunk)))
            self.roots[oid].write(chunk, off)
            body[off:off + len(chunk)] = chunk

        @rule()
        def collect(self):
            live = self.reachable()
            stats = self.heap.collect()
            assert stats.live_objects == len(live)
            for oid in list(self.model):
                if oid not in live:
                    del self.model[oid]
            self.heap.verify()

        def reachable(self) -> set[int]:
            seen, todo = set(), list(self.roots)
            while todo:
                oid = todo.pop()
                if oid not in seen:
                    seen.add(oid)
                    todo.extend(t for t in self.model[oid]["refs"] if t is not None)
            return seen

        @invariant()
        def heap_matches_model(self):
            if not hasattr(self, "heap"):
                return
            seen = set()
            todo = list(self.roots.items())
            while todo:
                oid, ref = todo.pop()
                if oid in seen:
                    continue
                seen.add(oid)
                entry = self.model[oid]
                assert ref.read(len(entry["data"])) == bytes(entry["data"])
                for slot, target in enumerate(entry["refs"]):
                    got = ref.get_ref(slot)
                    assert (got is None) == (target is None)
                    if target is not None:
                        todo.append((target, got))

    return HeapMachine


@pytest.mark.timeout(240)
@pytest.mark.parametrize("compactor,thp", [("remap", False), ("copy", False), ("remap", True)],
                         ids=["remap", "copy", "remap-thp"])
def test_random_operations_match_the_model(kernel_name, compactor, thp):
    machine = make_machine(kernel_name, compactor, thp)
    run_state_machine_as_test(machine, settings=settings(max_examples=50, stateful_step_count=40, deadline=None))
