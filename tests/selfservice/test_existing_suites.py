"""The existing concurrent tests, run once in each fault mode (the plugins
tests/selfservice/self_mode.py and thread_mode.py turn every heap's default,
"auto", into that mode; a test that asks for a mode keeps it), in a child
pytest under a timeout. The whole runs (tests/concurrent and
tests/reliability) are ``python -m pytest -p tests.selfservice.self_mode
tests/concurrent tests/reliability`` and the same with ``thread_mode``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["self_mode", "thread_mode"], ids=["self-served", "handler thread"])
def test_the_concurrent_tests_pass_in_each_fault_mode(mode):
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", f"tests.selfservice.{mode}", "-q", "-p",
                          "no:cacheprovider", "--timeout", "120", "tests/concurrent/test_concurrent.py",
                          "tests/concurrent/test_outcomes.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout
