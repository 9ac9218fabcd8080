"""The kernel's own argument checks, for the calls ``owned.py`` guards.

``owned.check`` refuses (EPERM) a call whose range overlaps memory remapgc did
not map. But the kernel checks a call's arguments first -- alignment, zero
lengths, lengths that wrap past 2**64 or reach beyond the address space, bad
flags -- and answers from them alone, before it looks at any mapping. For
such arguments the caller must see the kernel's answer, not EPERM.

Each predicate here says, for one call and following the kernel's code
(Linux 6.18), whether the kernel answers from the arguments alone (an error,
or success doing nothing). The backend then makes the call without the
ownership check: the kernel touches no memory, and its errno is what the
caller sees. Every predicate errs on the side of "no" (the ownership check
then applies): ``TASK_SIZE`` is taken at its largest when 5-level paging may
be on.

tests/bad_input/test_bad_argument_order.py compares the answers with the raw kernel's
and the simulator's.
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")
U64_MASK = (1 << 64) - 1

PROT_READ, PROT_WRITE, PROT_EXEC, PROT_SEM = 0x1, 0x2, 0x4, 0x8
PROT_GROWSDOWN, PROT_GROWSUP = 0x01000000, 0x02000000
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
UFFDIO_REGISTER_MODES = 0x1 | 0x2 | 0x4  # MISSING | WP | MINOR
UFFDIO_MOVE_MODES = 0x1 | 0x2  # DONTWAKE | ALLOW_SRC_HOLES


def _task_size() -> int:
    """x86-64 TASK_SIZE_MAX: 47-bit user space, or 56-bit where the CPU has 5-level paging."""
    try:
        with open("/proc/cpuinfo") as fh:
            la57 = any(line.startswith("flags") and " la57" in line for line in fh)
    except OSError:
        la57 = True
    return (1 << (56 if la57 else 47)) - PAGE


TASK_SIZE = _task_size()


def page_align(length: int) -> int:
    """PAGE_ALIGN as the kernel computes it: in 64 bits, so a length near 2**64 wraps to 0."""
    return (length + PAGE - 1) & ~(PAGE - 1) & U64_MASK


def munmap(addr: int, length: int) -> bool:
    """do_vmi_munmap: EINVAL for an unaligned start, a range past TASK_SIZE, or a length
    that is 0 once page-aligned."""
    return bool(addr % PAGE or addr > TASK_SIZE or length > TASK_SIZE - addr or page_align(length) == 0)


def mprotect(addr: int, length: int, prot: int) -> bool:
    """do_mprotect_pkey: EINVAL for both GROWS flags or an unaligned start; success for
    length 0; ENOMEM when start + the aligned length wraps; EINVAL for unknown prot bits."""
    grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
    if grows == PROT_GROWSDOWN | PROT_GROWSUP or addr % PAGE or length == 0:
        return True
    end = (addr + page_align(length)) & U64_MASK
    return end <= addr or bool(prot & ~grows & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM))


def madvise(addr: int, length: int, advice_known: bool) -> bool:
    """is_valid_madvise, then the empty-range shortcut: EINVAL for an advice the kernel
    does not know, an unaligned start, a length that wraps once aligned or a range that
    wraps; success for an empty range. ``advice_known``: asked from the kernel itself
    (``madvise(0, 0, advice)`` checks the advice and nothing else)."""
    if not advice_known or addr % PAGE:
        return True
    aligned = page_align(length)
    return aligned == 0 or addr + aligned > U64_MASK  # 0: an empty range, or a length that wrapped


def mremap(old_addr: int, length: int, new_addr: int, flags: int) -> bool:
    """check_mremap_params, for old_len == new_len with MREMAP_FIXED: EINVAL for unknown
    flags, an unaligned start, an aligned length of 0 or past TASK_SIZE, a target past
    TASK_SIZE or unaligned, FIXED without MAYMOVE, or a target overlapping the source."""
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) or old_addr % PAGE:
        return True
    aligned = page_align(length)
    if aligned == 0 or aligned > TASK_SIZE or new_addr > TASK_SIZE - aligned or new_addr % PAGE:
        return True
    if not flags & MREMAP_MAYMOVE:
        return True
    old_end = (old_addr + aligned) & U64_MASK  # unsigned long arithmetic, as the kernel's overlap test
    return old_end > new_addr and new_addr + aligned > old_addr


def uffd_range(start: int, length: int) -> bool:
    """validate_range (fs/userfaultfd.c): EINVAL for an unaligned start or length, length
    0, a start at TASK_SIZE and above, or a range past TASK_SIZE. (No mmap_min_addr check:
    6.18 answers a MOVE to address 0 with ENOENT, from the VMA lookup.)"""
    return bool(start % PAGE or length % PAGE or length == 0 or start >= TASK_SIZE or length > TASK_SIZE - start)


def uffdio_register(start: int, length: int, mode: int) -> bool:
    """userfaultfd_register: EINVAL for an unknown or empty mode, then validate_range."""
    return bool(mode & ~UFFDIO_REGISTER_MODES or not mode) or uffd_range(start, length)


def uffdio_move(dst: int, src: int, length: int, mode: int) -> bool:
    """userfaultfd_move: validate_range of dst, then of src, then EINVAL for unknown mode
    bits (an EAGAIN for a pending event comes before all of them, also from nothing but
    the context)."""
    return uffd_range(dst, length) or uffd_range(src, length) or bool(mode & ~UFFDIO_MOVE_MODES)
