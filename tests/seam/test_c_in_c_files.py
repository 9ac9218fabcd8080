"""C lives in .c/.h files: a cffi builder holds at most a short cdef in a Python
string, so compiler errors carry file names and line numbers and C tools see the C."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = sorted(p for pkg in ("heap", "uffd_backend", "sim_backend") for p in (ROOT / pkg).glob("_*build.py"))
MAX_LINES = 100


def test_every_package_with_c_has_a_builder():
    assert {p.parent.name for p in BUILDERS} == {"heap", "uffd_backend", "sim_backend"}


@pytest.mark.parametrize("builder", BUILDERS, ids=[f"{p.parent.name}/{p.name}" for p in BUILDERS])
def test_no_long_c_source_in_a_python_string(builder):
    strings = [n for n in ast.walk(ast.parse(builder.read_text()))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    long = [(n.lineno, n.value.count("\n")) for n in strings if n.value.count("\n") > MAX_LINES]
    assert not long, f"{builder.name}: strings of more than {MAX_LINES} lines at (line, lines) {long}"

