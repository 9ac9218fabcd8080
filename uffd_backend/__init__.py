"""LinuxKernel: the Kernel protocol on the real Linux kernel (userfaultfd, UFFDIO_MOVE).

Importing this package needs the compiled extension ``uffd_backend._native``
(built by ``pip install`` on Linux from ``csrc/``); without it the import fails
with ImportError and ``heap.backends.open_kernel("auto")`` falls back to the
simulator. The import also fails (ImportError naming the difference) when the
extension was built with another install-program layout than heap/kernel.py
declares (``accelerator.py``). Importing it loads ``heap.kernel`` only, never
the collector.
"""

from .linux import LinuxChild, LinuxKernel, LinuxUffd, open_userfaultfd

__all__ = ["LinuxChild", "LinuxKernel", "LinuxUffd", "open_userfaultfd"]
