"""The project checkout, and fresh interpreters and builds made from it (shared by the packaging tests)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a clean clone does not have: build products of an editable install and caches.
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.pyc",
                                        ".pytest_cache", ".hypothesis", ".notes", "results")


def run_python(code: str, *args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (no logging configured, nothing imported yet): its exit code
    and both output streams."""
    return subprocess.run([sys.executable, *args, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def clean_copy(dest: Path) -> Path:
    """A clean checkout of the current commit at ``dest`` (``git archive HEAD``): what a fresh clone has,
    without build products or work in progress, and a build there leaves nothing in the shared tree."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:  # not a git checkout (an unpacked sdist): leave out what a clone would not have
        dest.rmdir()
        shutil.copytree(ROOT, dest, ignore=NOT_IN_A_CLONE)
        return dest
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest)
    return dest


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel SOURCE --no-deps -w OUT``: the one wheel it builds."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("remapgc-*.whl")
    return wheel


def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()
