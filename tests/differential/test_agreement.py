"""khugepaged's signature in a Linux record (tests/differential/agreement.py):
a run it may have changed is rerun, not counted as a disagreement, so the
detector must see a collapse and must not see a step's own THP."""

from __future__ import annotations

import pytest

from .agreement import became_huge_elsewhere, labels_of
from .runner import PageRec, Record
from .steps import HPAGES, Background, Map, Move, Mremap, Read, Scenario, Write

SMALL = PageRec("present", False, True, "T+0", "0")
HUGE = PageRec("thp", True, True, "T+0#2", "0")


def _record(after_last: PageRec) -> Record:
    rec = Record()
    rec.snapshots = {"after step 0": {"T": [SMALL], "A": [SMALL]},
                     "after step 1": {"T": [after_last], "A": [SMALL]}}
    return rec


@pytest.mark.parametrize("step, suspected", [
    pytest.param(Write("A"), True, id="a write elsewhere: collapsed between steps"),
    pytest.param(Read("A+3"), True, id="a read elsewhere"),
    pytest.param(Write("T+7"), False, id="a write into the region may fault a THP in"),
    pytest.param(Move("T", "S", pages=HPAGES), False, id="a PMD moved into the region"),
    pytest.param(Mremap("S", HPAGES, "T"), False, id="a THP mremapped to the region"),
    pytest.param(Background("b", Write("T")), False, id="a step run in the background"),
])
def test_a_page_turning_huge_is_suspect_only_after_a_step_elsewhere(step, suspected):
    scenario = Scenario("s", (Map("T", HPAGES, thp=True), step))
    found = became_huge_elsewhere(scenario, _record(HUGE))
    assert bool(found) == suspected, found


def test_a_region_that_stays_small_is_not_suspect():
    scenario = Scenario("s", (Map("T", HPAGES, thp=True), Write("A")))
    assert became_huge_elsewhere(scenario, _record(SMALL)) == []


def test_labels_of_reads_every_address_field():
    assert labels_of(Move(("D+1", 5), "S+3")) == {"D", "S"}
    assert labels_of(Mremap("S+2", 4, "N", after="B")) == {"S", "N"}
