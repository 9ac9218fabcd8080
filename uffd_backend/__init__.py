"""LinuxKernel: the Kernel protocol on the real Linux kernel (userfaultfd, UFFDIO_MOVE).

Importing this package needs the compiled extension ``uffd_backend._native``
(built by ``pip install`` on Linux); without it the import fails with
ImportError and ``heap.kernel.open_kernel("auto")`` falls back to the simulator.
"""

from .linux import LinuxChild, LinuxKernel, LinuxUffd, open_userfaultfd

__all__ = ["LinuxChild", "LinuxKernel", "LinuxUffd", "open_userfaultfd"]
