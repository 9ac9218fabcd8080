"""Embedding the heap imports the library only: nothing of the demo extra (rich, matplotlib,
structlog), which ``pip install .`` does not install, and whose import time and objects (CPython's
own gc.collect() walks them) a host would pay for.

Each case runs in a fresh interpreter and reads its sys.modules. How long the
import takes is measured by hand (``python -X importtime -c "import heap"``),
never asserted.
"""

from __future__ import annotations

import json

import pytest

from tests.packaging.checkout import run_python

DEMO_ONLY = ("rich", "matplotlib", "structlog")  # pyproject.toml's demo extra
REPORT_MODULES = "import json, sys; print(json.dumps(sorted(sys.modules)))"


@pytest.mark.parametrize("code", [
    "import heap",
    "from heap import Heap",
    "from heap import Heap\nwith Heap(kernel='sim', size=1 << 20) as h:\n    h.alloc(64)\n    h.collect()",
], ids=["import-heap", "from-heap-import-Heap", "a-sim-heap-life-cycle"])
def test_the_library_imports_no_demo_dependency(code):
    proc = run_python(f"{code}\n{REPORT_MODULES}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "heap" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in DEMO_ONLY)
    assert not heavy, f"imported by the library: {heavy[:10]}"
