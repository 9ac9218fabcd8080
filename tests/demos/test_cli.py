"""The `remapgc demo` command line: listing, usage errors, backend choice and its fallback message."""

import json
import subprocess
import sys

import pytest
from rich.console import Console

from demos.cli import build_parser, resolve_backend
from demos.registry import DEMOS
from tests.demos.conftest import run_cli

DISABLE = "REMAPGC_DISABLE_LINUX"


def test_list_names_every_demo_with_its_description(capsys):
    code, out, _ = run_cli(capsys, "demo", "--list")
    assert code == 0
    assert set(DEMOS) == {"fragmentation", "lisp", "concurrent", "bigarrays"}
    for spec in DEMOS.values():
        assert spec.name in out
        assert spec.description.split()[0] in out


@pytest.mark.parametrize("argv", [["demo"], ["demo", "no-such-demo"]], ids=["no-name", "unknown-name"])
def test_usage_errors_exit_2_and_point_to_the_list(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert "remapgc demo --list" in out + err


def test_auto_falls_back_to_the_simulator_and_says_why(monkeypatch):
    monkeypatch.setenv(DISABLE, "1")
    console = Console(record=True, width=200)
    backend, reason = resolve_backend("auto", console)
    assert backend == "sim"
    assert reason.startswith("falling back to the simulator because")
    text = console.export_text()
    assert "falling back to the simulator because" in text
    assert DISABLE in text
    assert "(run `remapgc doctor`)" in text


def test_linux_backend_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv(DISABLE, "1")
    console = Console(record=True, width=200)
    assert resolve_backend("linux", console) is None
    text = console.export_text()
    assert "Linux backend is unavailable" in text and "remapgc doctor" in text


def test_json_stdout_stays_pure_when_the_fallback_is_announced(capsys, monkeypatch):
    monkeypatch.setenv(DISABLE, "1")
    code, out, err = run_cli(capsys, "demo", "lisp", "--size", "small", "--backend", "auto", "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["backend"] == "sim"
    assert summary["backend_note"].startswith("falling back to the simulator because")
    assert "falling back to the simulator because" in err


@pytest.mark.parametrize("argv, verbose", [
    (["demo", "lisp"], False),
    (["-v", "demo", "lisp"], True),
    (["demo", "lisp", "-v"], True),
    (["demo", "-v", "lisp"], True),
    (["doctor", "--verbose"], True),
    (["doctor"], False),
], ids=["demo-quiet", "v-before-subcommand", "v-after-subcommand", "v-before-name", "doctor-v", "doctor-quiet"])
def test_verbose_is_accepted_before_and_after_the_subcommand(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def heap_events(stderr: str) -> list[dict]:
    """The JSON event lines (``--json``) the CLI wrote to stderr, among the human output."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("logger", "").startswith("remapgc"):
                events.append(event)
    return events


@pytest.mark.parametrize("verbose_args", [["-v"], []], ids=["v-after-subcommand", "quiet"])
def test_demo_shows_the_heaps_events_on_stderr_only_with_v(capsys, verbose_args):
    code, out, err = run_cli(capsys, "demo", "lisp", "--size", "small", "--backend", "sim", "--json",
                             *verbose_args)
    assert code == 0
    summary = json.loads(out)  # stdout stays the one JSON document
    assert summary["demo"] == "lisp"
    events = heap_events(err)
    if verbose_args:
        collections = [e for e in events if e["event"] == "gc_done"]
        assert collections and all(e["logger"] == "remapgc.heap" for e in collections)
        assert all("live_objects" in e for e in collections)  # the event's fields, each its own key
        assert {"gc_mark", "gc_install"} <= {e["event"] for e in events}
    else:
        assert events == []


@pytest.mark.parametrize("missing, argv", [
    ("rich", ["demo", "--list"]),
    ("rich", ["doctor"]),
    ("structlog", ["doctor"]),
    ("matplotlib", ["demo", "lisp", "--size", "small", "--backend", "sim", "--plot", "{tmp}/lisp.png"]),
], ids=["rich-list", "rich-doctor", "structlog-doctor", "matplotlib-plot"])
def test_without_the_demo_extra_the_cli_says_how_to_install_it(missing, argv, tmp_path):
    """``pip install .`` leaves rich, matplotlib and structlog out: the command says which extra brings them."""
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code = (f"import sys; sys.modules[{missing!r}] = None  # as if it were not installed\n"
            f"from demos.cli import main; sys.exit(main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"needs {missing}" in proc.stderr and "pip install 'remapgc[demo]'" in proc.stderr
