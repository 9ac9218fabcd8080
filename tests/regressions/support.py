"""Shared pieces of the issue-16 regression tests.

``run_child(scenario, *args)`` runs one scenario of ``tests/regressions/child.py``
in a fresh interpreter with a hard timeout, so a test of a defect that hangs
(a userfault nobody serves, a lock never released) fails instead of blocking
the run, and no process is left behind: ``subprocess.run`` kills the child on
timeout. Inside the child a faulthandler watchdog dumps every thread's stack
and exits first, so a hang shows where it stuck.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CHILD_WATCHDOG_S = 60  # the child's own faulthandler exit
HARD_TIMEOUT_S = CHILD_WATCHDOG_S + 30


class ChildFailed(AssertionError):
    pass


def run_child(scenario: str, *args: str, timeout: float = HARD_TIMEOUT_S) -> dict:
    """The JSON the child printed last; ChildFailed with its output otherwise."""
    env = dict(os.environ, REMAPGC_CHILD_WATCHDOG=str(min(CHILD_WATCHDOG_S, timeout - 10)))
    cmd = [sys.executable, "-m", "tests.regressions.child", scenario, *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"{' '.join(cmd[2:])}: no answer in {timeout} s (killed)\n{_tail(exc.stderr)}") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise ChildFailed(f"{' '.join(cmd[2:])}: exit {proc.returncode}, no result\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}")


def _tail(text, n: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def pattern(i: int, n: int) -> bytes:
    """The bytes object ``i`` of a test holds: different for every object."""
    return (np.arange(n, dtype=np.int64) * 7 + i * 131 + 1).astype(np.uint8).tobytes()

