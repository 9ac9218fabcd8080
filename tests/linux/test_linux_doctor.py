"""`remapgc doctor` on this machine: it finds userfaultfd, a working MOVE, and picks Linux."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from heap import doctor


@pytest.fixture(scope="module")
def report():
    return doctor.report()


def test_doctor_finds_move_working_and_auto_picks_linux(linux_kernel, report):
    assert report["move_works"] is True
    assert report["move_offered"] is True
    assert report["auto_backend"] == "linux"
    assert report["pagemap_frames_visible"] is True
    assert report["kernel_release"] == __import__("os").uname().release


def test_doctor_reports_every_userfaultfd_path(linux_kernel, report):
    paths = report["userfaultfd_paths"]
    assert len(paths) == 4
    assert any(p["ok"] for p in paths.values())
    assert report["vm_unprivileged_userfaultfd"] in (0, 1)
    assert report["thp"]["enabled"] in ("always", "madvise", "never")


@pytest.mark.timeout(120)
def test_doctor_json_cli_prints_only_json(linux_kernel):
    out = subprocess.run([sys.executable, "-m", "heap.doctor", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["move_works"] is True


@pytest.mark.timeout(120)
def test_doctor_explains_a_disabled_linux_backend(linux_kernel):
    env = dict(__import__("os").environ, REMAPGC_DISABLE_LINUX="1")
    out = subprocess.run([sys.executable, "-m", "heap.doctor", "--json"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["move_works"] is False
    assert "REMAPGC_DISABLE_LINUX" in rep["move_detail"]
    assert rep["auto_backend"] != "linux"


@pytest.mark.timeout(120)
def test_doctor_table_names_the_chosen_backend(linux_kernel):
    out = subprocess.run([sys.executable, "-m", "demos.cli", "doctor"], capture_output=True, text=True, timeout=60,
                         env=dict(__import__("os").environ, COLUMNS="200"))
    assert out.returncode == 0, out.stderr
    assert "UFFDIO_MOVE works" in out.stdout and "linux" in out.stdout
