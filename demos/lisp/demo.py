"""``remapgc demo lisp``: a garbage-heavy Lisp program running across many collections.

The program builds and discards lists every round (ranges, reversals, maps,
filters, folds, a tree), keeps one small result per round on a long-lived
list, and finally computes a recursive Fibonacci number. The heap is small
and set to collect by itself every few hundred KiB of allocation
(``collect_every``), and the driver also asks for an explicit ``(gc)`` every
few rounds. Every collection moves the program's
objects; the printed answer is checked against the one computed in Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.table import Table

from demos.common import KiB, MiB, DemoContext, DemoReport, fmt_bytes, fmt_count, fmt_ns, stats_dict
from demos.lisp.interpreter import Interpreter, LispError
from demos.lisp.layout import LispMemory


@dataclass(frozen=True)
class LispSize:
    rounds: int  # rounds of list building
    length: int  # elements of each round's list
    fib: int  # the final recursive function's argument
    heap_bytes: int
    collect_every: int  # the heap collects by itself after this many bytes allocated
    gc_every: int  # an explicit (gc) every this many rounds


SIZES = {
    "small": LispSize(rounds=12, length=60, fib=12, heap_bytes=1 * MiB, collect_every=128 * KiB, gc_every=4),
    "medium": LispSize(rounds=40, length=150, fib=16, heap_bytes=2 * MiB, collect_every=256 * KiB, gc_every=10),
    "large": LispSize(rounds=100, length=250, fib=18, heap_bytes=4 * MiB, collect_every=512 * KiB, gc_every=20),
}

LIBRARY = """
(define (range a b) (if (< a b) (cons a (range (+ a 1) b)) '()))
(define (map f xs) (if (null? xs) '() (cons (f (car xs)) (map f (cdr xs)))))
(define (filter keep? xs)
  (cond ((null? xs) '())
        ((keep? (car xs)) (cons (car xs) (filter keep? (cdr xs))))
        (else (filter keep? (cdr xs)))))
(define (fold f acc xs) (if (null? xs) acc (fold f (f acc (car xs)) (cdr xs))))
(define (reverse xs) (fold (lambda (acc x) (cons x acc)) '() xs))
(define (length xs) (fold (lambda (n x) (+ n 1)) 0 xs))
(define (even? n) (= (remainder n 2) 0))
(define (square x) (* x x))
(define (compose f g) (lambda (x) (f (g x))))
(define (fib n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2)))))
(define (tree depth) (if (= depth 0) 'leaf (cons (tree (- depth 1)) (tree (- depth 1)))))
(define (leaves t) (if (pair? t) (+ (leaves (car t)) (leaves (cdr t))) 1))
(define (label n)
  (let ((port (open-output-port)))
    (write-port port "round-")
    (write-port port n)
    (port-contents port)))
(define (round i n)
  (let ((xs (reverse (range 0 n))))
    (list (label i)
          (+ i (fold + 0 (map (compose square (lambda (x) (+ x i))) (filter even? xs))))
          (leaves (tree (remainder i 7))))))
(define (second r) (car (cdr r)))
(define (third r) (car (cdr (cdr r))))
(define results '())
"""

ROUND = """
(define results (cons (round {i} {length}) results))
(define last-tag (string->symbol (label {i})))
"""

SUMMARY = """
(list (length results)
      (fold + 0 (map second results))
      (fold + 0 (map third results))
      (car (car results))
      (fib {fib})
      'done)
"""


def expected_answer(size: LispSize) -> str:
    """What the program must print, computed directly in Python."""
    def fib(n: int) -> int:
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a

    evens = [x for x in range(size.length) if x % 2 == 0]
    squares = sum(i + sum((x + i) ** 2 for x in evens) for i in range(1, size.rounds + 1))
    leaves = sum(2 ** (i % 7) for i in range(1, size.rounds + 1))
    return f'({size.rounds} {squares} {leaves} "round-{size.rounds}" {fib(size.fib)} done)'


@dataclass
class CollectionLog:
    explicit: list[dict] = field(default_factory=list)

    def __call__(self, stats) -> None:
        self.explicit.append(stats_dict(stats))


@dataclass
class HeapTimeline:
    """The heap as the program runs: sampled every few hundred allocations."""

    heap: object
    allocations: list[int] = field(default_factory=list)
    heap_bytes: list[int] = field(default_factory=list)  # bytes of objects not yet found dead
    collections: list[int] = field(default_factory=list)

    def __call__(self, allocations: int) -> None:
        self.allocations.append(allocations)
        self.heap_bytes.append(int(self.heap.stats().live_bytes))
        self.collections.append(int(getattr(self.heap, "collections", 0)))


def run(ctx: DemoContext) -> DemoReport:
    size = SIZES[ctx.size]
    report = DemoReport("lisp", "a Lisp interpreter whose values live in the heap")
    log = CollectionLog()
    with ctx.heap(size=size.heap_bytes, collect_every=size.collect_every) as heap:
        timeline = HeapTimeline(heap)
        memory = LispMemory(heap, observe=timeline if ctx.plot is not None else None, observe_every=200)
        lisp = Interpreter(heap, on_collect=log, memory=memory)
        started = time.perf_counter_ns()
        try:
            answer = run_program(ctx, lisp, size)
        except LispError as exc:  # e.g. a value the heap did not keep intact: the program's own failure
            answer = f"error: {exc}"
        elapsed = time.perf_counter_ns() - started
        collections = total_collections(heap, log)
        final = heap.collect()
        lisp.close_dead_ports()
        report.check_raises_nothing("heap.verify() after the program", heap.verify)
        embedding = embedding_checks(report, lisp, size)

    expected = expected_answer(size)
    report.check("the program printed the known answer", answer == expected, answer)
    report.check("collections ran while the program ran",
                 collections["total"] >= 2 and (collections["automatic"] or 0) >= 1,
                 f"{collections['total']} collections: {collections['automatic']} automatic, "
                 f"{collections['explicit']} explicit (gc)")
    report.check("objects moved during collections",
                 any(s["pages_moved"] or s["bytes_copied"] for s in log.explicit),
                 "pages moved or bytes copied by the explicit collections")
    moved_pages = sum(s["pages_moved"] for s in log.explicit)
    copied = sum(s["bytes_copied"] for s in log.explicit)
    pauses = [s["pause_ns"] for s in log.explicit]
    report.metrics = {
        "answer": answer,
        "expected": expected,
        "allocations": lisp.memory.allocations,
        "collections": collections["total"],
        "automatic_collections": collections["automatic"],
        "explicit_collections": collections["explicit"],
        "heap_bytes": size.heap_bytes,
        "live_bytes_at_end": final.live_bytes,
        "live_objects_at_end": final.live_objects,
        "explicit_pages_moved": moved_pages,
        "explicit_bytes_copied": copied,
        "explicit_pause_ns_max": max(pauses, default=0),
        "explicit_pause_ns_mean": sum(pauses) // len(pauses) if pauses else 0,
        "elapsed_ns": elapsed,
        **embedding,
    }
    report.tables.append(summary_table(report.metrics))
    if ctx.plot is not None:
        from demos.plots import heap_timeline

        heap_timeline(timeline.allocations, timeline.heap_bytes, timeline.collections, ctx.plot,
                      title=f"remapgc lisp demo ({ctx.backend} backend): the interpreter's heap while the program "
                            f"runs\n{collections['total']} collections, answer {answer}")
        report.plot = str(ctx.plot)
    return report


def embedding_checks(report: DemoReport, lisp: Interpreter, size: LispSize) -> dict:
    """What the runtime gets from the heap besides memory (docs/embedding.md), checked after the
    final collection: ports closed by finalization, a weak symbol table, a pinned global table,
    fixnums as immediates."""
    report.check("the pinned global table kept its address through every collection",
                 lisp.globals.address == lisp.globals_address and lisp.heap.is_pinned(lisp.globals),
                 f"0x{lisp.globals_address:x} through {lisp.heap.collections} collections")
    number = lisp.run("(+ 40 2)")
    report.check("numbers are tagged immediates, not heap objects", type(number) is int and number == 42,
                 f"(+ 40 2) is {number!r}")
    report.check("every port was closed by finalization, once",
                 lisp.ports_opened > 0 and lisp.ports_closed == lisp.ports_opened and not lisp.ports,
                 f"{lisp.ports_opened} opened, {lisp.ports_closed} closed after their port died")
    interned = len(lisp.symbols)
    left = lisp.prune_symbols()
    last = f"round-{size.rounds}"
    again = lisp.run(f'(eq? last-tag (string->symbol "{last}"))')
    report.check("the weak symbol table let unused symbols go and kept the used one",
                 "round-1" not in lisp.symbols and last in lisp.symbols and again is not None,
                 f"{interned} names before pruning, {left} after; {last!r} still interned and eq?")
    return {"globals_address": lisp.globals_address, "ports_opened": lisp.ports_opened, "ports_closed_by_finalization": lisp.ports_closed,
            "symbols_interned_at_end": interned, "symbols_alive_at_end": left}


def run_program(ctx: DemoContext, lisp: Interpreter, size: LispSize) -> str:
    """The library, the rounds (with an explicit (gc) every few), the summary: what it prints."""
    lisp.run(LIBRARY)
    with ctx.progress() as progress:
        task = progress.add_task("lisp rounds", total=size.rounds)
        for i in range(1, size.rounds + 1):
            lisp.run(ROUND.format(i=i, length=size.length))
            if i % size.gc_every == 0:
                lisp.run("(gc)")
            progress.advance(task)
    return lisp.show(lisp.run(SUMMARY.format(fib=size.fib)))


def total_collections(heap, log: CollectionLog) -> dict[str, int | None]:
    """How many collections ran: the explicit ones, and the heap's own count (``Heap.collections``)."""
    explicit = len(log.explicit)
    counted = getattr(heap, "collections", None)
    if counted is None:
        return {"total": explicit, "explicit": explicit, "automatic": None}
    return {"total": int(counted), "explicit": explicit, "automatic": int(counted) - explicit}


def summary_table(m: dict) -> Table:
    table = Table(title="the program and its heap", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("answer", m["answer"])
    table.add_row("objects allocated", fmt_count(m["allocations"]))
    table.add_row("heap size", fmt_bytes(m["heap_bytes"]))
    automatic = "?" if m["automatic_collections"] is None else fmt_count(m["automatic_collections"])
    table.add_row("collections", f"{m['collections']} ({automatic} automatic, {m['explicit_collections']} explicit)")
    table.add_row("live at the end", f"{fmt_count(m['live_objects_at_end'])} objects, {fmt_bytes(m['live_bytes_at_end'])}")
    table.add_row("(gc) calls: pages moved, bytes copied",
                  f"{fmt_count(m['explicit_pages_moved'])}, {fmt_bytes(m['explicit_bytes_copied'])}")
    table.add_row("(gc) calls: pause mean, max",
                  f"{fmt_ns(m['explicit_pause_ns_mean'])}, {fmt_ns(m['explicit_pause_ns_max'])}")
    table.add_row("run time", fmt_ns(m["elapsed_ns"]))
    return table
