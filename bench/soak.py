"""Fault-injection soak: thousands of collections on the simulated kernel while
its fault plan makes UFFDIO_MOVE / COPY / ZEROPAGE fail at random steps.

One *scenario* is a seed: a fresh ``SimKernel(seed)`` and heap, a shadow model
of every object in Python, and ``cycles_per_seed`` rounds of

  mutate (allocate, write, link, drop roots) -> arm random fault rules ->
  collect (stop-the-world, or concurrent: the fault handler installing what
  the mutator touches, or the public ``collect(concurrent=True)`` with a
  mutator thread) -> disarm -> ``verify()`` -> check every reachable object's
  bytes and every slot's target against the model.

A collection may end in ``CompactionAborted`` (ENOMEM, EINTR, EAGAIN that
persists): that is the clean error, and the heap must then still verify,
keep every object, and allocate and collect again. Anything else (an
unexpected exception, a HeapCorrupted, a model mismatch) is a failure,
printed with the seed and cycle that replays it::

    python -m bench.soak --cycles 10000          # the full soak
    python -m bench.soak --seed 1234 --verbose   # replay one scenario

Injected faults are counted by the errno the heap saw (a recording proxy
around the heap's userfaultfd): EAGAIN partial (moved > 0), EAGAIN 0, EEXIST,
EBUSY, ENOENT, ENOMEM, EINTR. ENOENT comes from MOVEs without
UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES meeting a never-touched page: the
concurrent fault handler's own MOVEs, and stop-the-world MOVEs from which the
proxy strips that flag at random (as a kernel without it would behave).

Deterministic per seed except the ``threaded`` mode (thread interleavings).
Writes bench/results/soak.json.

``--kernel linux`` runs the same cycles on the real kernel, with no
simulator: before a MOVE of the heap's, ``bench.realfaults.RealFaults``
makes Linux itself refuse it (EBUSY: a forked child maps the pages; EEXIST:
another thread moved the first page first). ENOMEM from a memory cgroup is
tested apart (bench.realfaults says why). Writes bench/results/soak_linux.json.
"""

from __future__ import annotations

import argparse
import errno as E
import faulthandler
import json
import logging
import random
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from heap import Heap
from heap.concurrent import begin_concurrent, end_concurrent
from heap.errors import CompactionAborted
from heap.kernel import UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UffdError, open_kernel
from bench.realfaults import RealFaults
from bench.wrappers import KernelWrapper, UffdWrapper
from sim_backend import FaultPlan, FaultRule, SimKernel

FAULT_KINDS = ("EAGAIN partial", "EAGAIN 0", "EEXIST", "EBUSY", "ENOENT", "ENOMEM", "EINTR")
MODES = ("stw", "handler", "threaded")  # how a cycle collects
# the plan's outcomes and the ops they may target (pinned/unreported_move: MOVE only)
# ("dst_populated" is left out: it fills a to-space page from outside the heap,
# which cannot happen to it -- the arena is registered MISSING and user-mode
# only, so only the heap's own installers fill it; the heap must call that
# HeapCorrupted, tested in tests/reliability/test_soak.py. The EEXIST the heap
# really meets is the 6.18 unreported move and two installers racing.)
RULE_MENU = (("race", ("move", "copy", "zeropage")),
             ("enomem", ("move", "copy", "zeropage")), ("fatal_signal", ("move", "copy", "zeropage")),
             ("mmap_changing", ("move", "copy", "zeropage")), ("pinned", ("move",)),
             ("unreported_move", ("move",)))
# only MOVEs refused or cut short: what the compactor thread and the fault handler
# race over (a chunk put back while the handler claims its pages); it found the
# threaded claim bug ~1 cycle in 750, against ~1 in 8,000 with the whole menu
MOVE_MENU = tuple((outcome, ("move",)) for outcome in
                  ("race", "enomem", "fatal_signal", "mmap_changing", "pinned", "unreported_move"))
MENUS = {"all": RULE_MENU, "moves": MOVE_MENU}
HEAP_BYTES = 16 << 20
JOIN_S = 30.0
CYCLE_WATCHDOG_S = 60.0  # a cycle still running then is a hang: dump stacks, close the uffd (wakes the blocked)
RESULTS = Path(__file__).parent / "results" / "soak.json"


class SoakFailure(AssertionError):
    """The heap lost or corrupted something, or failed unclean; replay with the seed."""


def fault_kind(exc: UffdError) -> str:
    if exc.errno == E.EAGAIN:
        return "EAGAIN partial" if exc.moved > 0 else "EAGAIN 0"
    return E.errorcode.get(exc.errno, str(exc.errno))


class RecordingKernel(KernelWrapper):
    """The heap's kernel: every userfaultfd the heap opens is a ``RecordingUffd``
    that counts each error it returns by kind and may drop ALLOW_SRC_HOLES from
    a MOVE (seeded) so source holes give ENOENT."""

    def __init__(self, inner, rng: random.Random, faults: Counter, by_op: Counter):
        super().__init__(inner)
        self.rng = rng
        self.lock = threading.Lock()
        self.faults = faults
        self.by_op = by_op
        self.strip_holes = 0.0  # chance a MOVE loses ALLOW_SRC_HOLES (set per cycle)
        self.real: RealFaults | None = None  # on the real kernel: the refusals arranged before a MOVE
        self.uffd: RecordingUffd | None = None  # the one the heap opened last

    def wrap_uffd(self, uffd) -> "RecordingUffd":
        self.uffd = RecordingUffd(uffd, self)
        return self.uffd


class RecordingUffd(UffdWrapper):
    """A userfaultfd whose MOVE, COPY and ZEROPAGE errors are counted by the
    recorder (no accelerator: every install is a call through here)."""

    def __init__(self, inner, recorder: RecordingKernel):
        super().__init__(inner)
        self.recorder = recorder

    def _mode(self, mode: int) -> int:
        rec = self.recorder
        if mode & UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES and rec.strip_holes:
            with rec.lock:
                if rec.rng.random() < rec.strip_holes:
                    return mode & ~UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES
        return mode

    def _call(self, op, fn, *args):
        try:
            return fn(*args)
        except UffdError as exc:
            rec = self.recorder
            with rec.lock:
                rec.faults[fault_kind(exc)] += 1
                rec.by_op[f"{op} {fault_kind(exc)}"] += 1
            raise

    def _real(self, fn):
        """``fn`` with the real kernel's refusals arranged first (bench.realfaults), when armed."""
        real = self.recorder.real
        if real is None or not real.rules:
            return fn
        return lambda dsts, srcs, lengths, mode: real.move(self.inner, lambda: fn(dsts, srcs, lengths, mode),
                                                           dsts, srcs, lengths, mode)

    def move(self, dst, src, length, mode=0):
        return self._call("move", self._real(self.inner.move), dst, src, length, self._mode(mode))

    def move_ranges(self, dsts, srcs, lengths, mode=0):
        # the inner batched call (as the heap makes it), its error recorded once
        return self._call("move", self._real(self.inner.move_ranges), dsts, srcs, lengths, self._mode(mode))

    def copy(self, dst, src, length, mode=0):
        return self._call("copy", self.inner.copy, dst, src, length, mode)

    def zeropage(self, dst, length, mode=0):
        return self._call("zeropage", self.inner.zeropage, dst, length, mode)


@dataclass
class Obj:
    oid: int
    nbytes: int
    nrefs: int
    body: bytearray  # the payload as the model knows it
    refs: list  # oid or None per slot


@dataclass
class Tally:
    cycles: int = 0
    by_mode: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)  # injected faults the heap saw, by kind
    faults_by_op: Counter = field(default_factory=Counter)  # the same by ioctl: "zeropage EEXIST"...
    rules_fired: Counter = field(default_factory=Counter)  # fault-plan outcomes that fired
    clean_errors: Counter = field(default_factory=Counter)  # CompactionAborted, by errno name
    objects_checked: int = 0
    losses: int = 0
    failures: list = field(default_factory=list)  # {"seed", "cycle", "mode", "error"}

    def merge(self, other: "Tally") -> None:
        self.cycles += other.cycles
        self.objects_checked += other.objects_checked
        self.losses += other.losses
        self.failures += other.failures
        for name in ("by_mode", "faults", "faults_by_op", "rules_fired", "clean_errors"):
            getattr(self, name).update(getattr(other, name))

    def as_dict(self) -> dict:
        return {"cycles": self.cycles, "by_mode": dict(self.by_mode),
                "injected_faults": {k: self.faults.get(k, 0) for k in FAULT_KINDS},
                "errors_by_ioctl": dict(sorted(self.faults_by_op.items())), "rules_fired": dict(self.rules_fired), "clean_errors": dict(self.clean_errors),
                "objects_checked": self.objects_checked, "losses": self.losses, "failures": self.failures}


class Scenario:
    """One seed: a heap on a SimKernel (or the real kernel), its shadow model, and its cycles."""

    def __init__(self, seed: int, *, modes=MODES, menu: str = "all", verbose: bool = False, kernel: str = "sim"):
        self.seed = seed
        self.rng = random.Random(seed)
        self.modes = modes
        self.menu = MENUS[menu]  # the fault rules to draw from
        self.verbose = verbose
        self.tally = Tally()
        sim_thp = self.rng.random() < 0.3
        self.kernel = SimKernel(seed=seed, thp=sim_thp) if kernel == "sim" else open_kernel(kernel)
        # every install of every compactor goes through the recorder's userfaultfd
        self.recorder = RecordingKernel(self.kernel, random.Random(seed ^ 0x5EED), self.tally.faults,
                                        self.tally.faults_by_op)
        if kernel != "sim":
            self.recorder.real = RealFaults(self.kernel)
        self.heap = Heap(kernel=self.recorder, size=HEAP_BYTES, compactor="remap", thp=self.rng.random() < 0.2)
        self.objs: dict[int, Obj] = {}
        self.roots: dict[int, object] = {}  # oid -> Ref
        self.next_oid = 0

    def close(self) -> None:
        self.roots.clear()
        self.heap.close()
        if self.recorder.real is not None:
            self.kernel.close()

    def say(self, *args) -> None:
        if self.verbose:
            print(f"[seed {self.seed}]", *args, flush=True)

    # -- mutation (the model changes only after the heap call succeeded) -------------------
    def alloc(self) -> None:
        r = self.rng.random()
        if r < 0.75:
            nbytes = self.rng.randrange(8, 400)
        elif r < 0.95:
            nbytes = self.rng.randrange(3000, 30000)  # owns pages
        else:
            nbytes = self.rng.randrange(60000, 300000)  # many pages, mostly never touched: source holes
        nrefs = self.rng.randrange(0, 4)
        ref = self.heap.alloc(nbytes, nrefs)
        oid = self.next_oid
        self.next_oid += 1
        obj = Obj(oid, nbytes, nrefs, bytearray(nbytes), [None] * nrefs)
        self.objs[oid] = obj
        self.roots[oid] = ref
        self.write(oid, whole=nbytes < 4096 or self.rng.random() < 0.5)

    def write(self, oid: int, whole: bool = False) -> None:
        obj = self.objs[oid]
        if not obj.nbytes:
            return
        stamp = oid.to_bytes(8, "little")
        if whole:
            off, data = 0, (stamp + self.rng.randbytes(obj.nbytes))[:obj.nbytes]
        else:
            off = self.rng.randrange(obj.nbytes)
            data = self.rng.randbytes(min(self.rng.randrange(1, 64), obj.nbytes - off))
        self.roots[oid].write(data, offset=off)
        obj.body[off:off + len(data)] = data

    def link(self, oid: int) -> None:
        obj = self.objs[oid]
        if not obj.nrefs:
            return
        slot = self.rng.randrange(obj.nrefs)
        target = self.rng.choice(list(self.roots)) if self.rng.random() < 0.85 else None
        self.roots[oid].set_ref(slot, None if target is None else self.roots[target])
        obj.refs[slot] = target

    def mutate(self, steps: int) -> None:
        for _ in range(steps):
            r = self.rng.random()
            if r < 0.3 or not self.roots:
                self.alloc()
                continue
            oid = self.rng.choice(list(self.roots))
            if r < 0.5:
                self.write(oid)
            elif r < 0.8:
                self.link(oid)
            elif r < 0.9:
                self.read_check(oid)
            else:
                del self.roots[oid]  # the object lives on only if a slot holds it

    def read_check(self, oid: int) -> None:
        obj = self.objs[oid]
        got = self.roots[oid].read(obj.nbytes)
        if got != obj.body:
            raise SoakFailure(f"object {oid} reads differently from the model during the cycle")

    # -- faults ---------------------------------------------------------------------------
    def arm(self) -> None:
        if self.recorder.real is not None:
            self.recorder.real.arm(self.rng)
            return
        rules = []
        for _ in range(self.rng.choice((0, 1, 1, 2, 3))):
            outcome, ops = self.rng.choice(self.menu)
            op = ops[0] if self.rng.random() < 0.7 else self.rng.choice(ops)
            rules.append(FaultRule(outcome, op=op, call=None, page=None,
                                   probability=self.rng.choice((0.2, 0.5, 1.0)), times=self.rng.randrange(1, 4)))
        self.kernel.fault_plan = FaultPlan(rules, seed=self.rng.randrange(1 << 30))
        self.recorder.strip_holes = self.rng.choice((0.0, 0.0, 0.5))

    last_fired: list = []  # the rules that fired in the last cycle (reported with a failure)

    def disarm(self) -> None:
        if self.recorder.real is not None:
            fired = self.recorder.real.disarm()
            self.last_fired = [f"{outcome} x{n}" for outcome, n in fired.items()]
            for outcome, n in fired.items():
                self.tally.rules_fired[f"real {outcome}"] += n
            return
        self.last_fired = [f"{f.outcome}@{f.op}#{f.call}:p{f.page}" for f in self.kernel.fault_plan.fired]
        for f in self.kernel.fault_plan.fired:
            self.tally.rules_fired[f.outcome] += 1
        self.kernel.fault_plan = FaultPlan(seed=0)
        self.recorder.strip_holes = 0.0

    # -- collection -------------------------------------------------------------------------
    def collect(self, mode: str):
        if mode == "stw":
            return self.heap.collect()
        if mode == "handler":  # only the fault handler installs until the end: every touch faults
            cycle, stats, finish = begin_concurrent(self.heap, run_compactor=False)
            if cycle is None:
                finish()
                return stats
            try:
                self.touch_some()
            finally:
                end_concurrent(self.heap, cycle)
            return stats
        result: dict = {}

        def run():
            try:
                result["stats"] = self.heap.collect(concurrent=True)
            except BaseException as exc:  # handed to the caller
                result["error"] = exc

        t = threading.Thread(target=run, name="soak-collect", daemon=True)
        t.start()
        try:
            self.touch_some()
        finally:
            t.join(JOIN_S)
        if t.is_alive():
            raise SoakFailure(f"collect(concurrent=True) did not return in {JOIN_S} s")
        if "error" in result:
            raise result["error"]
        return result["stats"]

    def touch_some(self) -> None:
        """Mutator work inside a concurrent cycle: reads (faults) and writes."""
        for _ in range(self.rng.randrange(1, 12)):
            if not self.roots:
                return
            oid = self.rng.choice(list(self.roots))
            if self.rng.random() < 0.7:
                self.read_check(oid)
            else:
                self.write(oid)

    # -- checking -----------------------------------------------------------------------------
    def reachable(self) -> set[int]:
        seen, todo = set(), list(self.roots)
        while todo:
            oid = todo.pop()
            if oid in seen:
                continue
            seen.add(oid)
            todo.extend(t for t in self.objs[oid].refs if t is not None)
        return seen

    def check_all(self) -> int:
        """Every object reachable in the model, reached through the heap from the
        roots, has the model's bytes and slots; returns how many were checked.
        Mismatches count as losses and raise SoakFailure."""
        lost: list[str] = []
        at: dict[int, int] = {}  # oid -> address it was found at
        todo = [(oid, ref) for oid, ref in self.roots.items()]
        while todo:
            oid, ref = todo.pop()
            addr = ref.address
            if oid in at:
                if at[oid] != addr:
                    lost.append(f"object {oid} found at two addresses 0x{at[oid]:x} and 0x{addr:x}")
                continue
            at[oid] = addr
            obj = self.objs[oid]
            if (ref.nbytes, ref.nrefs) != (obj.nbytes, obj.nrefs):
                lost.append(f"object {oid} has shape {(ref.nbytes, ref.nrefs)}, expected {(obj.nbytes, obj.nrefs)}")
                continue
            if ref.read(obj.nbytes) != obj.body:
                lost.append(f"object {oid}: payload differs from the model")
            for slot, want in enumerate(obj.refs):
                got = ref.get_ref(slot)
                if want is None:
                    if got is not None:
                        lost.append(f"object {oid} slot {slot} holds 0x{got.address:x}, expected None")
                elif got is None:
                    lost.append(f"object {oid} slot {slot} is None, expected object {want}")
                else:
                    todo.append((want, got))
        missing = self.reachable() - set(at)
        lost += [f"object {oid} is reachable in the model but not through the heap" for oid in sorted(missing)]
        self.tally.objects_checked += len(at)
        if lost:
            self.tally.losses += len(lost)
            raise SoakFailure("; ".join(lost[:5]) + (f" (+{len(lost) - 5} more)" if len(lost) > 5 else ""))
        return len(at)

    def forget_dead(self) -> None:
        live = self.reachable()
        for oid in list(self.objs):
            if oid not in live:
                del self.objs[oid]

    # -- one cycle ---------------------------------------------------------------------------
    def cycle(self, index: int) -> None:
        dog = threading.Timer(CYCLE_WATCHDOG_S, self._hung, args=(index,))
        dog.daemon = True
        dog.start()
        try:
            self._cycle(index)
        finally:
            dog.cancel()
        if self.hung:
            raise SoakFailure(f"cycle {index} hung for {CYCLE_WATCHDOG_S} s (stacks dumped to stderr)")

    hung = False

    def _hung(self, index: int) -> None:
        self.hung = True
        print(f"HANG seed={self.seed} cycle={index}: dumping stacks, closing the userfaultfd", flush=True)
        faulthandler.dump_traceback(all_threads=True)
        try:
            self.recorder.uffd.inner.close()  # wakes every blocked faulter: it re-faults without userfaultfd
        except OSError:
            pass

    mode = ""

    def _cycle(self, index: int) -> None:
        mode = self.mode = self.rng.choice(self.modes)
        self.tally.by_mode[mode] += 1
        self.tally.cycles += 1
        self.mutate(self.rng.randrange(5, 40))
        expected_live = len(self.reachable())
        self.arm()
        aborted = None
        try:
            stats = self.collect(mode)
        except CompactionAborted as exc:  # the clean error: the heap must stay whole
            aborted = exc
            stats = None
        finally:
            self.disarm()
        if aborted is not None:
            name = E.errorcode.get(aborted.errno, str(aborted.errno))
            self.tally.clean_errors[name] += 1
            self.say(f"cycle {index} ({mode}): clean error {name}: {aborted}")
        elif mode != "threaded" and stats.live_objects < expected_live:
            raise SoakFailure(f"the collection kept {stats.live_objects} objects, the model has {expected_live} "
                              "reachable")
        self.heap.verify()  # installs what an aborted cycle left pending, then checks every invariant
        n = self.check_all()
        self.forget_dead()
        self.say(f"cycle {index} ({mode}): ok, {n} objects checked, faults so far {dict(self.tally.faults)}")
        if aborted is not None:  # still fully usable: allocate and collect once more, with no faults
            self.alloc()
            self.heap.collect()
            self.heap.verify()
            self.check_all()


def run_seed(seed: int, cycles: int, *, modes=MODES, menu: str = "all", verbose: bool = False,
             kernel: str = "sim") -> Tally:
    """Run one scenario; a failure is recorded (with its seed and cycle), not raised."""
    sc = None
    index = -1
    try:
        sc = Scenario(seed, modes=modes, menu=menu, verbose=verbose, kernel=kernel)
        for index in range(cycles):
            sc.cycle(index)
    except Exception as exc:
        tally = sc.tally if sc is not None else Tally()
        tally.failures.append({"seed": seed, "cycle": index, "error": f"{type(exc).__name__}: {exc}",
                               "fired": sc.last_fired if sc is not None else [],
                               "mode": sc.mode if sc is not None else "",
                               "traceback": traceback.format_exc(limit=12)})
        if isinstance(exc, SoakFailure) and not tally.losses:
            tally.losses += 1
        return tally
    finally:
        if sc is not None:
            try:
                sc.close()
            except Exception:
                pass
    return sc.tally


def soak(total_cycles: int, *, cycles_per_seed: int = 20, first_seed: int = 0, modes=MODES, menu: str = "all",
         progress=None, kernel: str = "sim") -> Tally:
    tally = Tally()
    seed = first_seed
    while tally.cycles < total_cycles:
        n = min(cycles_per_seed, total_cycles - tally.cycles)
        # a failure ends its seed early: the next seeds make up the count
        t = run_seed(seed, n, modes=modes, menu=menu, kernel=kernel)
        if t.cycles == 0 and not t.failures:
            raise RuntimeError(f"seed {seed} ran no cycle and reported no failure")
        tally.merge(t)
        for f in t.failures:
            print(f"FAILURE seed={f['seed']} cycle={f['cycle']} ({f['mode']}, fired {f['fired']}): {f['error']}\n"
                  f"  replay: python -m bench.soak --seed {f['seed']} --cycles {n} --modes {' '.join(modes)} "
                  f"--menu {menu} --verbose", flush=True)
        if progress:
            progress(tally, seed)
        seed += 1
    return tally


def report(tally: Tally, elapsed: float, args) -> dict:
    from rich.console import Console
    from rich.table import Table

    out = tally.as_dict()
    command = f"python -m bench.soak --cycles {args.cycles}" + (f" --kernel {args.kernel}" if args.kernel != "sim" else "")
    if tuple(args.modes) != MODES or args.menu != "all" or args.first_seed:
        command += f" --modes {' '.join(args.modes)} --menu {args.menu} --first-seed {args.first_seed}"
    out.update(elapsed_s=round(elapsed, 1), command=command, cycles_per_seed=args.cycles_per_seed,
               first_seed=args.first_seed, modes=list(args.modes), menu=args.menu, kernel=args.kernel)
    table = Table(title=f"remapgc fault-injection soak ({args.kernel})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("cycles", str(tally.cycles))
    for mode in MODES:
        table.add_row(f"  cycles {mode}", str(tally.by_mode.get(mode, 0)))
    for kind in FAULT_KINDS:
        table.add_row(f"injected {kind} (errors the heap saw)", str(tally.faults.get(kind, 0)))
    for outcome, n in sorted(tally.rules_fired.items()):
        table.add_row(f"  plan rule fired: {outcome}", str(n))
    for name, n in sorted(tally.clean_errors.items()):
        table.add_row(f"clean CompactionAborted {name}", str(n))
    table.add_row("objects checked", str(tally.objects_checked))
    table.add_row("losses", str(tally.losses))
    table.add_row("failures", str(len(tally.failures)))
    table.add_row("elapsed s", f"{elapsed:.1f}")
    Console().print(table)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--cycles-per-seed", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, help="replay one scenario (prints each cycle)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--menu", default="all", choices=sorted(MENUS),
                    help="fault rules to draw from: all, or moves (MOVEs refused or cut short only)")
    ap.add_argument("--kernel", default="sim", choices=("sim", "linux"),
                    help="linux: the real kernel, its refusals arranged by bench.realfaults (no simulator)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.out = args.out or (RESULTS if args.kernel == "sim" else RESULTS.with_name(f"soak_{args.kernel}.json"))
    logging.basicConfig(level=logging.ERROR)  # the heap's errors on stderr; its warnings and events not
    if args.seed is not None:
        t = run_seed(args.seed, args.cycles if args.cycles != 10000 else args.cycles_per_seed, modes=args.modes,
                     menu=args.menu, verbose=True, kernel=args.kernel)
        print(json.dumps(t.as_dict(), indent=1))
        return 1 if t.failures else 0
    t0 = time.perf_counter()
    last = [t0]

    def progress(tally: Tally, seed: int) -> None:
        now = time.perf_counter()
        if args.verbose or now - last[0] > 30:
            last[0] = now
            print(f"  {tally.cycles} cycles, seed {seed}, losses {tally.losses}, {now - t0:.0f} s", flush=True)

    tally = soak(args.cycles, cycles_per_seed=args.cycles_per_seed, first_seed=args.first_seed,
                 modes=tuple(args.modes), menu=args.menu, progress=progress, kernel=args.kernel)
    out = report(tally, time.perf_counter() - t0, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if tally.failures or tally.losses else 0


if __name__ == "__main__":
    raise SystemExit(main())
