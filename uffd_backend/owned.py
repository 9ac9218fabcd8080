"""Which parts of this process's address space remapgc mapped itself.

LinuxKernel works on the interpreter's own address space, so a wrong address
handed to munmap, mremap, mprotect, madvise, UFFDIO_REGISTER or a MOVE's
source could unmap, protect, steal or freeze memory that Python, numpy or libc
live in: the process would crash or hang far from the bug. These calls are
therefore refused with EPERM when their range overlaps a mapping that no
LinuxKernel created. Ranges that are merely unmapped are passed to the kernel
so that its own errno (ENOMEM, ENOENT, EINVAL...) is what the caller sees.

The registry is process-wide: every LinuxKernel shares the one address space.
The fast path (the range lies inside one owned interval) is a bisect under a
lock; only a range that is not fully owned reads /proc/self/maps.

A call that changes the address space and this registry does both under
``changing``: the kernel hands a freed range to the next mmap at once, so a
range unmapped by one thread and forgotten a moment later could take with it
the mapping another thread made there in between, and that thread's heap was
then refused with EPERM (two heaps collecting in two threads).
"""

from __future__ import annotations

import bisect
import errno
import os
import threading

PAGE = os.sysconf("SC_PAGE_SIZE")

_lock = threading.Lock()
changing = threading.RLock()  # held across a syscall that maps/unmaps and the registry update that follows it
_starts: list[int] = []  # sorted, disjoint, non-adjacent [start, end) intervals
_ends: list[int] = []


def _round_up(length: int) -> int:
    return (length + PAGE - 1) & ~(PAGE - 1)


def add(start: int, length: int) -> None:
    """Record ``[start, start+length)`` as mapped by remapgc."""
    end = start + _round_up(length)
    if end <= start:
        return
    with _lock:
        i = bisect.bisect_left(_ends, start)  # first interval that ends at or after start
        j = bisect.bisect_right(_starts, end)  # intervals [i, j) touch or overlap
        if i < j:
            start = min(start, _starts[i])
            end = max(end, _ends[j - 1])
        _starts[i:j] = [start]
        _ends[i:j] = [end]


def remove(start: int, length: int) -> None:
    """Forget ``[start, start+length)`` (it was unmapped or moved away)."""
    end = start + _round_up(length)
    if end <= start:
        return
    global _hint
    with _lock:
        _hint = (0, 0)
        i = bisect.bisect_right(_ends, start)  # first interval ending after start
        j = bisect.bisect_left(_starts, end)  # intervals [i, j) overlap
        if i >= j:
            return
        keep_s, keep_e = [], []
        if _starts[i] < start:
            keep_s.append(_starts[i])
            keep_e.append(start)
        if _ends[j - 1] > end:
            keep_s.append(end)
            keep_e.append(_ends[j - 1])
        _starts[i:j] = keep_s
        _ends[i:j] = keep_e


_hint = (0, 0)  # the owned interval found last: most calls hit it; cleared by every remove()


def covers(start: int, length: int) -> bool:
    global _hint
    end = start + (length or 1)
    lo, hi = _hint
    if lo <= start and end <= hi:
        return True
    with _lock:
        i = bisect.bisect_right(_starts, start) - 1
        if i >= 0 and _ends[i] >= end:
            _hint = (_starts[i], _ends[i])
            return True
        return False


def _foreign_mapping(start: int, end: int) -> tuple[int, int, str] | None:
    """The first mapping in ``[start, end)`` that remapgc did not make, if any."""
    with open("/proc/self/maps") as fh:
        lines = fh.read().splitlines()
    with _lock:
        owned = list(zip(_starts, _ends))
    for line in lines:
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        lo, hi = max(lo, start), min(hi, end)
        if lo >= hi:
            continue
        # Subtract the owned intervals from [lo, hi); anything left is foreign.
        cursor = lo
        for o_lo, o_hi in owned:
            if o_hi <= cursor or o_lo >= hi:
                continue
            if o_lo > cursor:
                break
            cursor = o_hi
            if cursor >= hi:
                break
        if cursor < hi:
            name = fields[5] if len(fields) > 5 else "[anonymous]"
            return int(fields[0].split("-")[0], 16), int(fields[0].split("-")[1], 16), name
    return None


def check(call: str, start: int, length: int) -> None:
    """Raise EPERM if ``[start, start+length)`` overlaps memory remapgc did not map."""
    if start % PAGE or covers(start, length):
        return  # every guarded call rejects an unaligned start itself (EINVAL), touching nothing
    end = start + max(_round_up(length), PAGE)
    foreign = _foreign_mapping(start & ~(PAGE - 1), end)
    if foreign is not None:
        lo, hi, name = foreign
        raise OSError(
            errno.EPERM,
            f"{os.strerror(errno.EPERM)} ({call} {start:#x}+{length:#x}: refusing to touch "
            f"{lo:#x}-{hi:#x} {name}, which this process uses and remapgc did not map)",
        )
