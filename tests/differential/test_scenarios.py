"""Every named scenario on Linux and on the simulator.

For each scenario three cases:

* ``test_linux_semantics``  the real kernel gives what the semantics document
  says (so the runner cannot pass by both backends being equally wrong);
* ``test_sim_equals_linux`` the simulator's record equals Linux's, step by
  step and page by page (errno, moved, state, huge, exclusive, contents and
  frame origin);
* ``test_sim_semantics``    the simulator gives what the document says; the
  only check left when the Linux backend is unavailable or disabled
  (REMAPGC_DISABLE_LINUX=1).
"""

from __future__ import annotations

import pytest

from .cases import cases, record
from .known import SIM_DIFFERS, SIM_MISSES_DOC
from .runner import differences, expectation_failures
from .scenarios import SCENARIOS, WAKE

ALL = SCENARIOS + WAKE
# Wake scenarios block threads in userfaults; everything is bounded anyway.
TIMEOUT = 60


def explain(scenario, problems: list[str]) -> str:
    return "\n".join([f"scenario {scenario.name!r} ({scenario.doc}):", *problems, "", scenario.as_data()])


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("scenario", cases(ALL, {}))
def test_linux_semantics(scenario):
    problems = expectation_failures(record("linux", scenario), scenario)
    assert not problems, explain(scenario, problems)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("scenario", cases(ALL, SIM_DIFFERS))
def test_sim_equals_linux(scenario):
    linux = record("linux", scenario)
    sim = record("sim", scenario)
    problems = differences(linux, sim)
    assert not problems, explain(scenario, problems)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("scenario", cases(ALL, SIM_MISSES_DOC))
def test_sim_semantics(scenario):
    problems = expectation_failures(record("sim", scenario), scenario)
    assert not problems, explain(scenario, problems)
