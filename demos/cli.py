"""The ``remapgc`` command line: ``remapgc doctor``, ``remapgc demo ...``.

The library never configures logging; this is the one place that does:
the library's events (stdlib ``logging`` under ``remapgc``) go to stderr,
warnings and up by default, every event with ``-v``; human console lines, or
JSON lines with ``--json``.

``remapgc demo NAME`` runs one workload from ``demos.registry`` on the chosen
backend and ends with a one-screen summary; it exits 1 when an integrity
check failed, 2 on a usage error. With ``--json`` the summary goes to stdout
as one JSON document and everything meant for people goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EVENTS_ROOT = "remapgc"  # every library logger lives under it (heap/events.py)


class _CliEventHandler(logging.StreamHandler):
    """The handler the CLI puts on the ``remapgc`` logger (recognised to replace it on a second ``main``)."""


def _event_fields(_logger, _method, event_dict: dict) -> dict:
    """A library record (heap/events.py) as structlog's event dict: its event name and its fields as keys."""
    record = event_dict.get("_record")
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        event_dict["event"] = record.event
        event_dict.update(fields)
    return event_dict


def configure_logging(json_output: bool, verbose: bool = False) -> None:
    """Show the library's events on stderr: pretty lines, or JSON lines with ``--json``.

    Only the ``remapgc`` loggers are configured (not the root logger), so the
    libraries the demos use (matplotlib...) keep their own settings. structlog
    only renders here (its stdlib ``ProcessorFormatter``); nothing is
    configured in structlog itself.
    """
    import structlog

    level = logging.DEBUG if verbose else logging.WARNING
    renderer = (structlog.processors.JSONRenderer() if json_output
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    shared = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    handler = _CliEventHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_event_fields, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    logger = logging.getLogger(EVENTS_ROOT)
    for old in [h for h in logger.handlers if isinstance(h, _CliEventHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the CLI is the host here: one line per event, whatever the root logger has


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remapgc",
        description="remapgc: a compacting heap that moves live pages with UFFDIO_MOVE instead of copying them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    doctor = sub.add_parser("doctor", parents=[verbose_option()],
                            help="check whether this machine can run the real-kernel backend, and why not")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    doctor.set_defaults(run=run_doctor)

    add_demo_parser(sub)
    return parser


VERBOSE_HELP = "show the heap's events (per-phase, per-collection) on stderr"


def verbose_option() -> argparse.ArgumentParser:
    """``-v`` for a subcommand, so ``remapgc demo X -v`` works as ``remapgc -v demo X`` does.

    Its default is SUPPRESS: a subcommand without ``-v`` leaves the top-level
    value alone instead of resetting it to False.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parent


def run_doctor(args: argparse.Namespace) -> int:
    from heap.doctor import main as doctor_main

    return doctor_main(json_output=args.json)


# --- remapgc demo ----------------------------------------------------------------
BACKEND_CHOICES = ("auto", "linux", "sim")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_demo_parser(sub) -> None:
    from demos.common import SIZES

    demo = sub.add_parser("demo", parents=[verbose_option()],
                          help="run a compaction workload and check its integrity (--list to see them)")
    demo.add_argument("name", nargs="?", help="which demo (see --list)")
    demo.add_argument("--list", action="store_true", help="list the demos with a one-line description")
    demo.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                      help="auto: the real kernel when UFFDIO_MOVE works here, else the simulator (default)")
    demo.add_argument("--size", choices=SIZES, default="medium",
                      help="workload size; small runs in seconds (tests, CI) (default: medium)")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the workload (default: 1)")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    demo.add_argument("--plot", type=Path, metavar="PATH", help="write the demo's picture (PNG) there")
    demo.set_defaults(run=run_demo)


def list_demos(console) -> int:
    from rich.table import Table

    from demos.registry import DEMOS

    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for spec in DEMOS.values():
        table.add_row(spec.name, spec.description)
    console.print(table)
    return EXIT_OK


def resolve_backend(requested: str, console) -> tuple[str, str] | None:
    """The backend name to run on and why; None (after saying why) if impossible."""
    from heap.kernel import KernelUnsupported, choose_auto, open_kernel, probe_move

    if requested == "sim":
        return "sim", "requested with --backend sim"
    if requested == "linux":
        try:
            probe_move(open_kernel("linux"))
        except KernelUnsupported as exc:
            console.print(f"[bold red]the Linux backend is unavailable here: {exc} (run `remapgc doctor`)")
            return None
        return "linux", "requested with --backend linux"
    kernel, reason = choose_auto()
    if kernel.name != "linux":
        console.print(f"[yellow]{reason}")
    return kernel.name, reason


def run_guarded(spec, ctx):
    """The demo's report; a demo that raises gets a report with that failure (and the traceback shown)."""
    from demos.common import DemoReport

    try:
        return spec.runner()(ctx)
    except Exception as exc:  # a crash is a failed run: say what broke, exit 1 like any failed check
        if lacks_demo_extra(exc):
            raise  # not a failed run: an install without the demo extra (main says how to add it)
        ctx.console.print_exception()
        report = DemoReport(spec.name, "the demo stopped with an error")
        report.check("the demo ran to completion", False, f"{type(exc).__name__}: {exc}")
        return report


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from demos.common import DemoContext, render_report, report_json
    from demos.registry import DEMOS

    # With --json, stdout carries only the JSON document.
    console = Console(stderr=args.json)
    if args.list:
        return list_demos(Console())
    if args.name is None:
        console.print("[red]which demo? `remapgc demo --list` shows them")
        return EXIT_USAGE
    spec = DEMOS.get(args.name)
    if spec is None:
        console.print(f"[red]no demo called {args.name!r}; `remapgc demo --list` shows them")
        return EXIT_USAGE
    resolved = resolve_backend(args.backend, console)
    if resolved is None:
        return EXIT_FAILED
    backend, note = resolved
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(backend=backend, backend_note=note, size=args.size, seed=args.seed,
                      plot=args.plot, console=console)
    report = run_guarded(spec, ctx)
    render_report(console, report, ctx)
    if args.json:
        print(json.dumps(report_json(report, ctx), indent=2))
    return EXIT_OK if report.ok else EXIT_FAILED


# what `pip install .` leaves out and `pip install 'remapgc[demo]'` adds
DEMO_EXTRA = ("rich", "matplotlib", "structlog")


def lacks_demo_extra(exc: BaseException) -> bool:
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in DEMO_EXTRA


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(argv)
    except ModuleNotFoundError as exc:
        if not lacks_demo_extra(exc):
            raise
        print(f"remapgc: the command line needs {exc.name}, from the demo extra: pip install 'remapgc[demo]' "
              "(the library itself does not)", file=sys.stderr)
        return EXIT_USAGE


def run_command(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    # A demo runs many collections: their events are shown only with -v.
    configure_logging(json_output=getattr(args, "json", False), verbose=args.verbose)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
