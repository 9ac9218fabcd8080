"""Choosing a backend: ``open_kernel`` and the checks behind its "auto" choice.

The only place in ``heap/`` that imports a backend, and only inside the
functions that open one, so that importing the heap loads no backend and
importing a backend loads no collector (docs/design.md, "Layers").
"""

from __future__ import annotations

import os

from .events import get_logger
from .kernel import UFFD_FEATURE_MOVE, Kernel, KernelUnsupported

log = get_logger("remapgc.kernel")

DISABLE_LINUX_ENV = "REMAPGC_DISABLE_LINUX"


def linux_disabled_reason() -> str | None:
    """Why the Linux backend must not be used here, or None if it may be."""
    if os.environ.get(DISABLE_LINUX_ENV, "") not in ("", "0"):
        return f"the Linux backend is disabled by {DISABLE_LINUX_ENV}={os.environ[DISABLE_LINUX_ENV]}"
    if not os.uname().sysname == "Linux":
        return f"not Linux ({os.uname().sysname})"
    return None


def open_linux(**options) -> Kernel:
    """The real-kernel backend, or KernelUnsupported saying why not."""
    reason = linux_disabled_reason()
    if reason:
        raise KernelUnsupported(reason)
    try:
        from uffd_backend import LinuxKernel
    except ImportError as exc:  # the extension was not built (not Linux, no compiler)
        raise KernelUnsupported(f"the Linux backend's compiled extension is missing: {exc}") from exc
    return LinuxKernel(**options)


def open_sim(**options) -> Kernel:
    from sim_backend import SimKernel

    return SimKernel(**options)


def probe_move(kernel: Kernel) -> None:
    """Move one page with UFFDIO_MOVE and check it kept its frame.

    Raises KernelUnsupported with the reason when userfaultfd or MOVE is
    unusable on ``kernel``.
    """
    ps = kernel.page_size
    try:
        uffd = kernel.userfaultfd(UFFD_FEATURE_MOVE)
    except KernelUnsupported:
        raise
    except OSError as exc:
        raise KernelUnsupported(f"userfaultfd refused: {exc}") from exc
    src = dst = 0
    try:
        if not uffd.features & UFFD_FEATURE_MOVE:
            raise KernelUnsupported(
                f"the kernel does not offer UFFD_FEATURE_MOVE (features {uffd.features:#x}); Linux >= 6.8 needed")
        src = kernel.mmap(ps)
        dst = kernel.mmap(ps)
        kernel.store(src, b"remapgc-probe")
        before = kernel.page_info(src).frame
        uffd.register(dst, ps)
        try:
            uffd.move(dst, src, ps)
        except OSError as exc:
            raise KernelUnsupported(f"UFFDIO_MOVE failed: {exc}") from exc
        after = kernel.page_info(dst).frame
        if kernel.load(dst, 13) != b"remapgc-probe":
            raise KernelUnsupported("UFFDIO_MOVE did not carry the page's contents")
        if before is not None and after != before:
            raise KernelUnsupported(f"UFFDIO_MOVE copied instead of moving (frame {before} -> {after})")
    finally:
        uffd.close()
        for addr in (src, dst):
            if addr:
                kernel.munmap(addr, ps)


def open_kernel(name: str = "auto", **options) -> Kernel:
    """Open a backend by name: "linux", "sim", or "auto".

    "auto" is for production: it picks real memory wherever there is any.
    On Linux that is the Linux backend, whether or not userfaultfd with
    UFFD_FEATURE_MOVE works (checked with a real one-page move): without it
    a Heap on that kernel compacts with the copying compactor. The simulator
    only where no real backend exists at all (not Linux, the extension not
    built, REMAPGC_DISABLE_LINUX set), with a warning. It logs which one it
    chose and why, once.
    """
    if name == "linux":
        return open_linux(**options)
    if name == "sim":
        return open_sim(**options)
    if name != "auto":
        raise ValueError(f"unknown kernel {name!r}: expected 'auto', 'linux' or 'sim'")
    kernel, reason = choose_auto(**options)
    if kernel.simulated:
        log.warning("kernel_chosen", kernel=kernel.name, reason=reason)
    else:
        log.info("kernel_chosen", kernel=kernel.name, reason=reason)
    return kernel


def choose_auto(**options) -> tuple[Kernel, str]:
    """The backend "auto" picks and the reason, without logging."""
    try:
        kernel = open_linux(**options)
    except KernelUnsupported as exc:  # no real backend at all: the simulator is all there is
        return open_sim(**options), f"falling back to the simulator because {exc} (run `remapgc doctor`)"
    try:
        probe_move(kernel)
    except KernelUnsupported as exc:  # real memory still beats simulated memory: the copying compactor
        return kernel, (f"real memory with the copying compactor because {exc} (run `remapgc doctor`)")
    return kernel, "userfaultfd with UFFDIO_MOVE works here (a one-page probe move kept its frame)"
