"""``remapgc doctor``: can this machine run the real-kernel backend, and if not, why?

``report()`` gathers the facts as a dict (tests and .ci/run use it);
``main()`` prints them as a table, or as JSON for scripts:

    remapgc doctor            # human table
    remapgc doctor --json     # or: python -m heap.doctor --json

Every check is a real attempt (open a userfaultfd by each path, move one page
and compare its frame), never a guess from the kernel version.
"""

from __future__ import annotations

import json
import os
import platform
import sys

from heap.backends import choose_auto, linux_disabled_reason, open_kernel, probe_move
from heap.faultmode import choose_fault_mode
from heap.kernel import UFFD_FEATURE_MOVE, UFFD_FEATURE_SIGBUS, KernelUnsupported

THP_DIR = "/sys/kernel/mm/transparent_hugepage"


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _selected(setting: str | None) -> str | None:
    """The bracketed choice of a sysfs multiple-choice file ("always [madvise] never")."""
    if setting is None:
        return None
    for word in setting.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return setting


def _dev_userfaultfd() -> dict:
    path = "/dev/userfaultfd"
    if not os.path.exists(path):
        return {"exists": False, "accessible": False}
    return {"exists": True, "accessible": os.access(path, os.R_OK | os.W_OK)}


def _thp() -> dict:
    return {
        "enabled": _selected(_read(f"{THP_DIR}/enabled")),
        "defrag": _selected(_read(f"{THP_DIR}/defrag")),
        "use_zero_page": _read(f"{THP_DIR}/use_zero_page"),
        "hpage_pmd_size": int(_read(f"{THP_DIR}/hpage_pmd_size") or 0) or None,
    }


def _linux_backend() -> dict:
    """Open the Linux backend, ask it what it may do here, and try one real MOVE."""
    out: dict = {"available": False, "reason": None, "diagnostics": None,
                 "move_works": False, "move_detail": None}
    try:
        kernel = open_kernel("linux")
    except KernelUnsupported as exc:
        out["reason"] = str(exc)
        out["move_detail"] = str(exc)
        return out
    out["available"] = True
    out["diagnostics"] = kernel.diagnostics()
    try:
        probe_move(kernel)
    except KernelUnsupported as exc:
        out["move_detail"] = str(exc)
    else:
        out["move_works"] = True
        out["move_detail"] = "a one-page UFFDIO_MOVE kept its physical frame and contents"
    kernel.close()
    return out


def report() -> dict:
    """Everything the doctor knows, as plain JSON-ready data."""
    uname = os.uname()
    linux = _linux_backend()
    try:
        kernel, why = choose_auto()
        auto = kernel.name
    except Exception as exc:  # e.g. the simulator is not installed: report it, don't crash
        kernel, auto, why = None, None, f"open_kernel('auto') fails: {type(exc).__name__}: {exc}"
    faults, faults_why = _fault_mode(kernel)
    sysctl = _read("/proc/sys/vm/unprivileged_userfaultfd")
    diagnostics = linux["diagnostics"] or {}
    paths = diagnostics.get("userfaultfd", {})
    return {
        "os": uname.sysname,
        "kernel_release": uname.release,
        "machine": uname.machine,
        "python": platform.python_version(),
        "euid": os.geteuid() if hasattr(os, "geteuid") else None,
        "linux_disabled": linux_disabled_reason(),
        "vm_unprivileged_userfaultfd": None if sysctl is None else int(sysctl),
        "dev_userfaultfd": _dev_userfaultfd(),
        "userfaultfd_paths": paths,
        "userfaultfd_syscall": any(v["ok"] for k, v in paths.items() if k.startswith("syscall")),
        "userfaultfd_dev": any(v["ok"] for k, v in paths.items() if k.startswith("/dev/userfaultfd")),
        # only UFFD_USER_MODE_ONLY contexts allowed (unprivileged with the sysctl at 0):
        # enough for remapgc, whose faults all come from user-mode accesses
        "userfaultfd_user_mode_only_required": any(v["ok"] for k, v in paths.items() if "user-mode" in k)
        and not any(v["ok"] for k, v in paths.items() if "all faults" in k),
        "move_offered": any(v.get("move_offered") for v in paths.values()),
        "move_feature_bit": UFFD_FEATURE_MOVE,
        "pagemap_frames_visible": diagnostics.get("pagemap_frames_visible"),
        "kpageflags_readable": diagnostics.get("kpageflags_readable"),
        "pagemap_scan": diagnostics.get("pagemap_scan"),
        "linux_backend": linux["available"],
        "linux_backend_reason": linux["reason"],
        "move_works": linux["move_works"],
        "move_detail": linux["move_detail"],
        "thp": _thp(),
        "auto_backend": auto,
        "auto_reason": why,
        "sigbus_offered": any(v.get("features", 0) & UFFD_FEATURE_SIGBUS for v in paths.values() if v.get("ok")),
        "faults_auto": faults,
        "faults_reason": faults_why,
    }


def _fault_mode(kernel) -> tuple[str | None, str]:
    """What Heap(faults="auto") picks on the auto backend, and why (heap.faultmode: a measurement)."""
    if kernel is None:
        return None, "no backend"
    try:
        return choose_fault_mode("auto", kernel)
    finally:
        kernel.close()


def _yes(flag) -> str:
    if flag is None:
        return "[dim]unknown[/dim]"
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def render(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="remapgc doctor", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_row("kernel", f"{rep['os']} {rep['kernel_release']} ({rep['machine']}), Python {rep['python']}")
    if rep["linux_disabled"]:
        table.add_row("Linux backend disabled", rep["linux_disabled"])
    sysctl = rep["vm_unprivileged_userfaultfd"]
    table.add_row("vm.unprivileged_userfaultfd", "[dim]absent[/dim]" if sysctl is None else str(sysctl))
    dev = rep["dev_userfaultfd"]
    table.add_row("/dev/userfaultfd", "absent" if not dev["exists"] else
                  ("present, read/write for us" if dev["accessible"] else "present, no access"))
    for path, res in rep["userfaultfd_paths"].items():
        detail = (f"[green]ok[/green], features {res['features']:#x}"
                  f"{', MOVE offered' if res['move_offered'] else ', [red]no MOVE[/red]'}"
                  if res["ok"] else f"[red]refused[/red]: {res['detail']}")
        table.add_row(f"userfaultfd via {path}", detail)
    table.add_row("frames visible in /proc/self/pagemap", _yes(rep["pagemap_frames_visible"]))
    table.add_row("/proc/kpageflags readable", _yes(rep["kpageflags_readable"]))
    table.add_row("PAGEMAP_SCAN ioctl", _yes(rep["pagemap_scan"]))
    table.add_row("UFFDIO_MOVE works", f"{_yes(rep['move_works'])}: {rep['move_detail']}")
    thp = rep["thp"]
    table.add_row("transparent huge pages",
                  f"enabled={thp['enabled']}, defrag={thp['defrag']}, use_zero_page={thp['use_zero_page']}, "
                  f"PMD size={thp['hpage_pmd_size']}")
    table.add_row("open_kernel('auto') picks", f"[bold]{rep['auto_backend']}[/bold]: {rep['auto_reason']}")
    table.add_row("UFFD_FEATURE_SIGBUS offered", _yes(rep["sigbus_offered"]))
    table.add_row("Heap(faults='auto'), the default, picks", f"[bold]{rep['faults_auto']}[/bold]: {rep['faults_reason']}")
    Console().print(table)


def main(json_output: bool = False) -> int:
    rep = report()
    if json_output:
        json.dump(rep, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        render(rep)
    return 0


if __name__ == "__main__":
    import logging

    # Run as a script: keep stdout for the report; events go to stderr, warnings and up.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main(json_output="--json" in sys.argv[1:]))
