"""The ``remapgc`` command line: ``remapgc doctor``, ``remapgc demo ...``.

The library never configures logging; this is the one place that does
(human console output by default, JSON lines with ``--json``).
"""

from __future__ import annotations

import argparse
import logging
import sys

import structlog


def configure_logging(json_output: bool, verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    renderer = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remapgc",
        description="remapgc: a compacting heap that moves live pages with UFFDIO_MOVE instead of copying them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug events")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="check whether this machine can run the real-kernel backend, and why not")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    doctor.set_defaults(run=run_doctor)
    return parser


def run_doctor(args: argparse.Namespace) -> int:
    from heap.doctor import main as doctor_main

    return doctor_main(json_output=args.json)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    configure_logging(json_output=getattr(args, "json", False), verbose=args.verbose)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
