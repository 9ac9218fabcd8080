"""``kernel.frame_pointers``: how the C core reaches each backend's memory.

The simulator hands out host pointers into its frames only where a
user-mode access of that kind would not fault, so that writing through them
never bypasses copy-on-write, the zero page or a protection.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from heap.kernel import PROT_READ

PS = 4096


def word(ptr: int) -> int:
    return int.from_bytes(ctypes.string_at(int(ptr), 8), "little")


def pointers(k, addr, n=1):
    return k.frame_pointers(addr, n, False), k.frame_pointers(addr, n, True)


def test_linux_addresses_are_the_hosts_own(linux_kernel):
    k = linux_kernel
    addr = k.mmap(PS)
    try:
        assert k.frame_pointers(addr, 1, True) is None
        k.store_words(np.array([addr], dtype=np.uint64), np.array([77], dtype=np.uint64))
        assert word(addr) == 77  # so compiled code may read the heap's addresses directly
    finally:
        k.munmap(addr, PS)


def test_sim_untouched_page_has_no_pointer(sim_kernel):
    k = sim_kernel
    addr = k.mmap(2 * PS)
    read, write = pointers(k, addr, 2)
    assert read.tolist() == [0, 0] and write.tolist() == [0, 0]


def test_sim_zero_page_reads_zero_but_is_not_writable(sim_kernel):
    k = sim_kernel
    addr = k.mmap(PS)
    k.load(addr, 8)  # a read fault maps the zero page
    read, write = pointers(k, addr)
    assert read[0] != 0 and word(read[0]) == 0
    assert write[0] == 0


def test_sim_written_page_reads_and_writes_through_its_pointer(sim_kernel):
    k = sim_kernel
    addr = k.mmap(PS)
    k.store_words(np.array([addr + 8], dtype=np.uint64), np.array([0xABCD], dtype=np.uint64))
    read, write = pointers(k, addr)
    assert read[0] == write[0] != 0
    assert word(read[0] + 8) == 0xABCD
    ctypes.c_uint64.from_address(int(write[0]) + 16).value = 0x1234
    assert int(k.load_words(np.array([addr + 16], dtype=np.uint64))[0]) == 0x1234


def test_sim_shared_after_fork_is_readable_not_writable_until_a_write_fault(sim_kernel):
    k = sim_kernel
    addr = k.mmap(PS)
    k.store_words(np.array([addr], dtype=np.uint64), np.array([5], dtype=np.uint64))
    child = k.fork()
    try:
        read, write = pointers(k, addr)
        assert read[0] != 0 and word(read[0]) == 5
        assert write[0] == 0  # copy-on-write: the child's page must not be written through it
        k.store(addr, k.load(addr, 8))  # the write fault breaks COW
        read2, write2 = pointers(k, addr)
        assert write2[0] != 0 and write2[0] != read[0]
        ctypes.c_uint64.from_address(int(write2[0])).value = 6
        assert word(read[0]) == 5  # the child's frame still holds what it held
    finally:
        child.exit()


def test_sim_read_only_mapping_has_no_write_pointer(sim_kernel):
    k = sim_kernel
    addr = k.mmap(PS)
    k.store(addr, b"x")
    k.mprotect(addr, PS, PROT_READ)
    read, write = pointers(k, addr)
    assert read[0] != 0 and write[0] == 0


def test_sim_zero_pages_asked_for_gives_an_empty_table(sim_kernel):
    assert sim_kernel.frame_pointers(sim_kernel.mmap(PS), 0, True).size == 0
