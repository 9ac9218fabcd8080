"""userfaultfd is opened with UFFD_USER_MODE_ONLY: what that costs and why the heap does not care.

With the flag, only faults from user-mode accesses are reported to the
handler; a fault the kernel itself takes on a missing page of the registered
arena (copy_from_user in write(2), say) fails at once with EFAULT instead of
blocking. The heap never hands a syscall a pointer into its arena: every
byte leaves or enters through Ref.read/Ref.write, user-mode copies whose
faults the handler serves. These tests show both halves during a concurrent
cycle whose pages are all still missing (no compactor thread).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

import pytest

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent

libc = ctypes.CDLL(None, use_errno=True)


def objects(h, n=64):
    refs = [h.alloc(3000, 0) for _ in range(n)]
    for i, r in enumerate(refs):
        r.write(bytes([i]) * 3000)
        h.alloc(500)  # garbage: the cycle has pages to rebuild as well as to move
    return refs


@pytest.fixture
def cycle_heap(linux_kernel):
    h = Heap(kernel=linux_kernel, size=16 << 20, compactor="remap")
    refs = objects(h)
    cycle, _, _ = begin_concurrent(h, run_compactor=False)  # every to-space page missing until touched
    yield h, cycle, refs
    end_concurrent(h, cycle)
    h.verify()
    h.close()


@pytest.mark.timeout(60)
def test_the_heap_asks_for_user_mode_faults_only(cycle_heap):
    h, cycle, refs = cycle_heap
    assert h._uffd.user_mode_only is True


@pytest.mark.timeout(60)
def test_a_syscall_reading_a_missing_heap_page_gets_efault_instead_of_blocking(cycle_heap):
    """The hazard the flag removes (a kernel thread parked on a fault the
    attacker controls) and the price: the kernel's access just fails."""
    h, cycle, refs = cycle_heap
    ref = refs[10]
    where = ref.address + h.object_model.payload_offset(0)
    r, w = os.pipe()
    result = {}

    def raw_write():
        n = libc.write(w, ctypes.c_void_p(where), 3000)
        result["n"], result["errno"] = n, ctypes.get_errno()

    t = threading.Thread(target=raw_write, daemon=True)
    t.start()
    t.join(10)
    try:
        assert not t.is_alive(), "write(2) blocked on the missing page: the fault went to the handler"
        assert result == {"n": -1, "errno": errno.EFAULT}
    finally:
        os.close(r)
        os.close(w)
    assert ref.read(3000) == bytes([10]) * 3000  # the page comes in through a user-mode access


@pytest.mark.timeout(60)
def test_bytes_through_the_api_reach_syscalls_during_the_cycle(cycle_heap):
    h, cycle, refs = cycle_heap
    r, w = os.pipe()
    try:
        for i in (3, 20, 41):
            assert os.write(w, refs[i].read(3000)) == 3000  # out: a user-mode copy first, served by the handler
            assert os.read(r, 3000) == bytes([i]) * 3000
        os.write(w, b"from a pipe" * 10)
        refs[50].write(os.read(r, 110), offset=100)  # in: into a page not installed yet
        assert refs[50].read(110, offset=100) == b"from a pipe" * 10
    finally:
        os.close(r)
        os.close(w)
    assert cycle.handler.faults_served + cycle.handler.served_natively() > 0
