"""Shared pieces of the demo tests: running the CLI in-process and reading its JSON."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys

import pytest


@pytest.fixture(autouse=True)
def restore_logging():
    """``remapgc`` configures logging (the CLI's job: a handler and a level on the
    ``remapgc`` logger); undo it for the tests that follow."""
    events = logging.getLogger("remapgc")
    handlers, level, propagate = list(events.handlers), events.level, events.propagate
    yield
    events.handlers[:] = handlers
    events.setLevel(level)
    events.propagate = propagate


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``remapgc ARGV`` in this process: (exit code, stdout, stderr)."""
    from demos.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_demo_json(capsys, name: str, backend: str, *extra: str) -> tuple[int, dict]:
    code, out, err = run_cli(capsys, "demo", name, "--size", "small", "--backend", backend, "--json", *extra)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"--json printed something else on stdout:\n{out}\n--- stderr ---\n{err}") from exc


def run_demo_subprocess(name: str, backend: str, *extra: str, timeout: float = 300) -> tuple[int, dict, str]:
    """The demo in a child process (for demos with threads that could hang): (exit code, JSON, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "demos.cli", "demo", name, "--size", "small", "--backend", backend, "--json", *extra],
        capture_output=True, text=True, timeout=timeout,
    )
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stderr
    except json.JSONDecodeError as exc:
        raise AssertionError(f"exit {proc.returncode}; stdout:\n{proc.stdout}\n--- stderr ---\n{proc.stderr}") from exc


def failed_checks(summary: dict) -> list[str]:
    return [f"{c['name']}: {c['detail']}" for c in summary["checks"] if not c["ok"]]


@functools.lru_cache(maxsize=None)
def concurrent_collection_missing() -> str | None:
    """Why this build's heap cannot ``collect(concurrent=True)`` (issue 5), or None when it can."""
    from demos.concurrent import concurrent_unavailable
    from heap import Heap

    with Heap(kernel="sim", size=1 << 20) as heap:
        return concurrent_unavailable(heap)
