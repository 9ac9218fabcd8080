"""The wheel built from the checkout: exactly the installed packages, all their subpackages, their
C sources and py.typed; and, installed non-editable in a fresh venv, a CLI that works away from the checkout.

The wheel is built once per module from a clean checkout of the current
commit (``git archive HEAD``; ``pip wheel . --no-deps``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.packaging.checkout import build_wheel, clean_copy, wheel_files

INSTALLED = {"heap", "uffd_backend", "sim_backend", "demos"}
EXTENSIONS = ["heap/_native", "sim_backend/_native"] + (["uffd_backend/_native"] if sys.platform == "linux" else [])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The checkout as a clone has it (compared with the wheel: the shared tree may change meanwhile)."""
    return clean_copy(tmp_path_factory.mktemp("wheel") / "src")


@pytest.fixture(scope="module")
def wheel(source) -> Path:
    return build_wheel(source, source.parent / "dist")


@pytest.fixture(scope="module")
def files(wheel) -> list[str]:
    return wheel_files(wheel)


def source_files(source: Path, pattern: str) -> list[str]:
    """Files of the installed packages in the source the wheel was built from."""
    return [path.relative_to(source).as_posix() for top in sorted(INSTALLED) for path in (source / top).rglob(pattern)]


@pytest.mark.timeout(600)
def test_top_level_import_names_are_the_library_and_the_cli_only(files, wheel):
    top = {PurePosixPath(name).parts[0].removesuffix(".py") for name in files if ".dist-info/" not in name}
    assert top == INSTALLED  # no bench, no tests
    (top_level,) = [name for name in files if name.endswith(".dist-info/top_level.txt")]
    with zipfile.ZipFile(wheel) as zf:
        assert set(zf.read(top_level).decode().split()) == INSTALLED


@pytest.mark.timeout(600)
def test_every_subpackage_is_in_the_wheel(files, source):
    packages = source_files(source, "__init__.py")
    assert "demos/lisp/__init__.py" in packages  # the lisp demo's package, missing from earlier wheels
    missing = sorted(set(packages) - set(files))
    assert not missing, f"packages of the checkout missing from the wheel: {missing}"
    modules = source_files(source, "*.py")
    assert not sorted(set(modules) - set(files))


@pytest.mark.timeout(600)
def test_py_typed_and_c_sources_ship(files, source):
    assert {f"{top}/py.typed" for top in INSTALLED} <= set(files)
    sources = source_files(source, "*.c") + source_files(source, "*.h")
    missing = sorted(set(sources) - set(files))
    assert not missing, f"C sources of the checkout missing from the wheel: {missing}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stem", EXTENSIONS)
def test_compiled_extensions_are_built_into_the_wheel(files, stem):
    assert any(name.startswith(stem + ".") and name.endswith(".so") for name in files), stem


def run_venv(bin_dir: Path, *argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# a collection on the library alone; prints the live objects and which demo-extra packages are importable
LIBRARY_ONLY = """
import importlib.util
from heap import Heap
with Heap(kernel="auto", size=4 << 20) as h:
    a = h.alloc(64, 1)
    a.set_ref(0, h.alloc(4096))
    live = h.collect().live_objects
print(live, [m for m in ("rich", "matplotlib", "structlog") if importlib.util.find_spec(m)])
"""


@pytest.mark.timeout(900)  # about 70 s here: most of it pip installing numpy, matplotlib and rich into the venv
def test_the_wheel_installed_in_a_fresh_venv_runs_the_cli_away_from_the_checkout(wheel, tmp_path):
    """The issue's acceptance: ``pip install remapgc-*.whl[demo]`` (not editable) in a new venv, then
    ``remapgc doctor`` and ``remapgc demo lisp --size small`` from a directory outside the checkout;
    before the extra, the library alone works (silently) and the command says what to install."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    away = tmp_path / "elsewhere"
    away.mkdir()
    # the library alone (`pip install .`): a heap works, silently, and the command names the missing extra
    install = run_venv(bin_dir, "python", "-m", "pip", "install", str(wheel), cwd=away, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    library = run_venv(bin_dir, "python", "-c", LIBRARY_ONLY, cwd=away)
    assert (library.returncode, library.stdout, library.stderr) == (0, "2 []\n", "")
    doctor = run_venv(bin_dir, "remapgc", "doctor", cwd=away)
    assert doctor.returncode == 2 and "pip install 'remapgc[demo]'" in doctor.stderr, doctor.stderr[-3000:]

    install = run_venv(bin_dir, "python", "-m", "pip", "install", f"{wheel}[demo]", cwd=away, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    where = run_venv(bin_dir, "python", "-c", "import heap, demos.lisp; print(heap.__file__)", cwd=away)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(env_dir)  # the installed copy, not the checkout
    assert run_venv(bin_dir, "python", "-c", "import bench", cwd=away).returncode != 0

    doctor = run_venv(bin_dir, "remapgc", "doctor", "--json", cwd=away)
    assert doctor.returncode == 0, doctor.stderr[-3000:]
    report = json.loads(doctor.stdout)
    assert report["auto_backend"] in ("linux", "sim")

    demo = run_venv(bin_dir, "remapgc", "demo", "lisp", "--size", "small", "--json", cwd=away)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    summary = json.loads(demo.stdout)
    assert summary["demo"] == "lisp" and summary["backend"] == report["auto_backend"]
    assert all(check["ok"] for check in summary["checks"]), summary["checks"]
