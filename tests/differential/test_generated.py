"""Random call sequences run on both backends (hypothesis).

``test_generated_sequences_match_linux``: each generated sequence runs on
LinuxKernel and on a fresh SimKernel, with a snapshot of every page after
every step; any difference fails with the shrunk sequence printed as
scenario data, ready to paste into scenarios.py as a named scenario.

``test_generated_sequences_sim_consistent``: the checks left when Linux is
unavailable: the simulator is deterministic (same sequence, same record) and
every move/copy/zeropage outcome follows the kernel's return convention.

REMAPGC_DIFF_EXAMPLES sets the number of sequences (default 500).
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, note, settings

from tests.backends import make_kernel

from .generator import scenarios
from .runner import differences, run_scenario

EXAMPLES = int(os.environ.get("REMAPGC_DIFF_EXAMPLES", "500"))
SIM_ONLY_EXAMPLES = max(1, EXAMPLES // 2)

common = dict(
    deadline=None,
    derandomize=True,  # the same sequences on every run: CI stays reproducible
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def reproducer(scenario, problems) -> str:
    return "\n".join(["the simulator differs from Linux on this sequence:", *problems,
                      "", "as a named scenario:", scenario.as_data()])


@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES, **common)
@given(scenario=scenarios())
def test_generated_sequences_match_linux(linux_kernel, scenario):
    note(scenario.as_data())
    linux = run_scenario(linux_kernel, scenario, snapshot_every_step=True)
    sim = run_scenario(make_kernel("sim"), scenario, snapshot_every_step=True)
    problems = differences(linux, sim)
    assert not problems, reproducer(scenario, problems)


UFFD_CALL = re.compile(r"^(Move|Copy|Zeropage)\(")
OUTCOME = re.compile(r"^(?:ok (?P<done>\d+)|(?P<err>E[A-Z]+) moved=(?P<moved>\d+)|(?P<plain>E[A-Z]+))$")


def requested_length(step_source: str) -> int:
    pages = re.search(r"pages=(\d+)", step_source)
    return 4096 * int(pages.group(1)) if pages else 4096


def convention_violations(record) -> list[str]:
    """Move/copy/zeropage results that break section 4 of the semantics doc."""
    out = []
    for source, outcome in record.outcomes:
        if not UFFD_CALL.match(source):
            continue
        length = requested_length(source)
        m = OUTCOME.match(outcome)
        if m is None:
            out.append(f"{source}: unexpected outcome {outcome!r}")
        elif m["done"] is not None and int(m["done"]) != length:
            out.append(f"{source}: success must return the length {length}, got {outcome!r}")
        elif m["err"] is not None:
            moved = int(m["moved"])
            if moved and not (m["err"] == "EAGAIN" and 0 < moved < length and moved % 4096 == 0):
                out.append(f"{source}: progress is only ever reported as EAGAIN with 0 < moved < len: {outcome!r}")
        elif m["plain"] is not None:
            out.append(f"{source}: a uffd ioctl must raise UffdError, got plain {outcome!r}")
    return out


@pytest.mark.timeout(600)
@settings(max_examples=SIM_ONLY_EXAMPLES, **common)
@given(scenario=scenarios())
def test_generated_sequences_sim_consistent(scenario):
    note(scenario.as_data())
    first = run_scenario(make_kernel("sim"), scenario, snapshot_every_step=True)
    again = run_scenario(make_kernel("sim"), scenario, snapshot_every_step=True)
    problems = differences(first, again, names=("sim run 1", "sim run 2"))
    problems += convention_violations(first)
    assert not problems, reproducer(scenario, problems)
