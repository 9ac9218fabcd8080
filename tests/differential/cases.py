"""Turning scenarios into pytest cases, and recording each once per backend."""

from __future__ import annotations

import re

import pytest

from tests.backends import make_kernel

from .runner import Record, run_scenario


def case_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9=+.<>-]+", "_", name).strip("_")


def cases(scenarios, known: dict[str, str]):
    """``pytest.param`` per scenario, xfail(strict) where ``known`` says so."""
    out = []
    for sc in scenarios:
        marks = []
        if sc.name in known:
            marks.append(pytest.mark.xfail(strict=True, reason=known[sc.name]))
        out.append(pytest.param(sc, id=case_id(sc.name), marks=marks))
    return out


_records: dict[tuple[str, str], Record] = {}


def record(backend: str, scenario) -> Record:
    """The scenario's record on ``backend`` (run once per session; the Linux
    side skips with the reason when the real kernel cannot run it)."""
    key = (backend, scenario.name)
    if key not in _records:
        kernel = make_kernel(backend)
        _records[key] = run_scenario(kernel, scenario)
    return _records[key]
