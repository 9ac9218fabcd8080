"""LinuxKernel: the Kernel protocol on the real Linux kernel (userfaultfd, UFFDIO_MOVE)."""
