"""Issue 16, "Also": fault injection on the real kernel, no simulator.

The simulator's FaultPlan makes MOVE/COPY/ZEROPAGE fail at will; these tests
make Linux 6.18 itself answer EBUSY, EEXIST (both kinds) and ENOMEM to the
heap's install routine (``heap.install.install_page_range``), and check that
it does what docs/reliability.md's table says; and run a slice of the soak on
the real kernel (``bench.soak --kernel linux``: EBUSY and EEXIST arranged
before the heap's own MOVEs). ``bench.realfaults`` says how, and what Linux
cannot be made to give here (EINTR, EAGAIN from mmap_changing).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading

import pytest

from heap import HeapCorrupted
from heap.install import install_page_range
from heap.kernel import UFFDIO_REGISTER_MODE_MISSING
from tests.regressions.real_kernel import LimitedCgroup, own_memory_cgroup
from tests.regressions.support import ROOT, run_child

try:
    from heap.stats import InstallCounters
except ImportError:
    from heap.install import InstallCounters

NPAGES = 16


@pytest.fixture
def pages(linux_kernel):
    """(kernel, uffd, src, dst): NPAGES source pages holding distinct bytes, and
    a registered, empty destination."""
    k = linux_kernel
    ps = k.page_size
    src = k.mmap(NPAGES * ps)
    for i in range(NPAGES):
        k.store(src + i * ps, bytes([i + 1]) * ps)
    dst = k.mmap(NPAGES * ps)
    uffd = k.userfaultfd()
    uffd.register(dst, NPAGES * ps, UFFDIO_REGISTER_MODE_MISSING)
    yield k, uffd, src, dst
    uffd.close()
    k.close()


def _all_in_place(k, dst) -> bool:
    ps = k.page_size
    return all(k.load(dst + i * ps, ps) == bytes([i + 1]) * ps for i in range(NPAGES))


def _in_other_thread(fn):
    t = threading.Thread(target=fn)
    t.start()
    t.join(30)
    assert not t.is_alive()


@pytest.mark.timeout(60)
def test_ebusy_from_a_forked_child_holding_the_pages_installs_them_by_copy(pages):
    k, uffd, src, dst = pages
    child = k.fork()  # the child maps every source page: MOVE refuses them (EBUSY)
    try:
        c = InstallCounters()
        install_page_range(k, uffd, dst, src, NPAGES * k.page_size, c)
    finally:
        child.exit()
    assert c.ebusy_fallbacks == NPAGES and c.pages_moved == 0
    assert _all_in_place(k, dst)


@pytest.mark.timeout(60)
def test_eexist_from_a_page_another_thread_installed_counts_a_race_and_goes_on(pages):
    k, uffd, src, dst = pages
    ps = k.page_size
    before = k.page_frames(src, NPAGES)
    _in_other_thread(lambda: uffd.move(dst + 5 * ps, src + 5 * ps, ps))  # the other installer won page 5
    c = InstallCounters()
    install_page_range(k, uffd, dst, src, NPAGES * ps, c)
    assert c.eexist_races == 1 and c.pages_moved == NPAGES - 1
    assert _all_in_place(k, dst)
    assert (k.page_frames(dst, NPAGES) == before).all(), "every page moved, none copied"


@pytest.mark.timeout(60)
def test_eexist_from_a_page_another_thread_filled_from_outside_is_refused(pages):
    k, uffd, src, dst = pages
    ps = k.page_size
    _in_other_thread(lambda: uffd.zeropage(dst + 5 * ps, ps))  # not the object's page, and its source is still there
    with pytest.raises(HeapCorrupted, match="install"):
        install_page_range(k, uffd, dst, src, NPAGES * ps, InstallCounters())
    assert k.load(src + 5 * ps, ps) == bytes([6]) * ps, "the source page is kept"


@pytest.mark.timeout(120)
def test_enomem_under_a_memory_cgroup_limit_stops_the_install_and_the_rest_installs_later(linux_kernel):
    if own_memory_cgroup() is None:
        pytest.skip("no cgroup-v1 memory controller here (this machine has one)")
    with LimitedCgroup(limit=0) as cg:
        out = run_child("install_under_memcg_limit", str(cg.path), timeout=100)
    assert out["errno"] == errno.ENOMEM, out
    assert out["whole"] and out["zero_copy"], out


@pytest.mark.timeout(200)
def test_the_soak_on_the_real_kernel_loses_nothing_under_ebusy_and_eexist(linux_kernel, tmp_path):
    """A slice of ``python -m bench.soak --kernel linux`` (forks while the
    heap MOVEs, a second installer beating it to a page), in a child process."""
    out = tmp_path / "soak_linux.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--kernel", "linux", "--cycles", "120", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["losses"] == 0 and not result["failures"]
    faults = result["injected_faults"]
    assert faults.get("EBUSY", 0) > 0 and faults.get("EEXIST", 0) > 0, faults
