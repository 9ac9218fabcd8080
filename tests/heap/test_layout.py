"""The shape of heap/: data flows one way, no module is too long to hold in
one's head, and nothing branches on which backend it runs on
(docs/design.md, "Layers")."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAP = Path(__file__).resolve().parents[2] / "heap"
MAX_LINES = 500
# Import edges allowed although they close a cycle, each with its reason (the list may only shrink):
# heap.kernel re-exports open_kernel & co. from heap.backends inside functions, for callers of the old names.
ALLOWED_CYCLE_EDGES = {("kernel", "backends")}
# Modules allowed to name a backend: heap.backends maps a requested name to a backend (its job).
MAY_NAME_BACKENDS = {"backends"}
# Modules that still reach into a Heap's privates (the list may only shrink):
# none (heap.weak gets what it needs from heap.embedding, a base of Heap).
MAY_TOUCH_HEAP_PRIVATES: set[str] = set()
HEAP_PRIVATE = re.compile(r"\b(heap|h)\._(?!(native|core)\b)[a-z]\w*")
BACKEND_BRANCH = re.compile(r"""\.name\s*[!=]=|[!=]=\s*["'](linux|sim)["']|["'](linux|sim)["']\s*[!=]=|"""
                            r"""isinstance\([^)]*(SimKernel|LinuxKernel|SimUffd|LinuxUffd)""")


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HEAP.glob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """heap modules ``path`` imports, anywhere in it (a function-local import is an edge too)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("heap"):
            parts = node.module.split(".")
            deps.update(parts[1:2] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("heap."))
    return {d for d in deps if d in known and d != path.stem}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {b for a, b in ALLOWED_CYCLE_EDGES if a == name}
            for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_heap_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_allowed_cycle_edges_still_exist():
    """An allowance whose edge is gone must go too (the list may only shrink)."""
    mods = modules()
    for a, b in ALLOWED_CYCLE_EDGES:
        assert a in mods and b in imports_of(mods[a], set(mods)), f"{a} -> {b} is gone: drop its allowance"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_heap_module_is_longer_than_the_limit(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"heap/{name}.py has {lines} lines (at most {MAX_LINES})"


def test_nothing_in_heap_branches_on_a_backend():
    offenders = [f"heap/{name}.py:{i}: {line.strip()}"
                 for name, path in modules().items() if name not in MAY_NAME_BACKENDS
                 for i, line in enumerate(path.read_text().splitlines(), 1) if BACKEND_BRANCH.search(line)]
    assert offenders == []


def test_no_module_but_runtime_touches_a_heap_private():
    offenders = [f"heap/{name}.py:{i}: {line.strip()}"
                 for name, path in modules().items() if name not in MAY_TOUCH_HEAP_PRIVATES | {"runtime"}
                 for i, line in enumerate(path.read_text().splitlines(), 1) if HEAP_PRIVATE.search(line)]
    assert offenders == []


def test_the_private_pattern_spares_the_compiled_modules():
    assert HEAP_PRIVATE.search("self.heap._ready()") and HEAP_PRIVATE.search("h._lock.acquire()")
    assert not HEAP_PRIVATE.search("import heap._native") and not HEAP_PRIVATE.search("heap._core is not built")


def test_the_backend_branch_pattern_catches_the_usual_spellings():
    for line in ('if k.name != "linux":', "if kernel.name == 'sim':", 'if "sim" == name:',
                 "isinstance(k, SimKernel)"):
        assert BACKEND_BRANCH.search(line), line
    assert not BACKEND_BRANCH.search('log.info("kernel_chosen", name=k.name)')


def test_importing_heap_and_its_seam_loads_neither_numpy_nor_the_collector():
    probe = ("import sys, heap; loaded = set(sys.modules); import heap.kernel; "
             "print(sorted(m for m in sys.modules if m.startswith('heap')), 'numpy' in loaded)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "heap.runtime" not in out.stdout and "heap.concurrent" not in out.stdout, out.stdout
    assert out.stdout.strip().endswith("False"), out.stdout  # `import heap` alone loads no numpy


def test_the_package_exports_exactly_its_documented_api():
    import heap

    api = set(heap.__all__)
    assert api == {"Heap", "Ref", "RefArray", "GCStats", "ConcurrentGCStats", "HeapStats", "HeapError", "HeapFull",
                   "HeapCorrupted", "HeapClosed", "CompactionAborted", "KernelUnsupported", "open_kernel",
                   "ObjectModel", "DefaultObjectModel", "DEFAULT_MODEL", "RootScanner",
                   "MutatorHooks", "CollectionInfo", "HookReentry", "WeakRef", "BackgroundCollection"}
    assert set(dir(heap)) == api
    for name in api:
        assert getattr(heap, name) is not None
        assert f"``{name}``" in heap.__doc__, f"{name} is not documented in heap/__init__.py"
