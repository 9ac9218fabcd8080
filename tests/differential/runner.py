"""Run a scenario (tests/differential/steps.py) on any Kernel and record it.

The record holds, for every step, its outcome string, and for every page of
every labelled region (at the end and at each Snapshot): its state, whether
it is PMD-mapped, whether it is exclusive, its contents and its *frame
origin*. Raw frame ids differ between backends, so the runner names each
frame after the page where it first appeared ("S+3"; "S+3#2" for a later,
different frame first seen at that same page) and records that name. A frame
counts as "new" when it was not mapped in any labelled page after the
previous step, so a frame freed and later reused by Linux gets a fresh name,
exactly like a fresh frame of the simulator.

Two records of the same scenario on two kernels must be equal.
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from heap.kernel import (
    HPAGE_SIZE,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    PAGE_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    UFFDIO_REGISTER_MODE_MISSING,
    UffdError,
)

from . import steps as S

PS = PAGE_SIZE
HP = HPAGE_SIZE // PAGE_SIZE
READER_FAULT_TIMEOUT = 5.0  # seconds to wait for a reader's fault to be reported
READER_JOIN_TIMEOUT = 5.0
EDGE_PAGES = 8
# A step that has not returned after this long is recorded as "hung" and the
# scenario stops there (on Linux nothing the runner issues may block; a hang
# means a backend blocks where the kernel would not).
STEP_TIMEOUT = 3.0
# Every step runs on this one CPU. Whether a write to a page whose COW sharer
# has exited reuses the frame depends on the folio's reference count, which
# a per-CPU LRU batch of *another* CPU can hold for a while (only the local
# batch is drained); on one CPU Linux reuses it every time, as the sim does.
STEP_CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


class PageRec(NamedTuple):
    state: str  # "unmapped" | "none" | "zero" | "present" | "thp"
    huge: bool
    exclusive: bool
    origin: str  # frame origin name, "zero", or "-"
    content: str  # pattern tag, "0" (all zero), "?<hash>", or "-" (not read)

    def __str__(self) -> str:
        if self.state == "unmapped":
            return "unmapped"
        flags = ("H" if self.huge else "-") + ("x" if self.exclusive else "-")
        return f"{self.state}/{flags} frame={self.origin} data={self.content}"


@dataclass
class Record:
    outcomes: list = field(default_factory=list)  # [(step source, outcome)]
    snapshots: dict = field(default_factory=dict)  # tag -> {label: [PageRec]}
    final: dict = field(default_factory=dict)  # label -> [PageRec]
    resident: dict = field(default_factory=dict)  # label -> Kernel.resident_bytes of its mapped pages

    def outcome(self, tag: str) -> str:
        return self.tagged[tag]

    tagged: dict = field(default_factory=dict)  # step tag -> outcome
    aborted: bool = False  # a step hung: nothing after it was observed


def errname(err: int | None) -> str:
    return errno_mod.errorcode.get(err or 0, f"errno{err}")


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, UffdError):
        return f"{errname(exc.errno)} moved={exc.moved}"
    if isinstance(exc, OSError):
        return errname(exc.errno)
    return f"raised {type(exc).__name__}: {exc}"


# --- page contents ---------------------------------------------------------------
def pattern(tag: str) -> bytes:
    unit = f"{tag}|".encode()
    return (unit * (PS // len(unit) + 1))[:PS]


def content_tag(data: bytes) -> str:
    if not any(data):
        return "0"
    end = data.find(b"|", 0, 64)
    if end > 0:
        tag = data[:end].decode("ascii", "replace")
        if data == pattern(tag)[: len(data)]:
            return tag
    return "?" + hashlib.blake2b(data, digest_size=6).hexdigest()


# --- layout: every region gets its own 2 MiB-aligned slot ----------------------------
@dataclass
class RegionDef:
    label: str
    pages: int
    offset: int = 0
    after: str | None = None


def region_defs(scenario_steps) -> list[RegionDef]:
    defs: dict[str, RegionDef] = {}
    for step in scenario_steps:
        if isinstance(step, S.Map):
            defs.setdefault(step.label, RegionDef(step.label, step.pages, step.offset, step.after))
        elif isinstance(step, S.Mremap):
            defs.setdefault(step.new, RegionDef(step.new, step.pages, step.offset, step.after))
    return list(defs.values())


def layout(defs: list[RegionDef]) -> tuple[dict[str, int], int]:
    """Page offsets of each region from the arena base, and the arena size in
    pages. Each chain (a region and those placed ``after`` it) gets a slot
    starting on a 2 MiB boundary, followed by at least 2 MiB of gap."""
    by_label = {d.label: d for d in defs}
    offsets: dict[str, int] = {}
    cursor = HP  # a leading 2 MiB gap: no hole in the arena ever borders free address space
    for d in defs:
        if d.after is not None:
            continue
        start = cursor + d.offset
        offsets[d.label] = start
        end = start + d.pages
        chained = d.label
        while True:
            nxt = next((c for c in defs if c.after == chained), None)
            if nxt is None:
                break
            offsets[nxt.label] = end
            end += nxt.pages
            chained = nxt.label
        cursor += -(-(end - cursor) // HP) * HP + HP
    missing = set(by_label) - set(offsets)
    if missing:
        raise ValueError(f"regions placed after an unknown region: {sorted(missing)}")
    return offsets, cursor


# --- the runner -------------------------------------------------------------------
class Reader:
    """A thread loading one page (a StartReader step)."""

    verb = "read"

    def __init__(self, name: str, kernel, addr: int, write: bool = False):
        self.name = name
        self.result: str | None = None
        if write:
            self.verb = "write"
        self.thread = threading.Thread(target=self._run, args=(kernel, addr, write), daemon=True,
                                       name=f"reader-{name}")

    def _run(self, kernel, addr: int, write: bool) -> None:
        try:
            if write:
                kernel.store(addr - addr % PS, pattern(f"{self.name}/w"))
                self.result = "ok"
            else:
                self.result = content_tag(kernel.load(addr, PS))
        except BaseException as exc:  # recorded, compared between backends
            self.result = describe_exception(exc)


class Worker(Reader):
    """A thread running one step (a Background step)."""

    verb = "done"

    def __init__(self, name: str, call):
        self.name = name
        self.result = None
        self.thread = threading.Thread(target=self._call, args=(call,), daemon=True, name=f"worker-{name}")

    def _call(self, call) -> None:
        self.result = call()


class StepWorker:
    """The one long-lived thread that runs every step, pinned to STEP_CPU.

    Long-lived because a new thread maps a new stack, and an mmap made while
    a scenario has a hole in its arena may land in that hole (the kernel
    places mappings top-down into free gaps), where it would then be
    observed as if the scenario had mapped it. A worker stuck in a hung step
    is abandoned and the next step gets a fresh one.
    """

    _lock = threading.Lock()
    _current: "StepWorker | None" = None

    def __init__(self):
        self.jobs: list = []
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="differential-step-worker")
        self.thread.start()

    def _loop(self) -> None:
        if STEP_CPU is not None:
            os.sched_setaffinity(0, {STEP_CPU})  # this thread only (and the threads it starts)
        while True:
            with self.ready:
                while not self.jobs:
                    self.ready.wait()
                job, box, done = self.jobs.pop(0)
            box["outcome"] = job()
            done.set()

    @classmethod
    def run(cls, job, timeout: float) -> str | None:
        """``job()`` on the worker; None if it did not return within ``timeout``."""
        with cls._lock:
            if cls._current is None:
                cls._current = StepWorker()
            worker = cls._current
        box: dict = {}
        done = threading.Event()
        with worker.ready:
            worker.jobs.append((job, box, done))
            worker.ready.notify()
        if not done.wait(timeout):
            with cls._lock:
                if cls._current is worker:
                    cls._current = None  # stuck: the next step gets a new worker
            return None
        return box["outcome"]


class Runner:
    """Executes one scenario on one kernel; ``run()`` returns its Record."""

    def __init__(self, kernel, scenario: S.Scenario, *, snapshot_every_step: bool = False):
        self.k = kernel
        self.sc = scenario
        self.every_step = snapshot_every_step
        self.defs = region_defs(scenario.steps)
        self.page_offsets, self.arena_pages = layout(self.defs)
        self.base = 0
        self.regions: dict[str, int] = {}  # label -> pages (for the region's slot)
        # the runner's own view of each page, only to avoid faults that would
        # kill (PROT_NONE, unmapped) or block (registered missing) the caller
        self.mapped: dict[int, int] = {}  # page address -> prot
        # page address -> names of the uffds that may hold it registered MISSING
        self.registered: dict[int, set[str]] = {}
        self.uffds: dict = {}
        self.children: dict = {}
        self.readers: list[Reader] = []
        self.writes = 0
        self.origin: dict[int, str] = {}  # frame -> origin name
        self.names: set[str] = set()
        self.zero_frames: set[int] = set()
        self.live: set[int] = set()
        self.record = Record()
        self.hung = None  # the step that never returned, if any

    # -- addresses --------------------------------------------------------------
    def addr(self, a: S.Addr) -> int:
        if isinstance(a, int):
            return a
        if isinstance(a, tuple):
            where, delta = a
            return self.addr(where) + delta
        label, _, page = a.partition("+")
        if label not in self.page_offsets:
            raise ValueError(f"unknown region {label!r} in {a!r}")
        return self.base + (self.page_offsets[label] + int(page or 0)) * PS

    def page_addrs(self, start: int, pages: int):
        return [start + i * PS for i in range(pages)]

    # -- the run ---------------------------------------------------------------
    def run(self) -> Record:
        self.base = self.k.mmap(self.arena_pages * PS, PROT_NONE, align=HPAGE_SIZE)
        try:
            for index, step in enumerate(self.sc.steps):
                outcome = self.execute(step)
                self.record.outcomes.append((step.as_data(), outcome))
                if getattr(step, "tag", None):
                    self.record.tagged[step.tag] = outcome
                if self.hung is not None:
                    # the backend may hold its locks: observe nothing more
                    self.record.aborted = True
                    return self.record
                self.track_frames()
                if isinstance(step, S.Snapshot):
                    self.record.snapshots[step.tag] = self.snapshot()
                elif self.every_step:
                    self.record.snapshots[f"after step {index}"] = self.snapshot(edges_only=True)
            self.record.final = self.snapshot()
            self.record.resident = {d.label: sum(self.k.resident_bytes(a, n * PS) for a, n, _ in self.mapped_runs(d.label))
                                    for d in self.defs}
        finally:
            self.cleanup()
        return self.record

    def call(self, step) -> str:
        """Run one step here and now; its outcome string."""
        try:
            result = getattr(self, "do_" + type(step).__name__)(step)
        except Exception as exc:
            return describe_exception(exc)
        return "ok" if result is None else f"ok {result}"

    def execute(self, step) -> str:
        """Run one step on the step worker, so that a backend blocking where
        it should not is recorded as a hang instead of hanging the test."""
        timeout = (STEP_TIMEOUT + getattr(step, "grace", 0) * len(self.readers) + getattr(step, "settle", 0)
                   + (READER_FAULT_TIMEOUT if isinstance(step, S.StartReader) else 0))
        outcome = StepWorker.run(lambda: self.call(step), timeout)
        if outcome is None:
            self.hung = step
            return f"hung (still blocked after {STEP_TIMEOUT:g}s)"
        return outcome

    def cleanup(self) -> None:
        if self.hung is not None:
            self.abandon()
            return
        problems = []
        for uffd in self.uffds.values():
            try:
                uffd.close()  # wakes any reader still blocked; its fault is then retried normally
            except OSError:
                pass
        for reader in self.readers:
            reader.thread.join(READER_JOIN_TIMEOUT)
            if reader.thread.is_alive():
                problems.append(f"reader {reader.name} still blocked after its uffd was closed")
        for child in self.children.values():
            child.exit()
        self.children.clear()
        self.k.munmap(self.base, self.arena_pages * PS)
        if problems:
            raise RuntimeError("; ".join(problems))

    def abandon(self) -> None:
        """After a hang: close the uffds (which wakes the hung thread on
        Linux) from a thread of their own, and leave the rest."""
        def close_all():
            for uffd in self.uffds.values():
                try:
                    uffd.close()
                except OSError:
                    pass
        closer = threading.Thread(target=close_all, daemon=True)
        closer.start()
        closer.join(STEP_TIMEOUT)

    # -- address space -------------------------------------------------------
    def do_Map(self, st: S.Map):
        start = self.addr(st.label)
        length = st.pages * PS
        self.k.munmap(start, length)  # the arena's PROT_NONE reservation
        got = self.k.mmap(length, st.prot, shared=st.shared, at=start)
        if got != start:
            raise AssertionError(f"mmap(at={start:#x}) returned {got:#x}")
        for a in self.page_addrs(start, st.pages):
            self.mapped[a] = st.prot
        if st.thp is not None:
            self.k.madvise(start, length, MADV_HUGEPAGE if st.thp else MADV_NOHUGEPAGE)

    def do_Munmap(self, st: S.Munmap):
        start = self.addr(st.at)
        self.k.munmap(start, st.pages * PS)
        for a in self.page_addrs(start, st.pages):
            self.mapped.pop(a, None)
            self.registered.pop(a, None)

    def do_Mprotect(self, st: S.Mprotect):
        start = self.addr(st.at)
        try:
            self.k.mprotect(start, st.pages * PS, st.prot)
        except OSError as exc:
            if exc.errno == errno_mod.ENOMEM:
                # the VMAs before the first hole were changed already
                for a in self.page_addrs(start, st.pages):
                    if a not in self.mapped:
                        break
                    self.mapped[a] = st.prot
            raise
        for a in self.page_addrs(start, st.pages):
            if a in self.mapped:
                self.mapped[a] = st.prot

    def do_Madvise(self, st: S.Madvise):
        self.k.madvise(self.addr(st.at), st.pages * PS, st.advice)

    def do_Mlock(self, st: S.Mlock):
        # populating a registered missing page is a kernel-mode fault: with
        # a user-mode-only uffd it fails (ENOMEM) instead of blocking
        self.k.mlock(self.addr(st.at), st.pages * PS, onfault=st.onfault)

    def do_Munlock(self, st: S.Munlock):
        self.k.munlock(self.addr(st.at), st.pages * PS)

    def do_Mremap(self, st: S.Mremap):
        old = self.addr(st.at)
        new = self.addr(st.new)
        length = st.pages * PS
        self.k.munmap(new, length)  # the arena's reservation (MREMAP_FIXED would replace it anyway)
        try:
            got = self.k.mremap(old, length, new, dontunmap=st.dontunmap)
        except OSError:
            # a move spanning several VMAs can fail after moving the first
            # ones (6.17+): observe the target too, conservatively
            for i in range(st.pages):
                o, n = old + i * PS, new + i * PS
                if o in self.mapped:
                    self.mapped[n] = self.mapped[o]
                if o in self.registered:
                    self.registered.setdefault(n, set()).update(self.registered[o])
            raise
        if got != new:
            raise AssertionError(f"mremap to {new:#x} returned {got:#x}")
        for i in range(st.pages):
            o, n = old + i * PS, new + i * PS
            if o in self.mapped:
                self.mapped[n] = self.mapped[o]
                if not st.dontunmap:
                    del self.mapped[o]
            if o in self.registered:
                self.registered.setdefault(n, set()).update(self.registered[o])

    # -- user-mode access ----------------------------------------------------
    def would_block(self, a: int) -> bool:
        return bool(self.registered.get(a)) and self.k.page_info(a).state == "none"

    def stop_at(self, a: int, need: int) -> str | None:
        """Why a user-mode access needing ``need`` (PROT_READ or PROT_WRITE) stops at page ``a``:
        "segv" (unmapped or protected), "would-block" (a registered missing page), or None."""
        prot = self.mapped.get(a)
        if prot is None or not prot & need:
            return "segv"
        return "would-block" if self.would_block(a) else None

    def do_Write(self, st: S.Write):
        start = self.addr(st.at)
        for i, a in enumerate(self.page_addrs(start, st.pages)):
            stop = self.stop_at(a, PROT_WRITE)
            if stop:
                return stop
            self.writes += 1
            self.k.store(a, self.page_pattern(st.at, start, i))
        return None

    def page_pattern(self, at: S.Addr, start: int, i: int) -> bytes:
        """The contents the current write puts into page ``i`` from ``at``: its name and the write's number."""
        label = at if isinstance(at, str) else hex(start)
        region, _, page = label.partition("+")
        return pattern(f"{region}+{int(page or 0) + i}/{self.writes}")

    def blocked_before_fault(self, start: int, pages: int, need: int) -> bool:
        """Would a one-call access of ``pages`` pages from ``start`` block in a
        userfault before it reaches its first faulting page? (It goes page by
        page in address order, so nothing after that page matters.)"""
        for a in self.page_addrs(start, pages):
            stop = self.stop_at(a, need)
            if stop:
                return stop == "would-block"
        return False

    def do_Store(self, st: S.Store):
        start = self.addr(st.at)
        if self.blocked_before_fault(start, st.pages, PROT_WRITE):
            return "would-block"
        self.writes += 1
        self.k.store(start, b"".join(self.page_pattern(st.at, start, i) for i in range(st.pages)))

    def do_Load(self, st: S.Load):
        start = self.addr(st.at)
        if self.blocked_before_fault(start, st.pages, PROT_READ):
            return "would-block"
        data = self.k.load(start, st.pages * PS)
        return " ".join(compress([content_tag(data[i * PS:(i + 1) * PS]) for i in range(st.pages)]))

    def do_Read(self, st: S.Read):
        start = self.addr(st.at)
        seen = []
        for a in self.page_addrs(start, st.pages):
            stop = self.stop_at(a, PROT_READ)
            if stop:
                seen.append(stop)
                break
            seen.append(content_tag(self.k.load(a, PS)))
        return " ".join(compress(seen))

    def do_Memmove(self, st: S.Memmove):
        dst, src = self.addr(st.dst), self.addr(st.src)
        for pages, need in ((self.page_addrs(src, st.pages), PROT_READ), (self.page_addrs(dst, st.pages), PROT_WRITE)):
            for a in pages:
                stop = self.stop_at(a, need)
                if stop:
                    return stop
        self.k.memmove(dst, src, st.pages * PS)

    # -- processes -----------------------------------------------------------
    def do_Fork(self, st: S.Fork):
        self.children[st.child] = self.k.fork()

    def do_ChildExit(self, st: S.ChildExit):
        self.children.pop(st.child).exit()

    # -- userfaultfd -----------------------------------------------------------
    def do_Uffd(self, st: S.Uffd):
        uffd = self.k.userfaultfd(st.features)
        self.uffds[st.name] = uffd
        return f"features={uffd.features:#x}"

    def do_Register(self, st: S.Register):
        start = self.addr(st.at)
        ioctls = self.uffds[st.uffd].register(start, st.pages * PS, st.mode)
        if st.mode & UFFDIO_REGISTER_MODE_MISSING:
            for a in self.page_addrs(start, st.pages):
                self.registered.setdefault(a, set()).add(st.uffd)
        return f"ioctls={ioctls:#x}"

    def do_Unregister(self, st: S.Unregister):
        start = self.addr(st.at)
        self.uffds[st.uffd].unregister(start, st.pages * PS)
        for a in self.page_addrs(start, st.pages):
            self.registered.get(a, set()).discard(st.uffd)

    def do_Move(self, st: S.Move):
        length = st.nbytes if st.nbytes is not None else st.pages * PS
        return self.uffds[st.uffd].move(self.addr(st.dst), self.addr(st.src), length, st.mode)

    def do_Copy(self, st: S.Copy):
        return self.uffds[st.uffd].copy(self.addr(st.dst), self.addr(st.src), st.pages * PS, st.mode)

    def do_Zeropage(self, st: S.Zeropage):
        return self.uffds[st.uffd].zeropage(self.addr(st.dst), st.pages * PS, st.mode)

    def do_Wake(self, st: S.Wake):
        self.uffds[st.uffd].wake(self.addr(st.at), st.pages * PS)

    def do_CloseUffd(self, st: S.CloseUffd):
        self.uffds.pop(st.uffd).close()
        for names in self.registered.values():
            names.discard(st.uffd)

    # -- threads -----------------------------------------------------------------
    def do_StartReader(self, st: S.StartReader):
        a = self.addr(st.at)
        page = a - a % PS
        reader = Reader(st.name, self.k, a, st.write)
        self.readers.append(reader)
        reader.thread.start()
        uffd = self.uffds[st.uffd]
        waited = 0.0
        while waited < READER_FAULT_TIMEOUT:
            events = uffd.read_events(timeout=0.1)
            waited += 0.1
            mine = [ev for ev in events if ev.address == page]
            if mine:
                return "blocked " + ("write" if mine[0].write else "read")
            if not reader.thread.is_alive():
                return f"finished data={reader.result}"
        return "no fault reported"

    def do_CheckReaders(self, st: S.CheckReaders):
        states = []
        for reader in self.readers:
            reader.thread.join(st.grace)
            state = "blocked" if reader.thread.is_alive() else f"{reader.verb} {reader.result}"
            states.append(f"{reader.name}:{state}")
        return " ".join(states)

    def do_Background(self, st: S.Background):
        worker = Worker(st.name, lambda: self.call(st.step))
        self.readers.append(worker)
        worker.thread.start()
        worker.thread.join(st.settle)
        return "blocked" if worker.thread.is_alive() else f"finished {worker.result}"

    def do_ReadEvents(self, st: S.ReadEvents):
        events = self.uffds[st.uffd].read_events(timeout=st.timeout)
        return " ".join(f"{self.where(ev.address)}:{'w' if ev.write else 'r'}" for ev in events) or "none"

    def where(self, a: int) -> str:
        """``a`` as "label+page" when it lies in a region, else hex."""
        for d in self.defs:
            start = self.addr(d.label)
            if start <= a < start + d.pages * PS:
                return f"{d.label}+{(a - start) // PS}"
        return hex(a)

    def do_Snapshot(self, st: S.Snapshot):
        return None

    # -- observation ---------------------------------------------------------------
    def mapped_runs(self, label: str):
        start = self.addr(label)
        pages = self.region_pages(label)
        run_start = None
        for i in range(pages + 1):
            a = start + i * PS
            inside = i < pages and a in self.mapped
            if inside and run_start is None:
                run_start = i
            elif not inside and run_start is not None:
                yield start + run_start * PS, i - run_start, run_start
                run_start = None

    def region_pages(self, label: str) -> int:
        return next(d.pages for d in self.defs if d.label == label)

    def track_frames(self) -> None:
        """Name every frame that was not mapped after the previous step."""
        live: set[int] = set()
        for d in self.defs:
            for run_addr, pages, first in self.mapped_runs(d.label):
                frames = self.k.page_frames(run_addr, pages)
                for i, f in enumerate(frames.tolist()):
                    if f < 0 or f in self.zero_frames:
                        continue
                    if f not in self.live and f not in live:
                        info = self.k.page_info(run_addr + i * PS)
                        if info.state == "zero":
                            self.zero_frames.add(f)
                            continue
                        self.origin[f] = self.fresh_name(f"{d.label}+{first + i}")
                    live.add(f)
        self.live = live

    def fresh_name(self, base: str) -> str:
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}#{n}"
        self.names.add(name)
        return name

    def page_rec(self, a: int) -> PageRec:
        prot = self.mapped.get(a)
        if prot is None:
            return PageRec("unmapped", False, False, "-", "-")
        info = self.k.page_info(a)
        if info.state == "zero":
            origin = "zero"
        elif info.frame is None or info.frame < 0:
            origin = "-"
        else:
            origin = self.origin.get(info.frame, "?unnamed")
        content = "-"
        if info.state != "none" and prot & PROT_READ:
            try:
                content = content_tag(self.k.load(a, PS))
            except OSError as exc:  # the runner's view of the protection was wrong
                content = f"load {describe_exception(exc)}"
        return PageRec(info.state, bool(info.huge), bool(info.exclusive), origin, content)

    def snapshot(self, edges_only: bool = False) -> dict:
        """Every page of every region; with ``edges_only`` (the per-step
        snapshots of generated sequences) only the first and last
        EDGE_PAGES pages of big regions, where their THP moves act."""
        out = {}
        for d in self.defs:
            start = self.addr(d.label)
            if edges_only and d.pages > 4 * EDGE_PAGES:
                tail = d.pages - EDGE_PAGES
                out[d.label] = [self.page_rec(start + i * PS) for i in range(EDGE_PAGES)]
                out[f"{d.label}+{tail}"] = [self.page_rec(start + i * PS) for i in range(tail, d.pages)]
            else:
                out[d.label] = [self.page_rec(start + i * PS) for i in range(d.pages)]
        return out


def compress(items: list[str]) -> list[str]:
    """Run-length encode equal neighbours: ["0", "0", "0"] -> ["0*3"]."""
    out: list[str] = []
    for item in items:
        if out and out[-1].split("*")[0] == item:
            head, _, n = out[-1].partition("*")
            out[-1] = f"{head}*{int(n or 1) + 1}"
        else:
            out.append(item)
    return out


def run_scenario(kernel, scenario: S.Scenario, **options) -> Record:
    return Runner(kernel, scenario, **options).run()


# --- comparing two records ------------------------------------------------------
MAX_PAGE_DIFFS = 12


def differences(a: Record, b: Record, names=("linux", "sim")) -> list[str]:
    """Human-readable differences between two records of one scenario."""
    out = []
    for i, ((src_a, out_a), (_, out_b)) in enumerate(zip(a.outcomes, b.outcomes)):
        if out_a != out_b:
            out.append(f"step {i} {src_a}: {names[0]} {out_a!r} != {names[1]} {out_b!r}")
    if len(a.outcomes) != len(b.outcomes):
        out.append(f"step count {len(a.outcomes)} != {len(b.outcomes)}")
    if a.aborted or b.aborted:
        out.append(f"{names[0] if a.aborted else names[1]} hung: pages not compared")
        return out
    for tag in sorted(set(a.snapshots) | set(b.snapshots)):
        out += page_differences(a.snapshots.get(tag, {}), b.snapshots.get(tag, {}), f"[{tag}] ", names)
    out += page_differences(a.final, b.final, "[final] ", names)
    for label in sorted(set(a.resident) | set(b.resident)):
        if a.resident.get(label) != b.resident.get(label):
            out.append(f"[final] resident bytes of {label}: {names[0]} {a.resident.get(label)} "
                       f"!= {names[1]} {b.resident.get(label)}")
    return out


def page_differences(pa: dict, pb: dict, prefix: str, names) -> list[str]:
    out = []
    for key in sorted(set(pa) | set(pb)):
        ra, rb = pa.get(key, []), pb.get(key, [])
        label, _, first = key.partition("+")  # "T+504": a chunk starting at page 504
        for i in range(max(len(ra), len(rb))):
            x = ra[i] if i < len(ra) else None
            y = rb[i] if i < len(rb) else None
            if x != y:
                out.append(f"{prefix}{label}+{int(first or 0) + i}: {names[0]} {x} != {names[1]} {y}")
                if len(out) >= MAX_PAGE_DIFFS:
                    out.append(f"{prefix}... (more page differences)")
                    return out
    return out


# --- checking a record against the semantics document ------------------------------
def expectation_failures(record: Record, scenario: S.Scenario) -> list[str]:
    out = []
    for tag, want in scenario.expect.items():
        got = record.tagged.get(tag)
        if got is None:
            out.append(f"step {tag!r}: no such tagged step")
        elif not (got == want or (want == "ok" and got.startswith("ok"))):
            out.append(f"step {tag!r}: expected {want!r}, got {got!r}")
    for exp in scenario.pages:
        if len(out) >= MAX_PAGE_DIFFS:
            out.append("... (more)")
            break
        pages = record.final if exp.when is None else record.snapshots.get(exp.when, {})
        label, _, first = exp.at.partition("+")
        first = int(first or 0)
        for i in range(exp.count):
            rec = pages.get(label, [])[first + i] if first + i < len(pages.get(label, [])) else None
            where = f"{label}+{first + i}" + (f" at {exp.when}" if exp.when else "")
            if rec is None:
                out.append(f"{where}: not recorded")
                continue
            if exp.state is not None and rec.state != exp.state:
                out.append(f"{where}: expected state {exp.state}, got {rec}")
            if exp.huge is not None and rec.huge != exp.huge:
                out.append(f"{where}: expected huge={exp.huge}, got {rec}")
            if exp.origin is not ...:
                want = expected_origin(exp.origin, i)
                if rec.origin != want:
                    out.append(f"{where}: expected frame of {want}, got {rec}")
    return out


def expected_origin(origin: str | None, i: int) -> str:
    if origin is None:
        return "-"
    if origin == "zero":
        return "zero"
    if "#" in origin:  # a later frame of that page: names one page only
        return origin
    label, _, page = origin.partition("+")
    return f"{label}+{int(page or 0) + i}"
