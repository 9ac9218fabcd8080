"""Child process of tests/bad_input/test_bad_argument_order.py: the raw kernel's answer
to each call of a table, made with plain syscalls (ctypes), no remapgc.

Run as ``python -m tests.bad_input.raw_kernel`` with the cases as JSON on stdin;
prints ``{case id: errno (0 = success)}`` as JSON. ``python -m
tests.bad_input.raw_kernel fuzz SEED ROUNDS``: ``fuzz`` below. Only calls the kernel
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




def _maps_line(addr: int) -> str | None:
    with open("/proc/self/maps") as fh:
        for line in fh:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line
    return None


def fuzz(seed: int, rounds: int) -> None:
    """Safety of uffd_backend.kernel_args: whenever a predicate says the kernel
    answers from the arguments alone, the raw call must leave this process's
    memory as it was. Each call aims at a fresh mapping (offsets and lengths
    from the edges: 0, 1, a page, TASK_SIZE, 2**64); afterwards the mapping
    must still be there, whole, read-write, with its bytes. A wrong predicate
    shows as a changed mapping or a crash of this process."""
    import random

    from uffd_backend import kernel_args as ka

    rnd = random.Random(seed)
    top = 1 << 64
    edges = [0, 1, PAGE - 1, PAGE, 2 * PAGE, 4 * PAGE, ka.TASK_SIZE - PAGE, ka.TASK_SIZE, ka.TASK_SIZE + PAGE,
             1 << 56, top - 2 * PAGE, top - PAGE, top - 1]
    uffd = _uffd()
    checked = 0
    for _ in range(rounds):
        own = libc.mmap(None, 4 * PAGE, 3, 0x22, -1, 0)
        ctypes.memset(own, 0x5A, 4 * PAGE)
        addr = rnd.choice([own, own + PAGE, own + 1, rnd.choice(edges)])
        other = rnd.choice([own + 2 * PAGE, own, own + 1, rnd.choice(edges)])
        length = rnd.choice(edges + [rnd.randrange(top)])
        flag = rnd.choice([0, 1, 2, 3, 4, 0x10, 0x80, 0x100, 9999, 0x01000000, 0x03000000])
        call = rnd.choice(["munmap", "mprotect", "madvise", "mremap", "register", "move"])
        if call == "munmap" and ka.munmap(addr, length):
            _syscall(SYS_MUNMAP, addr, length)
        elif call == "mprotect" and ka.mprotect(addr, length, flag):
            _syscall(SYS_MPROTECT, addr, length, flag)
        elif call == "madvise" and ka.madvise(addr, length, _syscall(SYS_MADVISE, 0, 0, flag) == 0):
            _syscall(SYS_MADVISE, addr, length, flag)
        elif call == "mremap" and ka.mremap(addr, length, other, MREMAP_MAYMOVE_FIXED):
            _syscall(SYS_MREMAP, addr, length, length, MREMAP_MAYMOVE_FIXED, other)
        elif call == "register" and ka.uffdio_register(addr, length, flag):
            _ioctl(uffd, UFFDIO_REGISTER, addr, length, flag, 0)
        elif call == "move" and ka.uffdio_move(other, addr, length, flag):
            _ioctl(uffd, UFFDIO_MOVE, other, addr, length, flag, 0)
        else:
            libc.munmap(ctypes.c_void_p(own), 4 * PAGE)
            continue
        checked += 1
        line = _maps_line(own)
        lo, hi = (int(x, 16) for x in line.split()[0].split("-")) if line else (0, 0)
        if not (lo <= own and own + 4 * PAGE <= hi and line.split()[1].startswith("rw")):
            sys.exit(f"{call} addr={addr:#x} other={other:#x} length={length:#x} flag={flag:#x}: "
                     f"the kernel changed the mapping ({line!r})")
        if ctypes.string_at(own, 4 * PAGE) != b"\x5a" * (4 * PAGE):
            sys.exit(f"{call} addr={addr:#x} length={length:#x} flag={flag:#x}: the kernel changed the bytes")
        libc.munmap(ctypes.c_void_p(own), 4 * PAGE)
    print(json.dumps({"checked": checked}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["fuzz"]:
        fuzz(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
