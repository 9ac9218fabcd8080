"""remapgc is silent unless its host asks, and shows its events when it does.

A heap's life cycle (alloc, a stop-the-world and a concurrent collection,
close) runs in a fresh interpreter: with no logging configured it writes
nothing to stdout or stderr; with ``logging.basicConfig(level=logging.DEBUG)``
its events appear under ``remapgc`` logger names. An event whose level is
disabled is never formatted.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from heap import events
from tests.packaging.checkout import ROOT

COLLECTIONS = 2  # the life cycle's stop-the-world and concurrent collections


def run_life_cycle(backend: str, tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "tests.packaging.lifecycle_script", backend, str(result), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = json.loads(result.read_text())
    assert ran["backend"] == backend and ran["whole"] and ran["live"] == [200, 200]
    return proc, ran


@pytest.mark.timeout(300)
def test_a_life_cycle_writes_nothing_to_stdout_or_stderr(kernel_name, tmp_path):
    proc, _ = run_life_cycle(kernel_name, tmp_path)
    assert proc.stdout == ""
    assert proc.stderr == ""


@pytest.mark.timeout(300)
def test_a_host_that_configures_logging_sees_the_events_under_remapgc(kernel_name, tmp_path):
    proc, _ = run_life_cycle(kernel_name, tmp_path, "--log-debug")
    assert proc.stdout == ""  # events go where the host's logging sends them (basicConfig: stderr)
    lines = [line.split(" ", 2) for line in proc.stderr.splitlines()]
    assert lines, "no events with logging configured at DEBUG"
    names = {line[0] for line in lines}
    assert all(name == "remapgc" or name.startswith("remapgc.") for name in names), names
    assert "remapgc.heap" in names
    collections = [line for line in lines if len(line) == 3 and line[2].startswith("gc_done ")]
    assert len(collections) == COLLECTIONS, proc.stderr[-3000:]
    assert all(line[1] in ("DEBUG", "INFO") and "live_objects=200" in line[2] for line in collections)


class Unprintable:
    """A field value that fails the test if anything formats it."""

    def __str__(self):
        raise AssertionError("a disabled event was formatted")

    __repr__ = __format__ = __str__


@pytest.fixture
def formatted(monkeypatch) -> list[str]:
    """Every event message formatted from now on (events._Message.__str__ counted)."""
    calls: list[str] = []
    render = events._Message.__str__

    def counting(message):
        text = render(message)
        calls.append(text)
        return text

    monkeypatch.setattr(events._Message, "__str__", counting)
    return calls


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def remapgc_logger():
    """The ``remapgc`` logger, restored after the test (its level, its handlers)."""
    logger = logging.getLogger(events.ROOT)
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_a_disabled_event_is_never_formatted(formatted, remapgc_logger):
    remapgc_logger.setLevel(logging.INFO)
    log = events.get_logger("remapgc.test")
    log.debug("gc_phase", phase="mark", value=Unprintable())
    assert formatted == []
    # the same event enabled and handled is formatted, by its handler
    handler = Collect()
    remapgc_logger.addHandler(handler)
    remapgc_logger.setLevel(logging.DEBUG)
    log.debug("gc_phase", phase="mark", ns=12)
    assert handler.lines == ["gc_phase phase=mark ns=12"]
    # each handler formats it once (pytest's own capture handlers, on this logger too, do as well)
    assert formatted and set(formatted) == {"gc_phase phase=mark ns=12"}


def test_the_heaps_own_events_are_not_formatted_unless_enabled(formatted, remapgc_logger):
    from heap import Heap

    def cycle():
        with Heap(kernel="sim", size=4 << 20) as heap:
            keep = [heap.alloc(64, 1) for _ in range(50)]
            heap.alloc(4096)
            heap.collect()
            assert len(keep) == 50

    cycle()  # NullHandler only: every event disabled
    assert formatted == []
    handler = Collect()
    remapgc_logger.addHandler(handler)
    remapgc_logger.setLevel(logging.DEBUG)
    cycle()
    assert formatted and any(line.startswith("gc_done ") for line in handler.lines)
