"""What every demo shares: its run context, its report, and how a report is shown.

A demo is a function ``run(ctx: DemoContext) -> DemoReport``. The context
says which backend to use, how big to make the workload, the seed, and where
to draw the picture; the report carries the numbers, the integrity checks and
the tables. ``render_report`` prints the one-screen summary, ``report_json``
is the machine-readable form of the same report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

SIZES = ("small", "medium", "large")

MiB = 1 << 20
KiB = 1 << 10


@dataclass(frozen=True)
class Check:
    """One integrity check: what was checked, whether it held, and the evidence."""

    name: str
    ok: bool
    detail: str = ""
    scope: str = ""  # which run of the demo it is about ("remap", "THP on"...), "" for the whole demo

    @property
    def full_name(self) -> str:
        return f"{self.name} ({self.scope})" if self.scope else self.name


@dataclass
class DemoReport:
    demo: str
    title: str
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-able numbers
    checks: list[Check] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)  # the human view of the metrics
    notes: list[str] = field(default_factory=list)
    plot: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def check(self, name: str, ok: bool, detail: str = "", scope: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail, scope))
        return bool(ok)

    def check_raises_nothing(self, name: str, action: Callable[[], Any], detail: str = "", scope: str = "") -> bool:
        """Run ``action``; the check holds when it returns without raising."""
        try:
            action()
        except Exception as exc:  # the exception is the evidence: report it, don't hide it
            return self.check(name, False, f"{type(exc).__name__}: {exc}", scope)
        return self.check(name, True, detail, scope)


@dataclass
class DemoContext:
    """How one demo run is configured, and where it writes."""

    backend: str  # resolved: "linux" or "sim"
    backend_note: str  # why this backend (the fallback reason for auto)
    size: str
    seed: int
    plot: Path | None
    console: Console

    def heap(self, **options):
        """A fresh Heap on this run's backend (each heap gets its own kernel)."""
        from heap import Heap

        return Heap(kernel=self.backend, **options)

    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )


# --- formatting ------------------------------------------------------------------
def fmt_bytes(n: float | int | None) -> str:
    if n is None:
        return "—"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_ns(ns: float | int | None) -> str:
    if ns is None:
        return "—"
    ns = float(ns)
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def ratio(numerator: float, denominator: float) -> float | None:
    return None if not denominator else numerator / denominator


def stats_dict(stats) -> dict[str, int]:
    """A GCStats as a plain dict of its public fields."""
    return {name: int(getattr(stats, name)) for name in GCSTATS_FIELDS}


GCSTATS_FIELDS = (
    "live_objects", "live_bytes", "freed_objects", "pages_moved", "bytes_moved_zero_copy",
    "bytes_copied", "eagain_retries", "partial_moves", "eexist_races", "ebusy_fallbacks",
    "faults_served", "pause_ns", "total_ns", "rss_before", "rss_after",
)


# --- showing a report ---------------------------------------------------------------
def mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[bold red]✗[/]"


def checks_table(checks: list[Check]) -> Table:
    """One row per check; checks made once per run (scoped) share a row, one column per run."""
    scopes = list(dict.fromkeys(c.scope for c in checks if c.scope))
    table = Table(title="integrity checks", box=None, pad_edge=False, show_header=bool(scopes))
    table.add_column(width=2)
    table.add_column()
    for scope in scopes or [""]:
        table.add_column(scope, style="dim", header_style="bold")
    rows: dict[str, dict[str, Check]] = {}
    for check in checks:
        rows.setdefault(check.name, {})[check.scope] = check
    for name, by_scope in rows.items():
        all_ok = all(c.ok for c in by_scope.values())
        if "" in by_scope:
            cells = [by_scope[""].detail] + [""] * (len(scopes) - 1 if scopes else 0)
        else:
            cells = [f"{mark(by_scope[s].ok)} {by_scope[s].detail}" if s in by_scope else "" for s in scopes]
        table.add_row(mark(all_ok), name, *cells)
    return table


def render_report(console: Console, report: DemoReport, ctx: DemoContext) -> None:
    verdict = "[bold green]all checks passed[/]" if report.ok else "[bold red]INTEGRITY CHECK FAILED[/]"
    header = f"backend [bold]{ctx.backend}[/] · size {ctx.size} · seed {ctx.seed} · {verdict}"
    parts: list[Any] = [header, *report.tables, checks_table(report.checks)]
    parts.extend(f"[italic]{note}[/]" for note in report.notes)
    if report.plot:
        parts.append(f"picture: [link=file://{Path(report.plot).resolve()}]{report.plot}[/]")
    console.print(Panel(Group(*parts), title=f"remapgc demo {report.demo}: {report.title}",
                        border_style="green" if report.ok else "red"))


def report_json(report: DemoReport, ctx: DemoContext) -> dict[str, Any]:
    return {
        "demo": report.demo,
        "ok": report.ok,
        "backend": ctx.backend,
        "backend_note": ctx.backend_note,
        "size": ctx.size,
        "seed": ctx.seed,
        "metrics": report.metrics,
        "checks": [{"name": c.full_name, "ok": c.ok, "detail": c.detail, "scope": c.scope} for c in report.checks],
        "notes": report.notes,
        "plot": report.plot,
    }
