"""The heap's address ranges: the arena, the from-space, and the userfaultfd.

The arena is one anonymous mapping reserved up front, 2 MiB-aligned even
without THP (the flip's mremap then moves whole page tables instead of one
PTE at a time). With the remap compactor a from-space of the same size
exists beside it, empty between collections, and a userfaultfd that
installs pages back into the arena (docs/design.md, "The pause").

The from-space is released (MADV_DONTNEED: RSS drops) after an install,
outside the heap lock: a collection *owes* the release (``owe_release``)
and pays it once its pause is over (``release_owed``); a collection that
starts meanwhile pays it first (``settle_release``), so nothing ever
releases a newer from-space.
"""

from __future__ import annotations

import threading
import warnings
import weakref

from .alloc import round_up
from .errors import RemapRefused
from .faultmode import choose_fault_mode, self_service_refused, uffd_features
from .kernel import MADV_DONTNEED, MADV_HUGEPAGE, UFFD_FEATURE_MOVE, UFFDIO_REGISTER_MODE_MISSING, KernelUnsupported


class Spaces:
    """The arena ``[base, base + size)``, the from-space, and the userfaultfd (None: copying compactor)."""

    def __init__(self, kernel, size: int, *, thp: bool, faults: str = "thread"):
        self.kernel = kernel
        self.size = size
        self.base = 0
        self.from_space = 0
        self.uffd = None
        # who serves a concurrent cycle's faults: "self" (the faulting thread, by SIGBUS)
        # or "thread" (a handler thread), and why (heap.faultmode)
        self.faults, self.faults_reason = choose_fault_mode(faults, kernel)
        self._release_lock = threading.Lock()
        self._owed: object | None = None
        self.flipped = False  # the arena is flipped and registered until unregister()
        self.kept = 0  # bytes at the arena's start the flip left in place (flip's ``keep``)
        self.base = self._reserve()
        if thp:
            kernel.madvise(self.base, size, MADV_HUGEPAGE)

    def _reserve(self) -> int:
        # the heap's size is a maximum: address space reserved, memory committed only as
        # pages are touched, so a heap may be sized past RAM + swap (docs/embedding.md)
        return self.kernel.mmap(self.size, align=self.kernel.hpage_size, noreserve=True)

    @property
    def closed(self) -> bool:
        return not self.base

    # -- the userfaultfd ----------------------------------------------------------------
    def open_uffd(self) -> None:
        """A userfaultfd with UFFDIO_MOVE, and the from-space beside the arena.
        Raises KernelUnsupported or OSError saying why not."""
        uffd = self.kernel.userfaultfd(UFFD_FEATURE_MOVE | uffd_features(self.faults))
        refused = self_service_refused(self.faults, uffd, self.kernel)
        if refused:  # a uffd that would raise SIGBUS nobody serves: the handler thread instead
            uffd.close()
            self.faults, self.faults_reason = "thread", refused
            uffd = self.kernel.userfaultfd(UFFD_FEATURE_MOVE)
        if not uffd.features & UFFD_FEATURE_MOVE:
            uffd.close()
            raise KernelUnsupported(f"the kernel does not offer UFFD_FEATURE_MOVE (features {uffd.features:#x})")
        self.uffd = uffd
        if not self.from_space:
            self.from_space = self._reserve()

    def drop_uffd(self) -> None:
        """Close the userfaultfd (errors ignored: in a forked child it is the parent's descriptor)."""
        uffd, self.uffd = self.uffd, None
        if uffd is not None:
            try:
                uffd.close()
            except OSError:
                pass

    # -- flipping ---------------------------------------------------------------------
    def flip(self, *, register_first: bool, keep: int = 0) -> None:
        """Move every arena page to the from-space with one mremap(MREMAP_DONTUNMAP):
        the arena stays mapped, empty and registered with the userfaultfd, so
        a touch of a page not yet installed is a userfault.

        ``keep``: bytes at the arena's start (a dense prefix already where the
        plan puts it, a multiple of the unit) that stay where they are: only
        ``[base + keep, end)`` is flipped, into the from-space at the same
        offset, and registered. That splits the arena's VMA (and the
        from-space's) for the cycle; measured on Linux 6.18 (and so modelled by
        the simulator), the arena's two VMAs merge back when the suffix is
        unregistered, whatever the prefix and whether or not anything was
        installed into the suffix, and the next flip's mremap replaces the
        from-space's pieces (MREMAP_FIXED unmaps what lies at its target).

        The order is a trade measured on Linux 6.18 (1 GiB of 4 KiB pages):
        registering first makes mremap move the pages one PTE at a time
        (2-8 ms) but the install then reuses the arena's page tables;
        registering after moves whole page tables (0.1 ms) and the install
        rebuilds them. A stop-the-world cycle wants the smaller sum, a
        concurrent one the shorter pause. Mutators cannot touch the arena in
        between: the pause holds the heap lock and the access gate.

        Raises RemapRefused, with the pages back in place, when registering
        is refused.
        """
        if not 0 <= keep < self.size or keep % self.kernel.page_size:
            raise ValueError(f"keep={keep:#x} must be whole pages below the arena's size {self.size:#x}")
        k, uffd = self.kernel, self.uffd
        lo, n, to = self.base + keep, self.size - keep, self.from_space + keep
        self.kept = keep
        if register_first:
            self._register()
            try:
                k.mremap(lo, n, to, dontunmap=True)
            except OSError:
                uffd.unregister(lo, n)
                raise
            self.flipped = True
            return
        k.mremap(lo, n, to, dontunmap=True)
        self.flipped = True
        try:
            self._register()
        except RemapRefused:
            self.unflip()
            raise

    def _register(self) -> None:
        try:
            self.uffd.register(self.base + self.kept, self.size - self.kept, UFFDIO_REGISTER_MODE_MISSING)
        except OSError as exc:
            raise RemapRefused(exc) from exc

    def unflip(self) -> None:
        """Undo a flip whose plan could not be carried out: the pages go back."""
        k, keep = self.kernel, self.kept
        k.mremap(self.from_space + keep, self.size - keep, self.base + keep)
        try:
            self.uffd.unregister(self.base + keep, self.size - keep)
        except OSError:
            pass
        self.flipped = False
        if keep:  # the from-space's prefix is still mapped: only the moved part is reserved again
            k.mmap(self.size - keep, at=self.from_space + keep, noreserve=True)
        else:
            self.from_space = self._reserve()
        self.kept = 0

    def unregister(self) -> None:
        """Every page is installed: fresh pages fault normally again (and anything still blocked wakes).
        Nothing to do after a collection that left every page in place (no flip)."""
        if self.flipped:
            self.uffd.unregister(self.base + self.kept, self.size - self.kept)
            self.flipped = False
            self.kept = 0

    # -- releasing the from-space -------------------------------------------------------
    def release_from_space(self) -> dict:
        """After an install: drop what the from-space still holds (the dead pages)."""
        self.kernel.madvise(self.from_space, self.size, MADV_DONTNEED)
        return dict(from_space_bytes=self.size)

    def owe_release(self) -> object:
        """A collection's pause is over and its from-space still holds pages:
        the token its ``release_owed`` needs."""
        token = self._owed = object()
        return token

    @property
    def owes_release(self) -> bool:
        return self._owed is not None

    def release_owed(self, token: object) -> dict | None:
        """Release the from-space if the release owed under ``token`` is still
        owed (no later pause paid it first); the release's event fields, or None."""
        with self._release_lock:
            if self._owed is not token or self.closed:
                return None
            self._owed = None
            return self.release_from_space()

    def settle_release(self) -> None:
        """Release the last from-space now if its collection has not yet."""
        with self._release_lock:
            if self._owed is not None:
                self._owed = None
                self.release_from_space()

    # -- inspection -----------------------------------------------------------------------
    def rss(self, top: int, unit: int, *, from_space_too: bool) -> int:
        """Resident bytes of the heap's mappings: the arena below ``top``
        (rounded up to ``unit``, a huge page that may reach past it), plus the
        from-space when it can hold pages. Only those ranges are read: reading
        the page tables of a whole large arena costs milliseconds. 0 once closed."""
        with self._release_lock:  # close() takes it before unmapping
            if self.closed:
                return 0
            k = self.kernel
            used = min(round_up(top - self.base, unit), self.size)
            rss = k.resident_bytes(self.base, used) if used else 0
            if self.from_space and (from_space_too or self._owed is not None):
                rss += k.resident_bytes(self.from_space, self.size)
            return rss

    def release_with(self, owner, kernel=None) -> weakref.finalize:
        """If ``owner`` (the heap) is garbage-collected without being closed,
        warn as an unclosed file does (ResourceWarning) and release these
        ranges (and ``kernel``, if the heap opened it) then. The caller
        detaches the finalizer when it closes. Nothing runs at interpreter
        exit: the process's memory goes with it."""
        fin = weakref.finalize(owner, _release_unclosed, self, kernel, repr(owner))
        fin.atexit = False
        return fin

    def close(self, *, unmap: bool = True) -> None:
        """Close the userfaultfd and unmap both ranges. ``unmap=False`` leaves the
        memory mapped (leaked) for a thread still inside an access: closing the
        userfaultfd lets its fault finish, and an unmapped page would crash it."""
        with self._release_lock:
            self._owed = None
            if self.uffd is not None:
                self.uffd.close()
                self.uffd = None
            for addr in (self.base, self.from_space):
                if addr and unmap:
                    self.kernel.munmap(addr, self.size)
            self.base = self.from_space = 0


def _release_unclosed(spaces: Spaces, kernel, name: str) -> None:
    warnings.warn(f"unclosed heap {name}: garbage-collected without close(); its memory is released now "
                  "(call close() or use 'with Heap(...)')", ResourceWarning, stacklevel=2)
    spaces.close()
    if kernel is not None:
        kernel.close()
