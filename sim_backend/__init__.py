"""SimKernel: a simulated Linux 6.18 kernel that implements the Kernel protocol.

``SimKernel(seed=0, thp=True, fault_plan=None)`` runs the whole protocol of
heap/kernel.py on a simulated x86-64 address space, so remapgc runs and is
tested anywhere, and so the rare outcomes of UFFDIO_MOVE can be forced and
replayed. The reference is the kernel described in
shared/design/uffdio_move_semantics.md (6.18, THP ``madvise``, huge zero page
on, CONFIG_PT_RECLAIM); where the sim and that kernel disagree, the sim is
wrong.

Model
-----
* VMAs (``vmas.py``): start, end, prot, private or shared-anonymous, VM_LOCKED
  / VM_LOCKONFAULT, MADV_HUGEPAGE / NOHUGEPAGE, MADV_DONTFORK, uffd context
  and mode, anon_vma, pgoff. Split and merged like Linux on mmap, munmap,
  mprotect, mlock, madvise, mremap, UFFDIO_(UN)REGISTER and uffd close. New
  mappings are placed top-down below a fixed base, and a private mapping
  whose length is a multiple of 2 MiB is 2 MiB-aligned, as 6.18 does.
* Page tables (``pagetable.py``): a PMD per 2 MiB (none, PTE table, THP, huge
  zero page) and PTEs (none, zero page, frame) in numpy rows, so a run of
  pages is moved, checked or read in one vectorised step. Empty PTE tables
  exist and matter (they force a THP move to split); MADV_DONTNEED frees a
  table it leaves empty when it covers the whole 2 MiB (CONFIG_PT_RECLAIM);
  munmap frees tables no VMA overlaps any more.
* Frames (``frames.py``): map count, pin count, PageAnonExclusive, folio
  (head, size), anon_vma, contents. Contents live in a lazily committed pool
  (one MAP_NORESERVE reservation): a frame costs host memory only once
  written; the zero page and never-written frames share one zero slot.
* Faults: a missing page in a range registered MISSING blocks the faulting
  thread on a condition variable (the GIL is released) and queues a
  ``FaultEvent``; MOVE/COPY/ZEROPAGE without DONTWAKE, WAKE, UNREGISTER and
  close() wake it and it retries the access. Elsewhere missing pages are
  demand-filled: read -> zero page, write -> new frame, first touch of a
  2 MiB-aligned region wholly inside an MADV_HUGEPAGE VMA -> huge zero page /
  THP (``thp=True``). fork() shares private pages copy-on-write and clears
  PageAnonExclusive; a write breaks COW (copy, or reuse once the child is
  gone) and makes the page exclusive again.
* UFFDIO_MOVE (``uffd.py``): the checks V0..V7, M1..M8 in the semantics
  document's order, the per-PMD / per-PTE loop (whole-PMD moves, splits,
  holes, EEXIST, EBUSY, zero pages, the huge zero page, overlap), 6.18's PTE
  batching (one TLB flush per batch), the return convention and the wake of
  exactly ``[dst, dst + moved)``.

Speed
-----
Page tables are numpy rows, so a contiguous run moves with a few array
operations; user-mode word and range accesses build a per-page table of
pool offsets over the span they touch and then run one compiled loop
(``sim_backend._native``, built by ``pip install`` from
``_native_build.py``; without a compiler the same steps run in numpy, and
``SimKernel(compiled=False)`` forces that). ``uffd.move_ranges`` does a batch
of moves under one lock, as the Linux backend's does in one call into C.

Sim-only API
------------
* ``kernel.fault_plan``: a ``FaultPlan`` of ``FaultRule`` records (see
  ``faultplan.py`` for the outcomes: race, dst_populated, enomem,
  fatal_signal, mmap_changing, pinned, unreported_move); ``plan.fired``
  records what fired.
* ``kernel.counters``: a ``Counters`` dataclass (ptes_moved, pmds_moved,
  tlb_flushes, pmds_split, pages_split, bytes_copied, user_bytes_copied,
  faults_raised, faults_served, demand_faults).
* ``kernel.pin(addr, n)`` / ``unpin``: long-term pins (FOLL_PIN).
* ``kernel.pmd_kind(addr)``, ``kernel.vma_list()``, ``kernel.host_bytes()``,
  ``kernel.close()`` (closes every uffd: blocked threads are released).
* ``uffd.mmap_changing``: non-cooperative events not yet read.

Intentional deviations from Linux
---------------------------------
1. An access to unmapped memory, or one the protection forbids, raises
   ``OSError(EFAULT)`` from the accessor instead of killing the process with
   SIGSEGV (the Linux backend's accessors do the same through a guarded copy).
2. Of the non-cooperative uffd events only REMOVE (MADV_DONTNEED/FREE of a
   registered range), UNMAP (munmap) and REMAP (mremap) exist, each only
   when the uffd asked for its feature bit: the calling thread waits until
   the monitor reads the event (read_events consumes it but, like the Linux
   backend, returns only page faults) and MOVE/COPY/ZEROPAGE report EAGAIN
   with moved 0 meanwhile. UFFD_EVENT_FORK is never generated (a child has
   no address space to register anyway).
3. Races the real kernel resolves internally (PTE changed under the mover,
   folio lock contention, migration entries) never happen on their own;
   the fault plan produces their visible outcomes instead. Swap,
   migration, KSM, khugepaged collapse, memory pressure (MADV_FREE'd pages
   are never reclaimed) and deferred THP splitting are not modelled: a
   partially unmapped THP stays a large folio (state "thp") for good.
4. Addresses differ from Linux: the sim places mappings top-down from a
   fixed base and has nothing else mapped, so two consecutive mmaps are
   always adjacent (and merge when compatible), while on Linux a new mapping
   can land in a hole left between the process's other mappings.
5. Frame numbers are small integers, not PFNs: the zero page is frame 1 and
   the huge zero page frames 512..1023; compare frames for equality only.
6. Only advice values the protocol exposes change state (DONTNEED, FREE,
   HUGEPAGE, NOHUGEPAGE, DONTFORK, DOFORK); every other valid advice is
   accepted and does nothing (Linux may split VMAs for some of them).
7. Pins exist only through ``kernel.pin``; order-0 pages with a plain extra
   reference (vmsplice) are not modelled, nor THPs with one (which 6.18
   fails to split, EBUSY). A pinned THP behaves as the document's
   section 3 item 6 says (EBUSY; split PMD left behind on the partial path).
8. Memory protection keys, VM_IO/PFNMAP/MIXEDMAP/HUGETLB VMAs, file-backed
   mappings, shadow stacks and UFFDIO_POISON markers do not exist in the
   protocol and are not modelled (M8a's vm_page_prot check is prot
   equality; M8d, M8f never fire except through shmem at M4/M6).
9. UFFDIO_MOVE on a huge PMD that is pinned is checked before the PMD is
   cleared, not after (same result, no transient state).
10. A fault in a kernel-mode access (the populate done by mlock, or the
    source read of UFFDIO_COPY) on a MISSING-registered range of a
    ``user_mode_only`` context fails with EFAULT, as Linux does (SIGBUS ->
    EFAULT); with ``user_mode_only=False`` it blocks like a user fault.
11. copy_ranges / memmove fault in all their source pages, then all their
    destination pages, before copying (a real memmove faults page by page
    as it goes): the bytes copied are the same, but when one page blocks in
    a userfault the copies before it have not happened yet, and an EFAULT
    leaves the destination unwritten.
"""

from .faultplan import Firing, FaultPlan, FaultRule
from .kernel import Counters, SimChild, SimKernel
from .uffd import SimUffd

__all__ = ["SimKernel", "SimUffd", "SimChild", "Counters", "FaultPlan", "FaultRule", "Firing"]
