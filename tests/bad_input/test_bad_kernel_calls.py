"""Bad input to every Kernel call, on each backend: a clear exception, never a crash or a hang.

Each case builds its own arguments, then calls once. The expected errno is the
one the real kernel returns (or EFAULT from the guarded user-mode accessors,
EBADF for a closed uffd); wrong types and values Python can reject raise
ValueError (TypeError-compatible). Memory remapgc did not map is refused by the
Linux backend's owned-mapping guard: test_bad_foreign_memory_linux.py.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from heap.kernel import PAGE_SIZE, KernelUnsupported, UffdError
from tests.backends import KERNEL_MATRIX

PS = PAGE_SIZE
EINVAL, ENOMEM, EFAULT, EEXIST, ENOENT, EBADF = (
    errno.EINVAL, errno.ENOMEM, errno.EFAULT, errno.EEXIST, errno.ENOENT, errno.EBADF)

def closed_uffd(k):
    u = k.userfaultfd()
    u.close()
    return u


CASES = [
    # -- mmap family
    ("mmap_length_zero", lambda k, m, u: k.mmap(0), OSError, EINVAL),
    ("mmap_negative_length", lambda k, m, u: k.mmap(-PS), ValueError, None),
    ("mmap_length_not_an_int", lambda k, m, u: k.mmap("4096"), ValueError, None),
    ("mmap_float_length", lambda k, m, u: k.mmap(4096.0), ValueError, None),
    ("mmap_too_big", lambda k, m, u: k.mmap(1 << 60), OSError, ENOMEM),
    ("mmap_prot_out_of_int_range", lambda k, m, u: k.mmap(PS, prot=1 << 40), ValueError, None),
    ("mmap_align_not_power_of_two", lambda k, m, u: k.mmap(PS, align=3 * PS), ValueError, None),
    ("mmap_align_below_page", lambda k, m, u: k.mmap(PS, align=8), ValueError, None),
    ("mmap_at_unaligned", lambda k, m, u: k.mmap(PS, at=m(1) + 1), OSError, EINVAL),
    ("mmap_at_occupied", lambda k, m, u: k.mmap(PS, at=m(1)), OSError, EEXIST),
    ("mmap_at_not_multiple_of_align", lambda k, m, u: k.mmap(PS, at=PS * 3, align=2 * PS), ValueError, None),
    ("munmap_unaligned", lambda k, m, u: k.munmap(m(1) + 1, PS), OSError, EINVAL),
    ("munmap_length_zero", lambda k, m, u: k.munmap(m(1), 0), OSError, EINVAL),
    ("mremap_unaligned", lambda k, m, u: k.mremap(m(1) + 1, PS, m.hole()), OSError, EINVAL),
    ("mremap_length_zero", lambda k, m, u: k.mremap(m(1), 0, m.hole()), OSError, EINVAL),
    ("mremap_from_a_hole", lambda k, m, u: k.mremap(m.hole(), PS, m.hole()), OSError, EFAULT),
    ("mprotect_hole", lambda k, m, u: k.mprotect(m.hole(), PS, 3), OSError, ENOMEM),
    ("mprotect_unknown_prot_bit", lambda k, m, u: k.mprotect(m(1), PS, 0x1000), OSError, EINVAL),
    ("madvise_unknown_advice", lambda k, m, u: k.madvise(m(1), PS, 9999), OSError, EINVAL),
    ("madvise_hole", lambda k, m, u: k.madvise(m.hole(), PS, 4), OSError, ENOMEM),
    ("mlock_hole", lambda k, m, u: k.mlock(m.hole(), PS), OSError, ENOMEM),
    ("mlock_onfault_hole", lambda k, m, u: k.mlock(m.hole(), PS, onfault=True), OSError, ENOMEM),
    ("munlock_hole", lambda k, m, u: k.munlock(m.hole(), PS), OSError, ENOMEM),
    # -- user-mode accesses
    ("load_null", lambda k, m, u: k.load(0, 8), OSError, EFAULT),
    ("load_hole", lambda k, m, u: k.load(m.hole(), 8), OSError, EFAULT),
    ("load_past_the_end", lambda k, m, u: k.load(m.hole() - 4, 8), OSError, EFAULT),
    ("load_prot_none", lambda k, m, u: k.load(m(1, prot=0), 8), OSError, EFAULT),
    ("load_negative_length", lambda k, m, u: k.load(m(1), -1), ValueError, None),
    ("load_wraps_around", lambda k, m, u: k.load((1 << 64) - 4, 8), OSError, EFAULT),
    ("load_absurd_length", lambda k, m, u: k.load(m(1), 1 << 40), ValueError, None),
    ("store_read_only", lambda k, m, u: k.store(m(1, prot=1), b"x"), OSError, EFAULT),
    ("store_hole", lambda k, m, u: k.store(m.hole(), b"x"), OSError, EFAULT),
    ("store_str", lambda k, m, u: k.store(m(1), "text"), ValueError, None),
    ("store_none", lambda k, m, u: k.store(m(1), None), ValueError, None),
    ("load_words_hole", lambda k, m, u: k.load_words([m(1), m.hole()]), OSError, EFAULT),
    ("load_words_2d", lambda k, m, u: k.load_words([[m(1)]]), ValueError, None),
    ("load_words_strings", lambda k, m, u: k.load_words(["a"]), ValueError, None),
    ("load_words_floats", lambda k, m, u: k.load_words([1.5]), ValueError, None),
    ("load_words_negative", lambda k, m, u: k.load_words(np.array([-8], dtype=np.int32)), ValueError, None),
    ("store_words_length_mismatch", lambda k, m, u: k.store_words([m(1)], [1, 2]), ValueError, None),
    ("store_words_read_only", lambda k, m, u: k.store_words([m(1, prot=1)], [1]), OSError, EFAULT),
    ("memmove_from_hole", lambda k, m, u: k.memmove(m(1), m.hole(), 8), OSError, EFAULT),
    ("memmove_absurd_length", lambda k, m, u: k.memmove(m(1), m(1), 1 << 40), OSError, EFAULT),
    ("memmove_negative_length", lambda k, m, u: k.memmove(m(1), m(1), -8), ValueError, None),
    ("copy_ranges_mismatch", lambda k, m, u: k.copy_ranges([m(1)], [m(1)], [8, 8]), ValueError, None),
    ("copy_ranges_into_read_only", lambda k, m, u: k.copy_ranges([m(1, prot=1)], [m(1)], [8]), OSError, EFAULT),
    ("copy_ranges_into_hole", lambda k, m, u: (lambda src: k.copy_ranges([m.hole()], [src], [8]))(m(1)), OSError, EFAULT),
    ("copy_ranges_absurd_length", lambda k, m, u: k.copy_ranges([m(1)], [m(1)], [1 << 40]), OSError, EFAULT),
    ("copy_ranges_wraps", lambda k, m, u: k.copy_ranges([m(1)], [(1 << 64) - 4], [8]), OSError, EFAULT),
    # -- introspection
    ("page_info_negative", lambda k, m, u: k.page_info(-PS), ValueError, None),
    ("page_info_none", lambda k, m, u: k.page_info(None), ValueError, None),
    ("page_frames_negative_count", lambda k, m, u: k.page_frames(m(1), -1), ValueError, None),
    ("page_frames_absurd_count", lambda k, m, u: k.page_frames(m(1), 1 << 50), ValueError, None),
    ("resident_bytes_negative", lambda k, m, u: k.resident_bytes(m(1), -PS), ValueError, None),
    # -- userfaultfd
    ("userfaultfd_negative_features", lambda k, m, u: k.userfaultfd(-1), ValueError, None),
    ("userfaultfd_unknown_feature", lambda k, m, u: k.userfaultfd(1 << 40), KernelUnsupported, None),
    ("register_unaligned", lambda k, m, u: u.register(m(1) + 1, PS), OSError, EINVAL),
    ("register_hole", lambda k, m, u: u.register(m.hole(), PS), OSError, EINVAL),
    ("register_mode_zero", lambda k, m, u: u.register(m(1), PS, 0), OSError, EINVAL),
    ("register_unknown_mode", lambda k, m, u: u.register(m(1), PS, 1 << 10), OSError, EINVAL),
    ("unregister_unaligned", lambda k, m, u: u.unregister(m(1) + 1, PS), OSError, EINVAL),
    ("wake_length_zero", lambda k, m, u: u.wake(m(1), 0), OSError, EINVAL),
    ("move_negative_len", lambda k, m, u: u.move(m(1), m(1), -PS), ValueError, None),
    ("copy_dst_unregistered", lambda k, m, u: u.copy(m(1), m.filled(1), PS), UffdError, ENOENT),
    ("copy_src_hole", lambda k, m, u: u.copy(registered(m, u), m.hole(), PS), UffdError, EFAULT),
    ("zeropage_length_zero", lambda k, m, u: u.zeropage(registered(m, u), 0), UffdError, EINVAL),
    ("read_events_negative_timeout", lambda k, m, u: u.read_events(-1), ValueError, None),
    ("read_events_nan_timeout", lambda k, m, u: u.read_events(float("nan")), ValueError, None),
    ("read_events_string_timeout", lambda k, m, u: u.read_events("1"), ValueError, None),
    ("move_on_closed_uffd", lambda k, m, u: closed_uffd(k).move(m(1), m(1), PS), OSError, EBADF),
    ("register_on_closed_uffd", lambda k, m, u: closed_uffd(k).register(m(1), PS), OSError, EBADF),
    ("read_events_on_closed_uffd", lambda k, m, u: closed_uffd(k).read_events(), OSError, EBADF),
]


def registered(m, u) -> int:
    page = m(1)
    u.register(page, PS)
    return page


# Where the simulator still answers differently from the real kernel (the sim is
# wrong; sim-fidelity fixes it and removes the entry: the xfail is strict).
SIM_DIFFERS: dict[str, str] = {}
# ... and where it does not answer at all (not run there)
SIM_HANGS: dict[str, str] = {}


def sim_mark(name: str):
    if name in SIM_HANGS:
        return [pytest.mark.xfail(run=False, reason=SIM_HANGS[name])]
    if name in SIM_DIFFERS:
        return [pytest.mark.xfail(strict=True, reason=SIM_DIFFERS[name])]
    return []


def on_each_backend(cases):
    """(backend, case...) params, ids "<backend>-<case>"; known sim differences marked on the sim side."""
    return [pytest.param(backend, *case[1:], id=f"{backend}-{case[0]}",
                         marks=sim_mark(case[0]) if backend.startswith("sim") else [])
            for case in cases for backend in KERNEL_MATRIX]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kernel_name,call,exc_type,err", on_each_backend(CASES))
def test_bad_input_raises_a_clear_error(k, mem, uffd, call, exc_type, err):
    with pytest.raises(exc_type) as exc:
        call(k, mem, uffd)
    if err is not None:
        assert exc.value.errno == err, str(exc.value)
    assert str(exc.value)  # says what went wrong


@pytest.mark.parametrize("kernel_name", KERNEL_MATRIX)
def test_type_errors_are_also_value_errors(k):
    with pytest.raises(TypeError):
        k.mmap("4096")
