"""``kernel="auto"`` is for production: on a Linux machine where userfaultfd
is unusable it still runs on real memory, with the copying compactor, and
says why once; the simulator is chosen only where no real backend exists."""

from __future__ import annotations

import errno
import logging

import pytest

from heap import Heap
from heap.backends import DISABLE_LINUX_ENV, choose_auto
from tests.backends import skip_linux_if_unavailable


@pytest.fixture
def no_userfaultfd(monkeypatch):
    """This machine as one where userfaultfd is refused (a seccomp filter, the
    sysctl at 0 without privilege): the real LinuxKernel, whose userfaultfd()
    fails with EPERM as the kernel's would."""
    skip_linux_if_unavailable()
    from uffd_backend import LinuxKernel

    def refused(self, *args, **kwargs):
        raise OSError(errno.EPERM, "userfaultfd refused (forced by the test)")

    monkeypatch.setattr(LinuxKernel, "userfaultfd", refused)


@pytest.mark.timeout(60)
def test_auto_without_userfaultfd_picks_real_memory_and_the_copying_compactor(no_userfaultfd, caplog):
    caplog.set_level(logging.INFO, logger="remapgc")
    with Heap(kernel="auto", size=8 << 20) as h:
        assert h.kernel.name == "linux"  # real memory, not the simulator
        assert h.compactor == "copy"
        keep, garbage = [], []
        for _ in range(20):  # garbage between the kept objects: they have to slide down
            garbage.append(h.alloc(3000))
            keep.append(h.alloc(3000, 1))
        for i, r in enumerate(keep):
            r.write(bytes([i]) * 3000)
            r.set_ref(0, keep[i - 1] if i else None)
        before = [r.address for r in keep]
        del garbage
        st = h.collect()
        h.verify()
        assert st.bytes_copied > 0 and st.pages_moved == 0  # compacted by copying
        assert any(r.address != a for r, a in zip(keep, before))
        assert all(r.read(3000) == bytes([i]) * 3000 for i, r in enumerate(keep))
        # the frames are real: the page under the first object is a present page with a PFN
        assert h.kernel.page_info(keep[0].address).state in ("present", "thp")
    chosen = [r for r in caplog.records if r.getMessage().startswith("kernel_chosen") or
              getattr(r, "event", None) == "kernel_chosen"]
    fallback = [r for r in caplog.records if "compactor_fallback" in r.getMessage()
                or getattr(r, "event", None) == "compactor_fallback"]
    assert len(fallback) == 1  # said once, by the heap, at warning level
    assert fallback[0].levelno == logging.WARNING
    assert len(chosen) == 1


@pytest.mark.timeout(60)
def test_the_reason_names_the_refusal_and_the_doctor(no_userfaultfd):
    kernel, reason = choose_auto()
    try:
        assert kernel.name == "linux"
        assert reason.startswith("real memory with the copying compactor because")
        assert "remapgc doctor" in reason
    finally:
        kernel.close()


@pytest.mark.timeout(60)
def test_auto_uses_the_simulator_only_where_no_real_backend_exists(monkeypatch):
    monkeypatch.setenv(DISABLE_LINUX_ENV, "1")
    kernel, reason = choose_auto()
    try:
        assert kernel.name == "sim"
        assert reason.startswith("falling back to the simulator because")
    finally:
        kernel.close()


@pytest.mark.timeout(60)
def test_auto_with_userfaultfd_keeps_the_zero_copy_compactor():
    skip_linux_if_unavailable()
    with Heap(kernel="auto", size=8 << 20) as h:
        assert (h.kernel.name, h.compactor) == ("linux", "remap")
