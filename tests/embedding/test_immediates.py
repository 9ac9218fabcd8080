"""Tagged immediates (docs/embedding.md section 5): a slot word with its low
bit set is not a reference. Marking never follows it (even when the word
minus its tag is a live object's address), compaction leaves it as it was,
verify() accepts it; Ref.set_immediate/get_immediate/get_slot/set_slot.
Both backends, both compactors, stop-the-world and concurrent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heap import Heap, Ref
from tests.embedding.modes import MODES, MODE_IDS

LIMIT = 1 << 62


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value", [0, 1, -1, 42, -(1 << 40), LIMIT - 1, -LIMIT],
                         ids=["zero", "one", "minus-one", "small", "negative", "largest", "smallest"])
def test_an_immediate_reads_back_after_collections(heap, mode, value):
    _, concurrent = mode
    for _ in range(5):
        heap.alloc(3000)
    obj = heap.alloc(8, 3)
    obj.set_immediate(1, value)
    where = obj.address
    for _ in range(3):
        heap.collect(concurrent=concurrent)
    assert obj.address != where  # it moved
    assert obj.get_immediate(1) == value
    assert obj.get_slot(1) == value and obj.get_slot(0) is None
    heap.verify()


@pytest.mark.timeout(120)
def test_an_immediate_that_looks_like_an_address_does_not_keep_that_object_alive(heap, mode):
    _, concurrent = mode
    holder = heap.alloc(8, 1)
    target = heap.alloc(64)
    w = heap.weakref(target)
    # the target's address with the tag bit set: a pointer-looking immediate
    holder.set_slot(0, target.address >> 1)
    word = holder.get_immediate(0) * 2 + 1
    assert word == target.address | 1
    del target
    heap.collect(concurrent=concurrent)
    assert not w.alive  # not traced
    assert holder.get_immediate(0) * 2 + 1 == word  # and not forwarded either
    heap.verify()


@pytest.mark.timeout(120)
def test_get_ref_of_an_immediate_is_a_type_error_and_get_immediate_of_a_reference_too(heap):
    obj = heap.alloc(8, 2)
    other = heap.alloc(8)
    obj.set_immediate(0, 7)
    obj.set_ref(1, other)
    with pytest.raises(TypeError, match="immediate"):
        obj.get_ref(0)
    with pytest.raises(TypeError, match="reference"):
        obj.get_immediate(1)
    assert obj.get_slot(1) == other
    with pytest.raises(OverflowError):
        obj.set_immediate(0, LIMIT)
    with pytest.raises(TypeError):
        obj.set_immediate(0, 1.5)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("compactor, concurrent", MODES, ids=MODE_IDS)
def test_mixed_slots_survive_compaction_as_a_model_says(kernel_name, compactor, concurrent):
    @settings(max_examples=15, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.integers(-LIMIT, LIMIT - 1), st.integers(0, 9).map(lambda i: ("ref", i))),
                    min_size=1, max_size=12), st.integers(0, 9))
    def check(slots, garbage):
        with Heap(kernel=kernel_name, size=4 << 20, compactor=compactor) as h:
            targets = []
            for i in range(10):
                for _ in range(garbage):
                    h.alloc(700)
                t = h.alloc(16)
                t.write(i.to_bytes(8, "little"))
                targets.append(t)
            holder = h.alloc(8, len(slots))
            for k, s in enumerate(slots):
                holder.set_slot(k, targets[s[1]] if isinstance(s, tuple) else s)
            kept = {s[1] for s in slots if isinstance(s, tuple)}
            targets = [t if i in kept else None for i, t in enumerate(targets)]  # the rest is garbage
            del t
            h.collect(concurrent=concurrent)
            h.verify()
            for k, s in enumerate(slots):
                got = holder.get_slot(k)
                if isinstance(s, tuple):
                    assert isinstance(got, Ref) and got.read(8) == s[1].to_bytes(8, "little")
                else:
                    assert got == s
            del got
            assert h.collect().live_objects == 1 + len(kept)

    check()
