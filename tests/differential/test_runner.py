"""The differential runner itself: if it recorded too little, sim == Linux
would prove nothing. These check that it sees what it must see."""

from __future__ import annotations

import pytest

from bench.wrappers import KernelWrapper, UffdWrapper
from heap.kernel import HPAGE_SIZE, PAGE_SIZE

from .runner import (
    PageRec,
    Record,
    RegionDef,
    content_tag,
    differences,
    expectation_failures,
    layout,
    pattern,
    run_scenario,
)
from .scenarios import SCENARIOS, WAKE
from .steps import DONTNEED, Madvise, Map, Move, Pages, Register, Uffd, Write, scenario

HP = HPAGE_SIZE // PAGE_SIZE


def test_layout_gives_each_region_its_own_aligned_slot_and_chains_adjacent_ones():
    offsets, total = layout([RegionDef("S", 8), RegionDef("T", 4, after="S"), RegionDef("D", HP + 1, offset=3)])
    assert offsets["S"] % HP == 0
    assert offsets["T"] == offsets["S"] + 8  # adjacent: the two VMAs may merge
    assert offsets["D"] % HP == 3
    assert offsets["D"] >= offsets["T"] + 4 + HP  # at least 2 MiB of gap between slots
    assert total >= offsets["D"] + HP + 1 + HP


def test_layout_rejects_a_region_placed_after_an_unknown_one():
    with pytest.raises(ValueError, match="unknown region"):
        layout([RegionDef("T", 4, after="nope")])


@pytest.mark.parametrize("tag", ["S+0/1", "D+511/1024", "N+3#2/7"])
def test_content_tag_reads_back_the_written_pattern(tag):
    assert content_tag(pattern(tag)) == tag


def test_content_tag_tells_zeros_and_foreign_bytes_apart():
    assert content_tag(bytes(PAGE_SIZE)) == "0"
    torn = bytearray(pattern("S+0/1"))
    torn[-1] ^= 0xFF  # one byte differs: not the pattern any more
    assert content_tag(bytes(torn)).startswith("?")


def _record(outcome: str, origin: str) -> Record:
    rec = Record()
    rec.outcomes.append(("Move(dst='D', src='S')", outcome))
    rec.final = {"D": [PageRec("present", False, True, origin, "S+0/1")]}
    return rec


@pytest.mark.parametrize("other, what", [
    (_record("EAGAIN moved=4096", "S+0"), "step 0"),
    (_record("ok 4096", "D+0"), "D+0"),
])
def test_differences_reports_a_changed_outcome_or_frame_origin(other, what):
    problems = differences(_record("ok 4096", "S+0"), other)
    assert len(problems) == 1 and what in problems[0]


def test_every_scenario_checks_something_from_the_semantics_document():
    for sc in SCENARIOS + WAKE:
        assert sc.expect or sc.pages, f"{sc.name} states no expectation"
        assert sc.doc, f"{sc.name} names no row of the semantics document"


def test_there_are_at_least_sixty_named_scenarios():
    assert len(SCENARIOS) + len(WAKE) >= 60


# --- on each backend -------------------------------------------------------------------
REUSE = scenario(
    "a frame freed and reused elsewhere gets a fresh origin name",
    Map("S", 8), Map("D", 8), *[Write("S", 8), Madvise("S", 8, DONTNEED)] * 3, Write("D", 8),
    pages=[Pages("D", 8, state="present", origin="D+0"), Pages("S", 8, state="none")], doc="runner")


def test_frame_origins_survive_frame_reuse(kernel):
    # Linux hands freed frames out again (often at once); the sim may not.
    # Either way a page written after the frees must be named after itself.
    problems = expectation_failures(run_scenario(kernel, REUSE), REUSE)
    assert not problems


def test_a_wrong_expectation_is_reported(kernel):
    wrong = scenario("wrong", Map("S", 8), Map("D", 8), Uffd(), Register("D", 8), Write("S"),
                     Move("D", "S", tag="mv"), expect={"mv": "EBUSY moved=0"},
                     pages=[Pages("D", 1, origin="D+0")])
    problems = expectation_failures(run_scenario(kernel, wrong), wrong)
    assert any("expected 'EBUSY moved=0', got 'ok 4096'" in p for p in problems)
    assert any("expected frame of D+0" in p and "frame=S+0" in p for p in problems)


class _StuckUffd(UffdWrapper):
    def __init__(self, inner, release):
        super().__init__(inner)
        self.release = release

    def move(self, dst, src, length, mode=0):
        self.release.wait(30)  # a backend blocking where Linux would not
        return super().move(dst, src, length, mode)


class _StuckMoveKernel(KernelWrapper):
    def __init__(self, inner, release):
        super().__init__(inner)
        self.release = release

    def wrap_uffd(self, uffd):
        return _StuckUffd(uffd, self.release)


@pytest.mark.timeout(60)
def test_a_step_that_blocks_is_recorded_as_hung_and_stops_the_scenario(monkeypatch, sim_kernel):
    import threading

    from . import runner

    monkeypatch.setattr(runner, "STEP_TIMEOUT", 0.5)
    sc = scenario("stuck", Map("S", 8), Map("D", 8), Uffd(), Register("D", 8), Write("S"),
                  Move("D", "S", tag="mv"), Write("S+1", tag="after"))
    release = threading.Event()
    try:
        stuck = run_scenario(_StuckMoveKernel(sim_kernel, release), sc)
    finally:
        release.set()
    assert stuck.tagged["mv"].startswith("hung") and stuck.aborted
    assert "after" not in stuck.tagged  # nothing is observed after a hang
    fine = run_scenario(type(sim_kernel)(), sc)
    assert any("hung" in p for p in differences(fine, stuck, names=("sim", "stuck")))
