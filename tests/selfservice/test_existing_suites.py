"""The existing concurrent tests, run self-serving (tests/selfservice/self_mode.py
makes every heap's default fault mode "self"), in a child pytest under a
timeout. Deselected: the one that checks the handler-thread mode's own
thread (a self-serving cycle has none). The whole run (tests/concurrent and
tests/reliability) is ``python -m pytest -p tests.selfservice.self_mode
tests/concurrent tests/reliability``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THREAD_MODE_ONLY = "test_close_during_a_cycle_leaves_no_thread_and_no_blocked_mutator"


@pytest.mark.timeout(300)
def test_the_concurrent_tests_pass_with_self_served_faults():
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.selfservice.self_mode", "-q", "-p",
                          "no:cacheprovider", "--timeout", "120", "tests/concurrent/test_concurrent.py",
                          "tests/concurrent/test_outcomes.py", "-k", f"not {THREAD_MODE_ONLY}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout
