"""Memory this process uses that remapgc did not map: the Linux backend refuses it.

The real kernel would let munmap, mprotect, madvise, mremap, UFFDIO_REGISTER or
UFFDIO_MOVE wreck the interpreter's own memory; LinuxKernel's owned-mapping
guard (uffd_backend.owned) refuses every such call with EPERM, leaving that
memory as it was. The simulator has no foreign memory, so this is a
Linux-only fact.
"""

from __future__ import annotations

import ctypes
import errno

import pytest

from heap.kernel import PAGE_SIZE

PS = PAGE_SIZE

# Memory this process uses that remapgc did not map: a ctypes buffer on the C heap.
_FOREIGN = ctypes.create_string_buffer(4 * PS)
FOREIGN = (ctypes.addressof(_FOREIGN) + PS) & ~(PS - 1)


@pytest.fixture
def k(linux_kernel):
    yield linux_kernel
    linux_kernel.close()


CASES = [
    ("munmap_foreign_memory", lambda k, m, u: k.munmap(FOREIGN, PS)),
    # every page a process may map (TASK_SIZE is 2**47 - one page): arguments the kernel would take
    ("munmap_everything", lambda k, m, u: k.munmap(PS, (1 << 47) - 2 * PS)),
    ("mremap_foreign_source", lambda k, m, u: k.mremap(FOREIGN, PS, m.hole())),
    ("mremap_onto_foreign_memory", lambda k, m, u: k.mremap(m(1), PS, FOREIGN)),
    ("mprotect_foreign_memory", lambda k, m, u: k.mprotect(FOREIGN, PS, 0)),
    ("madvise_dontneed_foreign_memory", lambda k, m, u: k.madvise(FOREIGN, PS, 4)),
    ("register_foreign_memory", lambda k, m, u: u.register(FOREIGN, PS)),
    ("move_foreign_source", lambda k, m, u: u.move(m(1), FOREIGN, PS)),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_memory_remapgc_did_not_map_is_refused_with_eperm_and_left_alone(k, mem, uffd, call):
    _FOREIGN.raw = b"\xab" * len(_FOREIGN)
    with pytest.raises(OSError) as exc:
        call(k, mem, uffd)
    assert exc.value.errno == errno.EPERM, str(exc.value)
    assert str(exc.value)  # says what went wrong
    assert _FOREIGN.raw == b"\xab" * len(_FOREIGN)
