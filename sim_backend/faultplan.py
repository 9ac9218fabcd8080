"""Deterministic fault injection for the simulated kernel.

A ``FaultPlan`` is plain data: a list of ``FaultRule`` records plus a seed.
Each rule says *which* call of which ioctl it targets and *what* happens at
which page of it. The kernel consults the plan at every step of a
UFFDIO_MOVE / UFFDIO_COPY / UFFDIO_ZEROPAGE, and every rule that fires is
appended to ``plan.fired`` so that a failing run can be inspected and
replayed exactly (``FaultPlan.from_json(plan.to_json())`` on a fresh
``SimKernel`` with the same seed and call sequence fires the same rules).

Usage::

    k = SimKernel(seed=7)
    k.fault_plan.add(FaultRule("race", op="move", call=0, page=3))
    # the first UFFDIO_MOVE stops after 3 pages: UffdError(EAGAIN, moved=3*4096)

Outcomes (``FaultRule.outcome``), each named after what the caller sees:

``"race"``
    A transient race stops the operation at page ``page``: EAGAIN with
    ``moved = page * 4096`` (EAGAIN with moved 0 when ``page`` is 0, as for a
    contended lock reported to the caller).
``"dst_populated"``
    Just before the operation reaches page ``page``, another thread fills
    that destination page (a fresh zero-filled frame, as a concurrent
    UFFDIO_COPY of zeros would). The operation then meets it as Linux does:
    EEXIST, or EAGAIN with the progress made before it.
``"enomem"``
    Allocating a page table or page fails at page ``page``: ENOMEM, or EAGAIN
    with the progress made before it.
``"fatal_signal"``
    A fatal signal is pending when page ``page`` is reached: EINTR, or EAGAIN
    with the progress made before it (EINTR never hides another error).
``"mmap_changing"``
    A non-cooperative event (fork, mremap, madvise REMOVE, munmap) is queued
    when the call starts: EAGAIN with moved 0, nothing done (``page`` unused).
``"pinned"``
    The source page at ``page`` is found pinned (FOLL_PIN, e.g. by an
    io_uring fixed buffer): EBUSY, or EAGAIN with the progress before it.
    UFFDIO_MOVE only.
``"unreported_move"``
    The 6.18 accounting bug (semantics doc, section 4): the batch starting
    at page ``page`` is moved, but an internal EAGAIN left in ``err`` makes
    the loop retry the same address without counting it; the retry finds dst
    populated. The caller sees EEXIST (or EAGAIN with only the progress
    *before* ``page``) although the batch's pages were moved. UFFDIO_MOVE only.

Targeting: ``op`` is "move", "copy" or "zeropage". ``call`` is the 0-based
index among the calls of that op on this kernel (None: any call).
``probability`` (None: always) fires the rule on a matching call with that
chance, drawn from the plan's seeded generator; ``page=None`` then picks the
page uniformly in the call's range (also seeded). ``times`` bounds how often
the rule fires (None: unlimited).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

OUTCOMES = ("race", "dst_populated", "enomem", "fatal_signal", "mmap_changing", "pinned", "unreported_move")
OPS = ("move", "copy", "zeropage")
MOVE_ONLY = ("pinned", "unreported_move")


@dataclass
class FaultRule:
    outcome: str
    op: str = "move"
    call: int | None = None
    page: int | None = 0
    probability: float | None = None
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {OPS}")
        if self.outcome in MOVE_ONLY and self.op != "move":
            raise ValueError(f"outcome {self.outcome!r} applies to op 'move' only")
        if self.page is not None and self.page < 0:
            raise ValueError("page must be >= 0")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")


@dataclass
class Firing:
    """One rule that fired: which rule, on which call, at which page."""

    rule: int  # index into plan.rules
    outcome: str
    op: str
    call: int
    page: int


@dataclass
class Trigger:
    """A rule armed for one call: it fires when the cursor reaches ``page``."""

    rule: int
    outcome: str
    page: int


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    fired: list[Firing] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._fired_count = [0] * len(self.rules)
        self._calls: dict[str, int] = {}

    def add(self, rule: FaultRule) -> "FaultPlan":
        self.rules.append(rule)
        self._fired_count.append(0)
        return self

    def reset(self) -> None:
        """Forget what fired and the call counts, and reseed: replay from the start."""
        self.fired.clear()
        self._rng = random.Random(self.seed)
        self._fired_count = [0] * len(self.rules)
        self._calls.clear()

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        return {"seed": self.seed, "rules": [asdict(r) for r in self.rules]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "FaultPlan":
        return cls(rules=[FaultRule(**r) for r in data.get("rules", [])], seed=data.get("seed", 0))

    @classmethod
    def from_json(cls, text: str) -> "FaultPlan":
        return cls.from_dict(json.loads(text))

    # -- used by the kernel ------------------------------------------------------
    def arm(self, op: str, npages: int) -> tuple[int, list[Trigger]]:
        """Start call number n of ``op`` over ``npages`` pages: (n, the rules that will fire, by page)."""
        call = self._calls.get(op, 0)
        self._calls[op] = call + 1
        triggers = []
        for i, rule in enumerate(self.rules):
            if rule.op != op or (rule.call is not None and rule.call != call):
                continue
            if rule.times is not None and self._fired_count[i] >= rule.times:
                continue
            if rule.probability is not None and self._rng.random() >= rule.probability:
                continue
            page = rule.page if rule.page is not None else self._rng.randrange(max(npages, 1))
            if rule.outcome != "mmap_changing" and page >= npages:
                continue
            triggers.append(Trigger(i, rule.outcome, 0 if rule.outcome == "mmap_changing" else page))
        triggers.sort(key=lambda t: t.page)
        return call, triggers

    def record(self, trigger: Trigger, op: str, call: int) -> None:
        self._fired_count[trigger.rule] += 1
        self.fired.append(Firing(trigger.rule, trigger.outcome, op, call, trigger.page))
