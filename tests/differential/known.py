"""Known disagreements between the simulator and this kernel (the kernel wins).

Each entry maps a scenario name to the reason, which points into
tests/differential/DISAGREEMENTS.md; the scenario's test is then marked
xfail(strict=True), so the suite stays green while the sim is wrong and turns
red as soon as it is fixed (remove the entry then).

* ``SIM_DIFFERS``: the sim's record differs from Linux's (test_sim_equals_linux).
* ``SIM_MISSES_DOC``: the sim also breaks an expectation of the semantics
  document (test_sim_semantics).
"""

SIM_DIFFERS: dict[str, str] = {}
SIM_MISSES_DOC: dict[str, str] = {}
