"""Run by test_privileges.py as user nobody (no capabilities): what remapgc does there.

    python -m tests.reliability.privileges_script <plain|seccomp>

``seccomp`` first installs a filter that makes the userfaultfd syscall fail
with EPERM, as container runtimes' default profiles do (with /dev/userfaultfd
root-only, both ways in are then shut). Prints one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

SYS_userfaultfd = 323  # x86-64
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refuse_userfaultfd() -> None:
    """A seccomp filter: userfaultfd(2) -> EPERM, every other syscall allowed."""
    prog = [(LD_W_ABS, 0, 0, 4), (JEQ_K, 1, 0, AUDIT_ARCH_X86_64), (RET_K, 0, 0, RET_ALLOW),
            (LD_W_ABS, 0, 0, 0), (JEQ_K, 0, 1, SYS_userfaultfd), (RET_K, 0, 0, RET_ERRNO | 1),
            (RET_K, 0, 0, RET_ALLOW)]
    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                                                                  ctypes.byref(fprog), 0, 0):
        raise OSError(ctypes.get_errno(), "installing the seccomp filter failed")


def main() -> None:
    if sys.argv[1] == "seccomp":
        refuse_userfaultfd()
    from heap import Heap
    from heap.doctor import report
    from heap.kernel import choose_auto

    out = {"uid": os.getuid(), "sysctl": open("/proc/sys/vm/unprivileged_userfaultfd").read().strip()}
    kernel, why = choose_auto()
    out["auto"], out["auto_reason"] = kernel.name, why
    rep = report()
    out["doctor"] = {k: rep[k] for k in ("auto_backend", "auto_reason", "move_works", "move_detail",
                                         "userfaultfd_user_mode_only_required", "userfaultfd_syscall",
                                         "userfaultfd_dev", "vm_unprivileged_userfaultfd", "linux_backend")}
    out["doctor"]["paths"] = {k: (v["ok"], v.get("detail")) for k, v in rep["userfaultfd_paths"].items()}
    # the heap on the real kernel: the compactor it can get, and a workload through it
    with Heap(kernel="linux", size=16 << 20) as h:
        out["linux_compactor"] = h.compactor
        refs = []
        for i in range(300):
            refs.append(h.alloc(100 + 997 * (i % 7), 1))
            h.alloc(200)  # garbage between: the collection has objects to slide down
        for i, r in enumerate(refs):
            r.write(bytes([i % 251]) * r.nbytes)
            r.set_ref(0, refs[i - 1] if i else None)
        st = h.collect()
        h.verify()
        out["linux_collect"] = {"live": st.live_objects, "copied": st.bytes_copied, "moved": st.pages_moved}
        out["linux_whole"] = all(r.read(r.nbytes) == bytes([i % 251]) * r.nbytes and
                                 (r.get_ref(0) is None if i == 0 else r.get_ref(0).same_object(refs[i - 1]))
                                 for i, r in enumerate(refs))
    with Heap(kernel="auto", size=8 << 20) as h:
        out["auto_heap"] = [h.kernel.name, h.compactor]
        a = h.alloc(64)
        a.write(b"y" * 64)
        h.collect()
        h.verify()
        out["auto_whole"] = a.read(64) == b"y" * 64
    print(json.dumps(out))


if __name__ == "__main__":
    main()
