"""The Linux backend checks a call's arguments in the kernel's order, with the
kernel's errno (issue 15): alignment, zero and wrapping lengths, ranges past
the address space and unknown flags are answered from the arguments alone,
before the backend's own refusal to touch memory remapgc did not map (EPERM,
uffd_backend/owned.py; the refusal itself: test_bad_foreign_memory_linux.py)
-- as the kernel itself answers them before it looks at any mapping.

Each case is run on both backends and, in a child process with plain
syscalls, on the raw kernel (tests/bad_input/raw_kernel.py); all three must give
the errno in the table. "foreign" is a page of the interpreter's own memory
(on the simulator: an address nothing is mapped at); the table holds only
calls the kernel refuses or ignores without touching it.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heap.kernel import MADV_DONTNEED, UFFDIO_REGISTER_MODE_MISSING, UffdError
from tests.backends import KERNEL_MATRIX, make_kernel, skip_linux_if_unavailable

ROOT = Path(__file__).resolve().parents[2]
PS = 4096
WRAP = 1 << 64  # a length of WRAP - x wraps past 2**64 from any start above x
PAST = 1 << 48  # longer than the x86-64 user address space
MISSING = UFFDIO_REGISTER_MODE_MISSING
OWN, FOREIGN, ABS = "own", "foreign", ""

# id, call, arguments as (base, offset) -- addresses are base + offset --, errno (0: success, nothing done)
CASES = [
    ("munmap_length_wraps", "munmap", [(OWN, 0), (ABS, WRAP - PS)], errno.EINVAL),
    ("munmap_foreign_length_wraps", "munmap", [(FOREIGN, 0), (ABS, WRAP - PS)], errno.EINVAL),
    ("munmap_foreign_zero_length", "munmap", [(FOREIGN, 0), (ABS, 0)], errno.EINVAL),
    ("munmap_foreign_past_task_size", "munmap", [(FOREIGN, 0), (ABS, PAST)], errno.EINVAL),
    ("munmap_foreign_unaligned", "munmap", [(FOREIGN, 1), (ABS, PS)], errno.EINVAL),
    ("mprotect_length_wraps", "mprotect", [(OWN, 0), (ABS, WRAP - PS), (ABS, 3)], errno.ENOMEM),
    ("mprotect_foreign_length_wraps", "mprotect", [(FOREIGN, 0), (ABS, WRAP - PS), (ABS, 3)], errno.ENOMEM),
    ("mprotect_foreign_zero_length", "mprotect", [(FOREIGN, 0), (ABS, 0), (ABS, 0)], 0),
    ("mprotect_foreign_unknown_prot", "mprotect", [(FOREIGN, 0), (ABS, PS), (ABS, 0x10)], errno.EINVAL),
    ("madvise_length_wraps", "madvise", [(OWN, 0), (ABS, WRAP - PS), (ABS, MADV_DONTNEED)], errno.EINVAL),
    ("madvise_foreign_length_wraps_when_aligned", "madvise", [(FOREIGN, 0), (ABS, WRAP - 1), (ABS, MADV_DONTNEED)],
     errno.EINVAL),
    ("madvise_foreign_unknown_advice", "madvise", [(FOREIGN, 0), (ABS, PS), (ABS, 9999)], errno.EINVAL),
    ("madvise_foreign_zero_length", "madvise", [(FOREIGN, 0), (ABS, 0), (ABS, MADV_DONTNEED)], 0),
    ("mremap_length_wraps", "mremap", [(OWN, 0), (ABS, WRAP - 1), (OWN, 2 * PS)], errno.EINVAL),
    ("mremap_foreign_past_task_size", "mremap", [(FOREIGN, 0), (ABS, PAST), (OWN, 0)], errno.EINVAL),
    ("mremap_foreign_target_unaligned", "mremap", [(FOREIGN, 0), (ABS, PS), (OWN, 1)], errno.EINVAL),
    ("mremap_foreign_target_overlaps", "mremap", [(FOREIGN, 0), (ABS, 2 * PS), (FOREIGN, PS)], errno.EINVAL),
    ("register_length_wraps", "register", [(OWN, 0), (ABS, WRAP - PS), (ABS, MISSING)], errno.EINVAL),
    ("register_foreign_length_wraps", "register", [(FOREIGN, 0), (ABS, WRAP - PS), (ABS, MISSING)], errno.EINVAL),
    ("register_foreign_zero_length", "register", [(FOREIGN, 0), (ABS, 0), (ABS, MISSING)], errno.EINVAL),
    ("register_foreign_empty_mode", "register", [(FOREIGN, 0), (ABS, PS), (ABS, 0)], errno.EINVAL),
    ("register_foreign_unknown_mode", "register", [(FOREIGN, 0), (ABS, PS), (ABS, 0x100)], errno.EINVAL),
    ("move_length_wraps", "move", [(OWN, 0), (FOREIGN, 0), (ABS, WRAP - PS), (ABS, 0)], errno.EINVAL),
    ("move_foreign_src_past_task_size", "move", [(OWN, 0), (FOREIGN, 0), (ABS, PAST), (ABS, 0)], errno.EINVAL),
    ("move_foreign_src_unaligned", "move", [(OWN, 0), (FOREIGN, 1), (ABS, PS), (ABS, 0)], errno.EINVAL),
    ("move_foreign_src_unknown_mode", "move", [(OWN, 0), (FOREIGN, 0), (ABS, PS), (ABS, 0x80)], errno.EINVAL),
]
IDS = [c[0] for c in CASES]
SIM_FOREIGN = 0x10000000  # nothing is mapped there in the simulator


def answer(kernel, uffd, call: str, args: list[int]) -> int:
    """The errno the backend raises for the call (0: it returned)."""
    method = getattr(uffd, call) if call in ("register", "move") else getattr(kernel, call)
    try:
        method(*args)
    except OSError as exc:
        return exc.errno
    return 0


@pytest.fixture(scope="module")
def raw_kernel() -> dict[str, int]:
    """Every case's answer from the raw kernel."""
    skip_linux_if_unavailable()
    cases = [{"id": c[0], "call": c[1], "args": c[2]} for c in CASES]
    child = subprocess.run([sys.executable, "-m", "tests.bad_input.raw_kernel"], cwd=ROOT, input=json.dumps(cases),
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout)


@pytest.fixture(params=KERNEL_MATRIX)
def backend(request):
    kernel = make_kernel(request.param)
    uffd = kernel.userfaultfd()
    own = kernel.mmap(4 * PS)
    keep = np.zeros(4 * PS, dtype=np.uint8)  # interpreter memory, on Linux the "foreign" page
    foreign = SIM_FOREIGN if request.param.startswith("sim") else (keep.ctypes.data + PS) & ~(PS - 1)
    yield kernel, uffd, {OWN: own, FOREIGN: foreign, ABS: 0}
    kernel.munmap(own, 4 * PS)
    uffd.close()
    kernel.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call,args,err", [c[1:] for c in CASES], ids=IDS)
def test_the_backends_answer_argument_errors_as_the_kernel_does(backend, call, args, err):
    kernel, uffd, bases = backend
    assert answer(kernel, uffd, call, [bases[b] + off for b, off in args]) == err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case_id,err", [(c[0], c[3]) for c in CASES], ids=IDS)
def test_the_raw_kernel_gives_the_tables_errno(raw_kernel, case_id, err):
    assert raw_kernel[case_id] == err, f"the raw kernel says {raw_kernel[case_id]}: the table (and the backends) are wrong"


@pytest.mark.timeout(60)
def test_a_batched_move_answers_a_wrapping_range_at_its_index(backend):
    """move_ranges: the ranges before the bad one are moved, the bad one gets
    the kernel's EINVAL (not the ownership check's EPERM) and its index."""
    kernel, uffd, bases = backend
    src, dst = kernel.mmap(PS), kernel.mmap(2 * PS)
    kernel.store(src, b"moved")
    uffd.register(dst, 2 * PS)
    with pytest.raises(UffdError) as exc:
        uffd.move_ranges(np.array([dst, dst + PS], dtype=np.uint64), np.array([src, bases[FOREIGN]], dtype=np.uint64),
                         np.array([PS, WRAP - PS], dtype=np.uint64))
    assert (exc.value.errno, exc.value.index, exc.value.moved) == (errno.EINVAL, 1, 0)
    assert kernel.load(dst, 5) == b"moved"
    uffd.unregister(dst, 2 * PS)
    kernel.munmap(dst, 2 * PS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_arguments_said_to_be_refused_never_reach_memory_on_the_raw_kernel(seed):
    """The safety of skipping the ownership check: thousands of edge-valued
    calls that uffd_backend.kernel_args says the kernel answers from the
    arguments alone, made raw on a fresh mapping in a child; the mapping must
    come out whole, read-write and unchanged every time."""
    skip_linux_if_unavailable()
    child = subprocess.run([sys.executable, "-m", "tests.bad_input.raw_kernel", "fuzz", str(seed), "3000"], cwd=ROOT,
                           capture_output=True, text=True, timeout=110)
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-2000:]
    assert json.loads(child.stdout)["checked"] > 1000  # most edge-valued calls are refused from their arguments
