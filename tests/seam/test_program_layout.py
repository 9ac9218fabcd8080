"""The install program and the page states are declared twice -- in
heap/kernel.py for Python, in heap/csrc/remapgc_program.h for C -- and every
compiled module built from the header is checked against the Python side at
import: a mismatch fails loudly, naming the value that differs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from heap.kernel import check_program_layout, compiled_program_layout, program_layout

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "heap" / "csrc" / "remapgc_program.h"


def _stamp_of(module) -> tuple[list[int], str]:
    return compiled_program_layout(module.ffi, module.lib)


def test_the_heaps_compiled_side_tables_were_built_with_the_declared_layout():
    import heap._native as native

    values, names = _stamp_of(native)
    check_program_layout(values, names, "heap._native")  # raises on any difference
    assert len(values) == len(program_layout()) and names.split()[-1] == "seg_len"


def test_the_linux_accelerator_was_built_with_the_declared_layout(linux_kernel):
    from uffd_backend import _native

    values, names = _stamp_of(_native)
    check_program_layout(values, names, "uffd_backend._native")  # raises on any difference
    assert len(values) == len(program_layout()) and names.split()[0] == "npages"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def import_linux_backend_after(edit: str) -> str:
    """What a fresh interpreter prints importing uffd_backend after running
    ``edit`` on heap.kernel (bound as ``k``): the ImportError, or "imported"."""
    child = run_python(f"""
        import heap.kernel as k
        {edit}
        try:
            import uffd_backend
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    return child.stdout


# A Python-side declaration edited without the header: importing the Linux backend must fail.
PYTHON_SIDE_EDITS = [
    ("fields_swapped", """k.PROGRAM_ARRAYS = dict(k.PROGRAM_ARRAYS, nslots=(("slot_off", "int64"), ("slot_page", "int64"),
                                                                 ("slot_val", "uint64")))""",
     "offsetof(struct rgc_program, slot_off) is 88 there, 80 here"),
    ("field_added", """k.PROGRAM_SCALARS = k.PROGRAM_SCALARS + ("generation",)""",
     "sizeof(struct rgc_program) is 136 there, 144 here"),
    ("page_state_renumbered", """k.PAGE_STATES = k.PAGE_STATES[:2] + (("PAGE_INSTALLED", 3),)""",
     "PAGE_INSTALLED is 2 there, 3 here"),
    ("version_bumped", "k.PROGRAM_LAYOUT_VERSION = 2", "PROGRAM_LAYOUT_VERSION is 1 there, 2 here"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("edit,message", [c[1:] for c in PYTHON_SIDE_EDITS], ids=[c[0] for c in PYTHON_SIDE_EDITS])
def test_a_mismatched_layout_fails_at_import_naming_the_difference(linux_kernel, edit, message):
    said = import_linux_backend_after(edit)
    assert "uffd_backend._native was built with another install-program layout" in said
    assert message in said


@pytest.mark.timeout(180)
def test_a_module_compiled_from_an_edited_header_is_refused(tmp_path):
    """The C side: a header whose fields were reordered compiles, and its
    stamp no longer matches heap.kernel's declaration."""
    edited = HEADER.read_text().replace("const int64_t *seg_page, *seg_off, *seg_src, *seg_len;",
                                        "const int64_t *seg_page, *seg_off, *seg_len, *seg_src;")
    assert edited != HEADER.read_text()
    (tmp_path / "remapgc_program.h").write_text(edited)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from cffi import FFI
        ffi = FFI()
        ffi.cdef("int64_t rgc_program_layout(int64_t *out, int64_t max); const char *rgc_program_field_names(void);")
        ffi.set_source("edited_layout", '#include "remapgc_program.h"', include_dirs=[{str(tmp_path)!r}])
        ffi.compile(tmpdir={str(tmp_path)!r})
        sys.path.insert(0, {str(tmp_path)!r})
        import edited_layout
        from heap.kernel import check_program_layout
        from heap.kernel import compiled_program_layout
        try:
            check_program_layout(*compiled_program_layout(edited_layout.ffi, edited_layout.lib), "edited_layout")
        except ImportError as exc:
            print(exc)
    """)], cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "edited_layout was built with another install-program layout" in child.stdout
    assert "offsetof(struct rgc_program, seg_src) is 128 there, 120 here" in child.stdout


def test_a_stamp_without_a_page_state_is_refused():
    """A module built before a value joined the stamp (here: the last page state)."""
    import heap._native as native

    values, names = _stamp_of(native)
    with pytest.raises(ImportError, match=r"PAGE_INSTALLED is missing there, 2 here"):
        check_program_layout(values[:-1], names, "old_module")


@pytest.mark.timeout(120)
def test_chunk_walk_outcomes_numbered_otherwise_fail_at_import(linux_kernel):
    """The walk reports how it ended as a number; heap.kernel.CHUNK_WALK_STATUS
    names the numbers. Two of them swapped on one side: the import says so."""
    said = import_linux_backend_after('k.CHUNK_WALK_STATUS = ("done", "stopped", "faulted", "refused")')
    assert ("numbers its chunk walk's outcomes ['done', 'stopped', 'refused', 'faulted'], heap.kernel "
            "['done', 'stopped', 'faulted', 'refused']") in said
