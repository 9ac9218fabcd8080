"""Wrappers around a Kernel and its userfaultfd, for benchmarks and tests that
watch or change what the heap asks of the kernel: record the errors it meets,
inject failures, hide a backend's native parts.

``KernelWrapper`` and ``UffdWrapper`` write out every member of the protocol
they wrap (``heap.kernel.Kernel``, ``heap.kernel.Uffd``), each forwarding to
``inner``. There is no ``__getattr__``: a capability the inner object has and
the protocol does not declare is not reachable through a wrapper, so it cannot
route the heap around a subclass's override (tests/kernel/test_kernel_wrappers.py
fails when the protocol gains a member that is not written out here).

The optional capabilities take the seam's safe defaults (``UffdBase``): no
accelerator -- its native walk and fault server would MOVE pages without
calling ``move`` -- and ``move_ranges`` as one ``self.move`` per range, so a
subclass that overrides ``move`` sees every MOVE the heap makes.

Use: ``Heap(kernel=SomeKernelWrapper(open_kernel(name)))``; the wrapper's
``wrap_uffd`` wraps each userfaultfd the heap opens (also the one a child of
os.fork reopens).
"""

from __future__ import annotations

from heap.kernel import (
    PROT_READ,
    PROT_WRITE,
    UFFD_FEATURE_MOVE,
    UFFDIO_REGISTER_MODE_MISSING,
    KernelBase,
    UffdBase,
)


class UffdWrapper(UffdBase):
    """A Uffd forwarding every protocol call to ``inner``; ``accelerator`` is
    None and ``move_ranges`` goes through ``self.move`` (``UffdBase``)."""

    def __init__(self, inner):
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    @property
    def features(self) -> int:
        return self.inner.features

    @property
    def self_serving(self) -> bool:
        """The inner uffd's: whether its missing faults are SIGBUS (that is no capability to hide)."""
        return getattr(self.inner, "self_serving", False)

    def register(self, addr, length, mode=UFFDIO_REGISTER_MODE_MISSING):
        return self.inner.register(addr, length, mode)

    def unregister(self, addr, length):
        return self.inner.unregister(addr, length)

    def move(self, dst, src, length, mode=0):
        return self.inner.move(dst, src, length, mode)

    def copy(self, dst, src, length, mode=0):
        return self.inner.copy(dst, src, length, mode)

    def zeropage(self, dst, length, mode=0):
        return self.inner.zeropage(dst, length, mode)

    def wake(self, addr, length):
        return self.inner.wake(addr, length)

    def read_events(self, timeout=0):
        return self.inner.read_events(timeout)

    def close(self):
        return self.inner.close()

    # accelerator and move_ranges: UffdBase's (None; one self.move per range)


class KernelWrapper(KernelBase):
    """A Kernel forwarding every protocol call to ``inner``; each userfaultfd
    it opens is wrapped by ``wrap_uffd`` (by default a plain ``UffdWrapper``)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.page_size = inner.page_size
        self.hpage_size = inner.hpage_size
        if inner.sigaction_sigbus is not None:  # the simulator's SIGBUS hook: self-served faults
            self.sigaction_sigbus = inner.sigaction_sigbus

    @property
    def sigbus_handler(self):
        return getattr(self.inner, "sigbus_handler", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def wrap_uffd(self, uffd) -> UffdWrapper:
        return UffdWrapper(uffd)

    # -- the mmap family
    def mmap(self, length, prot=PROT_READ | PROT_WRITE, *, shared=False, align=0, at=None, noreserve=False):
        return self.inner.mmap(length, prot, shared=shared, align=align, at=at, noreserve=noreserve)

    def munmap(self, addr, length):
        return self.inner.munmap(addr, length)

    def mremap(self, old_addr, length, new_addr, *, dontunmap=False):
        return self.inner.mremap(old_addr, length, new_addr, dontunmap=dontunmap)

    def mprotect(self, addr, length, prot):
        return self.inner.mprotect(addr, length, prot)

    def madvise(self, addr, length, advice):
        return self.inner.madvise(addr, length, advice)

    def mlock(self, addr, length, *, onfault=False):
        return self.inner.mlock(addr, length, onfault=onfault)

    def munlock(self, addr, length):
        return self.inner.munlock(addr, length)

    # -- user-mode memory access
    def load(self, addr, length):
        return self.inner.load(addr, length)

    def store(self, addr, data):
        return self.inner.store(addr, data)

    def load_words(self, addrs):
        return self.inner.load_words(addrs)

    def store_words(self, addrs, values):
        return self.inner.store_words(addrs, values)

    def memmove(self, dst, src, length):
        return self.inner.memmove(dst, src, length)

    def copy_ranges(self, dsts, srcs, lengths):
        return self.inner.copy_ranges(dsts, srcs, lengths)

    # -- introspection
    def page_info(self, addr):
        return self.inner.page_info(addr)

    def page_frames(self, addr, npages):
        return self.inner.page_frames(addr, npages)

    def resident_bytes(self, addr, length):
        return self.inner.resident_bytes(addr, length)

    # heap.core reads and writes objects in place where the backend allows it
    # (Kernel.memory_in_place, frame_pointers): the inner backend's answer
    @property
    def memory_in_place(self) -> bool:
        return self.inner.memory_in_place

    @property
    def simulated(self) -> bool:
        return self.inner.simulated

    def frame_pointers(self, addr, npages, write=False):
        return self.inner.frame_pointers(addr, npages, write)

    # -- processes and userfaultfd
    def fork(self):
        return self.inner.fork()

    def userfaultfd(self, features=UFFD_FEATURE_MOVE, *, user_mode_only=True):
        return self.wrap_uffd(self.inner.userfaultfd(features, user_mode_only=user_mode_only))

    # -- optional capabilities: the inner backend's, not KernelBase's defaults
    @property
    def reopen_uffd_after_fork(self) -> bool:
        return self.inner.reopen_uffd_after_fork

    def after_fork_in_child(self):
        return self.inner.after_fork_in_child()

    def diagnostics(self):
        return self.inner.diagnostics()

    def close(self):
        return self.inner.close()
