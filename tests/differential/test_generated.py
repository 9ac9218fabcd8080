"""Random call sequences run on both backends (hypothesis).

``test_generated_sequences_match_linux``: each generated sequence runs on
LinuxKernel and on a fresh SimKernel, with a snapshot of every page after
every step; any difference fails with the shrunk sequence printed as
scenario data, ready to paste into scenarios.py as a named scenario. A
difference khugepaged may have caused (tests/differential/agreement.py) is
rerun first, not counted. Thousands more, longer ones: soak.py.

``test_generated_sequences_sim_consistent``: the checks left when Linux is
unavailable: the simulator is deterministic (same sequence, same record) and
every move/copy/zeropage outcome follows the kernel's return convention.

``test_generator_finds_and_shrinks_an_injected_bug``: the generator is able
to fail at all: against a sim whose MOVE says EINVAL where it should say
ENOENT, it finds a sequence and shrinks it to three steps.

REMAPGC_DIFF_EXAMPLES sets the number of sequences (default 500).
"""

from __future__ import annotations

import errno
import os
import re

import pytest
from hypothesis import HealthCheck, given, note, settings

from bench.wrappers import KernelWrapper, UffdWrapper
from heap.kernel import UffdError
from tests.backends import make_kernel

from .agreement import compare
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


def reproducer(scenario, problems, what: str = "the simulator differs from Linux") -> str:
    return "\n".join([f"{what} on this sequence:", *problems,
                      "", "as a named scenario:", scenario.as_data()])


@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES, **common)
@given(scenario=scenarios())
def test_generated_sequences_match_linux(linux_kernel, scenario):
    note(scenario.as_data())
    result = compare(scenario, lambda: linux_kernel, lambda: make_kernel("sim"))
    if result.reruns:
        note(f"rerun {result.reruns} time(s), khugepaged suspected: {result.signs}")
    assert result.agreed, reproducer(scenario, result.problems)


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
    assert not problems, reproducer(scenario, problems, "the simulator is inconsistent")


# --- the generator can find a difference at all --------------------------------------
class _EnoentAsEinval(UffdWrapper):
    """A uffd whose MOVE reports EINVAL where the kernel says ENOENT."""

    def move(self, dst, src, length, mode=0):
        try:
            return self.inner.move(dst, src, length, mode)
        except UffdError as exc:
            if exc.errno == errno.ENOENT:
                raise UffdError(errno.EINVAL, moved=exc.moved) from None
            raise


class MutantSim(KernelWrapper):
    """A SimKernel with one deliberate bug, to show the generator catches it."""

    def __init__(self):
        super().__init__(make_kernel("sim"))

    def wrap_uffd(self, uffd):
        return _EnoentAsEinval(uffd)


@pytest.mark.timeout(600)
def test_generator_finds_and_shrinks_an_injected_bug():
    @settings(max_examples=300, **common)
    @given(scenario=scenarios(max_steps=6, thp=False))
    def sim_vs_mutant(scenario):
        good = run_scenario(make_kernel("sim"), scenario)
        bad = run_scenario(MutantSim(), scenario)
        problems = differences(good, bad, names=("sim", "mutant"))
        assert not problems, reproducer(scenario, problems, "the mutant differs from the sim")

    with pytest.raises(AssertionError) as caught:
        sim_vs_mutant()
    message = str(caught.value)
    assert "!= mutant 'EINVAL" in message and "as a named scenario:" in message
    body = message.split("as a named scenario:")[1]
    # shrunk: after the fixed prefix (which ends registering C), only the
    # three steps (min_size is 3) of which one is a move hitting ENOENT
    tail = body.split("Register(at='C', pages=8),")[1].splitlines()
    generated = [line for line in tail if line.strip().endswith("),")]
    assert len(generated) == 3 and any(line.strip().startswith("Move(") for line in generated), message
