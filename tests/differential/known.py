"""Known disagreements between the simulator and this kernel (the kernel wins).

Each entry maps a scenario name to the reason, which points into
tests/differential/DISAGREEMENTS.md; the scenario's test is then marked
xfail(strict=True), so the suite stays green while the sim is wrong and turns
red as soon as it is fixed (remove the entry then).

* ``SIM_DIFFERS``: the sim's record differs from Linux's (test_sim_equals_linux).
* ``SIM_MISSES_DOC``: the sim also breaks an expectation of the semantics
  document (test_sim_semantics).
"""

SELF_MEMMOVE = ("LinuxKernel.memmove is glibc's memmove, which reads but does not write when dst == src; "
                "the sim writes; see tests/differential/DISAGREEMENTS.md#memmove-onto-itself")

SHARED_THP_FREE = ("MADV_FREE of part of a THP mapped by a child too: Linux skips it (PMD intact), the sim "
                   "splits it; see tests/differential/DISAGREEMENTS.md#madv_free-of-part-of-a-shared-thp")

NOOP_SPLIT = ("a change that leaves part of a VMA's flags as they are splits a THP's PMD on the sim; Linux "
              "skips the VMA; see tests/differential/DISAGREEMENTS.md#no-op-vma-changes-split-thps")
NOOP_SCENARIOS = [f"{what} on part of a THP changes nothing: PMD kept, moves whole" for what in (
    "mprotect to the same protection", "MADV_HUGEPAGE again", "munlock of unlocked pages",
    "REGISTER again in the same mode")]

DONTUNMAP_LOCKED = ("mremap DONTUNMAP of an mlocked VMA: Linux clears VM_LOCKED on the old VMA without merging it "
                    "with its neighbours, the sim merges; see tests/differential/DISAGREEMENTS.md"
                    "#mremap-dontunmap-of-an-mlocked-vma")
DONTUNMAP_LOCKED_SCENARIO = "mremap DONTUNMAP of an mlocked page: the old VMA is unlocked but stays apart"

SIM_DIFFERS: dict[str, str] = {
    DONTUNMAP_LOCKED_SCENARIO: DONTUNMAP_LOCKED,
    **{name: NOOP_SPLIT for name in NOOP_SCENARIOS},
    "memmove of an untouched page onto itself only reads it": SELF_MEMMOVE,
    "MADV_FREE of part of a THP shared with a child leaves it whole": SHARED_THP_FREE,
    "MADV_FREE of part of a shared THP, then the child exits and a write: the PMD moves whole": SHARED_THP_FREE,
}
SIM_MISSES_DOC: dict[str, str] = {
    DONTUNMAP_LOCKED_SCENARIO: DONTUNMAP_LOCKED,
    **{name: NOOP_SPLIT for name in NOOP_SCENARIOS},
    "memmove of an untouched page onto itself only reads it": SELF_MEMMOVE,
    "MADV_FREE of part of a THP shared with a child leaves it whole": SHARED_THP_FREE,
    "MADV_FREE of part of a shared THP, then the child exits and a write: the PMD moves whole": SHARED_THP_FREE,
}
