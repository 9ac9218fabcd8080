"""Known disagreements between the simulator and this kernel (the kernel wins).

Each entry maps a scenario name to the reason, which points into
tests/differential/DISAGREEMENTS.md; the scenario's test is then marked
xfail(strict=True), so the suite stays green while the sim is wrong and turns
red as soon as it is fixed (remove the entry then).

* ``SIM_DIFFERS``: the sim's record differs from Linux's (test_sim_equals_linux).
* ``SIM_MISSES_DOC``: the sim also breaks an expectation of the semantics
  document (test_sim_semantics).
"""

SELF_MEMMOVE = ("LinuxKernel.memmove is glibc's memmove: onto itself, a range of more than ~256 bytes has only "
                "its first vector read, so only its first page faults; the sim reads every page; see "
                "tests/differential/DISAGREEMENTS.md#memmove-of-several-pages-onto-themselves")
SELF_MEMMOVE_SCENARIO = "memmove of untouched pages onto themselves reads only the first (glibc)"

SIM_DIFFERS: dict[str, str] = {SELF_MEMMOVE_SCENARIO: SELF_MEMMOVE}
SIM_MISSES_DOC: dict[str, str] = {SELF_MEMMOVE_SCENARIO: SELF_MEMMOVE}
