"""Comparing one generated sequence on Linux and on the simulator, with
khugepaged taken out of the verdict.

khugepaged (THP ``madvise`` mode: MADV_HUGEPAGE regions only) scans every few
seconds and may collapse a region into a THP between two steps on Linux; the
simulator has no khugepaged. Such a run is recognised two ways:

* in the record: a page became PMD-mapped after a step that did not address
  its region at all (no step can make a page huge from elsewhere);
* by the kernel's count of pages khugepaged collapsed
  (/sys/kernel/mm/transparent_hugepage/khugepaged/pages_collapsed), which
  moved during the run. It is system-wide, so another process can move it
  too: that only costs a rerun.

A disagreeing run with either sign is rerun (both backends, from scratch)
instead of being counted as a disagreement; one that still disagrees after
the reruns is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from . import steps as S
from .runner import Record, differences, run_scenario

COLLAPSED = "/sys/kernel/mm/transparent_hugepage/khugepaged/pages_collapsed"
RERUNS = 3


def pages_collapsed() -> int | None:
    """Pages khugepaged has collapsed since boot (None where the kernel does not say)."""
    try:
        with open(COLLAPSED) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def labels_of(step: S.Step) -> set[str]:
    """The regions a step addresses (by label)."""
    out: set[str] = set()
    for f in fields(step):
        value = getattr(step, f.name)
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, S.Step):
            out |= labels_of(value)
        elif isinstance(value, str) and f.name in ("at", "dst", "src", "label", "new"):
            out.add(value.partition("+")[0])
    return out


def became_huge_elsewhere(scenario: S.Scenario, record: Record) -> list[str]:
    """Pages that turned PMD-mapped after a step that did not address their region
    (the per-step snapshots of ``snapshot_every_step``): khugepaged's signature."""
    out = []
    previous: dict = {}
    for index, step in enumerate(scenario.steps):
        snap = record.snapshots.get(f"after step {index}")
        if snap is None:
            continue
        touched = labels_of(step)
        for key, pages in snap.items():
            label = key.partition("+")[0]
            before = previous.get(key, [])
            for i, page in enumerate(pages):
                was_huge = i < len(before) and before[i].huge
                if page.huge and not was_huge and label not in touched:
                    out.append(f"{key} page {i} became huge after step {index} {step.as_data()}")
                    break
        previous = snap
    return out


@dataclass
class Comparison:
    problems: list = field(default_factory=list)  # differences of the last run ([] = agreed)
    reruns: int = 0  # runs discarded because khugepaged may have collapsed something
    signs: list = field(default_factory=list)  # why each discarded run was suspected

    @property
    def agreed(self) -> bool:
        return not self.problems


def compare(scenario: S.Scenario, make_linux, make_sim, reruns: int = RERUNS) -> Comparison:
    """Run ``scenario`` on a kernel from each factory (snapshots after every step)
    and compare; a disagreement khugepaged may explain is rerun up to ``reruns`` times."""
    result = Comparison()
    for attempt in range(reruns + 1):
        before = pages_collapsed()
        linux = run_scenario(make_linux(), scenario, snapshot_every_step=True)
        after = pages_collapsed()
        sim = run_scenario(make_sim(), scenario, snapshot_every_step=True)
        result.problems = differences(linux, sim)
        if result.agreed:
            return result
        signs = became_huge_elsewhere(scenario, linux)
        if before != after:
            signs.append(f"khugepaged collapsed {after - before} page(s) (system-wide) during the Linux run")
        if not signs or attempt == reruns:
            return result
        result.reruns += 1
        result.signs += signs
    return result
