"""Child process of tests/seam/test_argument_order.py: the raw kernel's answer
to each call of a table, made with plain syscalls (ctypes), no remapgc.

Run as ``python -m tests.seam.raw_kernel`` with the cases as JSON on stdin;
prints ``{case id: errno (0 = success)}`` as JSON. Only calls the kernel
refuses (or ignores) from their arguments alone belong in the table: the
"foreign" address is a page of this interpreter's own memory. A separate
process, so that a wrong entry cannot hurt the test run.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
SYS_MPROTECT, SYS_MUNMAP, SYS_MREMAP, SYS_MADVISE, SYS_USERFAULTFD = 10, 11, 25, 28, 323
UFFD_USER_MODE_ONLY, UFFD_FEATURE_MOVE = 1, 1 << 16
# _IOWR(0xAA, nr, size): the request numbers of include/uapi/linux/userfaultfd.h
UFFDIO_API, UFFDIO_REGISTER, UFFDIO_MOVE = 0xC018AA3F, 0xC020AA00, 0xC028AA05
MREMAP_MAYMOVE_FIXED = 3

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def _answer(ret: int) -> int:
    return ctypes.get_errno() if ret == -1 else 0


def _syscall(nr: int, *args: int) -> int:
    ctypes.set_errno(0)
    return _answer(libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & (2**64 - 1)) for a in args)))


def _ioctl(fd: int, request: int, *words: int) -> int:
    buf = (ctypes.c_uint64 * len(words))(*(w & (2**64 - 1) for w in words))
    ctypes.set_errno(0)
    return _answer(libc.ioctl(fd, request, buf))


def _uffd() -> int:
    fd = libc.syscall(ctypes.c_long(SYS_USERFAULTFD), ctypes.c_long(os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY))
    if fd < 0:
        sys.exit(f"userfaultfd: {os.strerror(ctypes.get_errno())}")
    if _ioctl(fd, UFFDIO_API, 0xAA, UFFD_FEATURE_MOVE, 0):
        sys.exit("UFFDIO_API refused UFFD_FEATURE_MOVE")
    return fd


def main() -> None:
    cases = json.load(sys.stdin)
    own = libc.mmap(None, 4 * PAGE, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    keep = ctypes.create_string_buffer(4 * PAGE)
    foreign = (ctypes.addressof(keep) + PAGE) & ~(PAGE - 1)  # interpreter memory: must not be touched
    bases = {"own": own, "foreign": foreign, "": 0}
    uffd = _uffd()
    calls = {
        "munmap": lambda a, n: _syscall(SYS_MUNMAP, a, n),
        "mprotect": lambda a, n, prot: _syscall(SYS_MPROTECT, a, n, prot),
        "madvise": lambda a, n, advice: _syscall(SYS_MADVISE, a, n, advice),
        "mremap": lambda old, n, new: _syscall(SYS_MREMAP, old, n, n, MREMAP_MAYMOVE_FIXED, new),
        "register": lambda a, n, mode: _ioctl(uffd, UFFDIO_REGISTER, a, n, mode, 0),
        "move": lambda dst, src, n, mode: _ioctl(uffd, UFFDIO_MOVE, dst, src, n, mode, 0),
    }
    out = {}
    for case in cases:
        args = [bases[base] + offset for base, offset in case["args"]]
        out[case["id"]] = calls[case["call"]](*args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
