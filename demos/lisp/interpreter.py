"""The Lisp runtime: compiles syntax to Python closures that compute on heap values.

Only code lives in Python (one closure per syntax node, resolved once:
variables become (depth, slot) addresses). Every value a program computes is
a heap object, and the interpreter's state is held through ``Ref`` handles,
which are the heap's roots:

* the environment of each call in progress (a FRAME object, its parent chain
  reached through reference slots) and the argument lists being built — the
  Python locals of the closures below, i.e. the interpreter's stack;
* the global table (one TABLE object, pinned: its address never changes);
* the constants of the compiled code (quoted data, numeric literals).

The symbol table holds its symbols *weakly* (``Heap.weakref``): a symbol lives
as long as something in the program or its code reaches it, and interning
the same name again while it lives gives the same object (``eq?``). Ports
(``open-output-port``) stand for resources outside the heap; each is
registered for finalization and its resource is closed once a collection
found the port dead.

Calls in tail position return a ``TailCall`` to the caller's ``apply`` loop,
so loops written as tail recursion run in constant Python stack.

Supported: numbers, strings, symbols, ``quote``, ``if``, ``cond``, ``and``,
``or``, ``let``, ``begin``, ``lambda``, top-level ``define`` (also
``(define (f x ...) body ...)``), and the builtins in ``BUILTINS``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from typing import Callable

from demos.lisp.layout import LispMemory, LispOverflow, Tag
from demos.lisp.printer import to_text
from demos.lisp.reader import String, Symbol, Syntax, read_all
from heap.weak import WeakRef

Value = object  # a heap Ref, or None for the empty list
Compiled = Callable[[Value], Value]  # env -> value (or TailCall in tail position)


class LispError(Exception):
    pass


@dataclass(slots=True)
class TailCall:
    procedure: Value
    args: list


@dataclass(frozen=True)
class Code:
    name: str
    nparams: int
    body: Compiled


@dataclass(frozen=True)
class Builtin:
    name: str
    function: Callable  # (interpreter, *args) -> value
    arity: int | None  # None: any number


# --- builtins -----------------------------------------------------------------------
def _numbers(lisp: "Interpreter", name: str, args) -> list[int]:
    numbers = [lisp.memory.fixnum_value(arg) for arg in args]
    if any(n is None for n in numbers):
        raise LispError(f"{name}: expected numbers, got {' '.join(lisp.show(a) for a in args)}")
    return numbers


def _arithmetic(name: str, fold: Callable[[list[int]], int]) -> Builtin:
    def arithmetic(lisp, *args):
        try:
            return lisp.memory.fixnum(fold(_numbers(lisp, name, args)))
        except LispOverflow as exc:
            raise LispError(f"{name}: {exc}") from None

    return Builtin(name, arithmetic, None)


def _comparison(name: str, holds: Callable[[int, int], bool]) -> Builtin:
    def compare(lisp, *args):
        numbers = _numbers(lisp, name, args)
        return lisp.boolean(all(holds(a, b) for a, b in zip(numbers, numbers[1:])))

    return Builtin(name, compare, None)


def _subtract(numbers: list[int]) -> int:
    return -numbers[0] if len(numbers) == 1 else numbers[0] - sum(numbers[1:])


def _product(numbers: list[int]) -> int:
    result = 1
    for n in numbers:
        result *= n
    return result


def _field(lisp, value, slot: int, name: str):
    if lisp.memory.tag(value) is not Tag.CONS:
        raise LispError(f"{name}: not a pair: {lisp.show(value)}")
    return value.get_slot(slot)


def _list(lisp, *args):
    result = None
    for item in reversed(args):
        result = lisp.memory.cons(item, result)
    return result


def _text_of(lisp, value, tag: Tag, name: str) -> str:
    if lisp.memory.tag(value) is not tag:
        raise LispError(f"{name}: expected a {tag.name.lower()}, got {lisp.show(value)}")
    return lisp.memory.text(value)


def _same(lisp, a, b) -> bool:
    # fixnums are immediates (eq? when equal), Refs compare by object identity, None is None
    return a == b


BUILTINS: tuple[Builtin, ...] = (
    _arithmetic("+", sum),
    _arithmetic("-", _subtract),
    _arithmetic("*", _product),
    Builtin("quotient", lambda lisp, a, b: lisp.memory.fixnum(_quotient(*_numbers(lisp, "quotient", (a, b)))), 2),
    Builtin("remainder", lambda lisp, a, b: lisp.memory.fixnum(_remainder(*_numbers(lisp, "remainder", (a, b)))), 2),
    _comparison("=", lambda a, b: a == b),
    _comparison("<", lambda a, b: a < b),
    _comparison(">", lambda a, b: a > b),
    _comparison("<=", lambda a, b: a <= b),
    _comparison(">=", lambda a, b: a >= b),
    Builtin("cons", lambda lisp, a, b: lisp.memory.cons(a, b), 2),
    Builtin("car", lambda lisp, p: _field(lisp, p, 0, "car"), 1),
    Builtin("cdr", lambda lisp, p: _field(lisp, p, 1, "cdr"), 1),
    Builtin("list", _list, None),
    Builtin("null?", lambda lisp, v: lisp.boolean(v is None), 1),
    Builtin("pair?", lambda lisp, v: lisp.boolean(lisp.memory.tag(v) is Tag.CONS), 1),
    Builtin("not", lambda lisp, v: lisp.boolean(v is None), 1),
    Builtin("eq?", lambda lisp, a, b: lisp.boolean(_same(lisp, a, b)), 2),
    Builtin("string-append", lambda lisp, *parts: lisp.memory.string(
        "".join(_text_of(lisp, p, Tag.STRING, "string-append") for p in parts)), None),
    Builtin("string-length", lambda lisp, s: lisp.memory.fixnum(
        len(_text_of(lisp, s, Tag.STRING, "string-length"))), 1),
    Builtin("number->string", lambda lisp, n: lisp.memory.string(str(_numbers(lisp, "number->string", (n,))[0])), 1),
    Builtin("symbol->string", lambda lisp, s: lisp.memory.string(_text_of(lisp, s, Tag.SYMBOL, "symbol->string")), 1),
    Builtin("string->symbol", lambda lisp, s: lisp.intern(_text_of(lisp, s, Tag.STRING, "string->symbol")), 1),
    Builtin("open-output-port", lambda lisp: lisp.open_port(), 0),
    Builtin("write-port", lambda lisp, p, v: lisp.write_port(p, v), 2),
    Builtin("port-contents", lambda lisp, p: lisp.memory.string(lisp.port_buffer(p).getvalue()), 1),
    Builtin("gc", lambda lisp: lisp.collect(), 0),
)


def _quotient(a: int, b: int) -> int:
    if b == 0:
        raise LispError("quotient: division by zero")
    q = abs(a) // abs(b)  # truncates toward zero, like Scheme's quotient
    return q if (a < 0) == (b < 0) else -q


def _remainder(a: int, b: int) -> int:
    return a - b * _quotient(a, b)


# --- the interpreter --------------------------------------------------------------------
class Interpreter:
    """A Lisp runtime embedded on a remapgc ``Heap``."""

    GLOBALS_CAPACITY = 64

    def __init__(self, heap, *, on_collect: Callable[[object], None] | None = None,
                 memory: LispMemory | None = None):
        self.heap = heap
        self.memory = memory or LispMemory(heap)
        self.on_collect = on_collect
        self.codes: list[Code] = []
        self.symbols: dict[str, WeakRef] = {}  # the symbol table: weak, a symbol lives while it is used
        self._symbols_pruned_at = 0
        self.ports: dict[int, io.StringIO] = {}  # open ports' resources, by port number
        self.ports_opened = 0
        self.ports_closed = 0  # by finalization
        self.global_index: dict[str, int] = {}
        self.defined: list[bool] = []
        self.globals = self.memory.table(self.GLOBALS_CAPACITY)  # a root: every global is reached from it
        self._pin_globals()
        self.true = self.intern("t")
        for number, builtin in enumerate(BUILTINS):
            self._define_global(builtin.name, self.memory.builtin(number))

    def _pin_globals(self) -> None:
        """The global table is pinned (Heap.pin): its address, handed out once, stays
        valid however often the heap compacts -- what a runtime does for a table
        native code reads directly. Allocated early, it sits low in the arena."""
        self.heap.pin(self.globals)
        self.globals_address = self.globals.address

    # -- values ---------------------------------------------------------------------------
    def intern(self, name: str) -> Value:
        held = self.symbols.get(name)
        symbol = held.get() if held is not None else None
        if symbol is None:
            symbol = self.memory.symbol(name)
            self.symbols[name] = self.heap.weakref(symbol)
            if len(self.symbols) > 2 * self._symbols_pruned_at + 64:
                self.prune_symbols()
        return symbol

    def prune_symbols(self) -> int:
        """Forget the names whose symbols died; how many are left."""
        for name in [n for n, w in self.symbols.items() if not w.alive]:
            del self.symbols[name]
        self._symbols_pruned_at = len(self.symbols)
        return len(self.symbols)

    # -- ports: resources outside the heap, closed by finalization ---------------------------
    def open_port(self) -> Value:
        self.close_dead_ports()
        number = self.ports_opened
        self.ports_opened += 1
        port = self.memory.port(number)
        self.ports[number] = io.StringIO()
        self.heap.finalize(port, number)  # the token is the number, never the port itself
        return port

    def port_buffer(self, port: Value) -> io.StringIO:
        if self.memory.tag(port) is not Tag.PORT:
            raise LispError(f"not a port: {self.show(port)}")
        return self.ports[self.memory.tag_and_word(port)[1]]

    def write_port(self, port: Value, value: Value) -> Value:
        buffer = self.port_buffer(port)
        buffer.write(self.memory.text(value) if self.memory.tag(value) is Tag.STRING else self.show(value))
        return port

    def close_dead_ports(self) -> int:
        """Close the resources of the ports collections found dead; how many."""
        numbers = self.heap.finalized()
        for number in numbers:
            self.ports.pop(number).close()
        self.ports_closed += len(numbers)
        return len(numbers)

    def boolean(self, holds: bool) -> Value:
        return self.true if holds else None

    def show(self, value: Value) -> str:
        return to_text(self.memory, value)

    def collect(self) -> Value:
        stats = self.heap.collect()
        self.close_dead_ports()
        if self.on_collect is not None:
            self.on_collect(stats)
        return None

    def constant(self, datum: Syntax) -> Value:
        """Syntax -> the heap value it denotes (for literals and quoted data)."""
        if isinstance(datum, bool):
            raise LispError("booleans are not Lisp syntax here")
        if isinstance(datum, int):
            return self.memory.fixnum(datum)
        if isinstance(datum, String):
            return self.memory.string(datum)
        if isinstance(datum, Symbol):
            return self.intern(datum)
        result = None
        for item in reversed(datum):
            result = self.memory.cons(self.constant(item), result)
        return result

    # -- globals ----------------------------------------------------------------------------
    def _global_slot(self, name: str) -> int:
        slot = self.global_index.get(name)
        if slot is None:
            slot = self.global_index[name] = len(self.defined)
            self.defined.append(False)
            self._ensure_capacity(len(self.defined))
        return slot

    def _ensure_capacity(self, needed: int) -> None:
        capacity = self.globals.nrefs
        if needed <= capacity:
            return
        bigger = self.memory.table(capacity * 2)
        for slot in range(capacity):
            bigger.set_slot(slot, self.globals.get_slot(slot))
        self.heap.unpin(self.globals)
        self.globals = bigger
        self._pin_globals()

    def _define_global(self, name: str, value: Value) -> None:
        slot = self._global_slot(name)
        self.globals.set_slot(slot, value)
        self.defined[slot] = True

    # -- running ---------------------------------------------------------------------------
    def run(self, text: str) -> Value:
        """Evaluate every top-level form of ``text``; the last one's value."""
        result = None
        with deep_recursion():
            for form in read_all(text):
                result = None  # drop the previous value (it is garbage unless reachable)
                result = self.compile(form, scope=(), tail=False)(None)
        return result

    def apply(self, procedure: Value, args: list) -> Value:
        while True:
            if procedure is None:
                raise LispError("cannot call the empty list")
            tag, number = self.memory.tag_and_word(procedure)
            if tag == Tag.BUILTIN:
                builtin = BUILTINS[number]
                if builtin.arity is not None and len(args) != builtin.arity:
                    raise LispError(f"{builtin.name}: expected {builtin.arity} arguments, got {len(args)}")
                return builtin.function(self, *args)
            if tag != Tag.CLOSURE:
                raise LispError(f"not a procedure: {self.show(procedure)}")
            code = self.codes[number]
            if len(args) != code.nparams:
                raise LispError(f"{code.name}: expected {code.nparams} arguments, got {len(args)}")
            env = self.memory.frame(procedure.get_ref(0), args)
            del args  # the frame holds them now
            result = code.body(env)
            if type(result) is not TailCall:
                return result
            procedure, args = result.procedure, result.args

    # -- compiling --------------------------------------------------------------------------
    def compile(self, form: Syntax, scope: tuple, tail: bool) -> Compiled:
        """``scope`` lists the parameter names of each enclosing frame, innermost first."""
        if isinstance(form, Symbol):
            return self._compile_variable(form, scope)
        if not isinstance(form, list):
            literal = self.constant(form)
            return lambda env: literal
        if not form:
            return lambda env: None
        head = form[0]
        special = SPECIAL_FORMS.get(head) if isinstance(head, Symbol) else None
        if special is not None and not self._shadowed(head, scope):
            return special(self, form, scope, tail)
        return self._compile_application(form, scope, tail)

    @staticmethod
    def _shadowed(name: str, scope: tuple) -> bool:
        return any(name in frame for frame in scope)

    def _compile_variable(self, name: Symbol, scope: tuple) -> Compiled:
        for depth, frame in enumerate(scope):
            if name in frame:
                slot = frame.index(name) + 1

                def local(env, depth=depth, slot=slot):
                    for _ in range(depth):
                        env = env.get_ref(0)
                    return env.get_slot(slot)

                return local
        index = self._global_slot(name)

        def global_variable(env):
            if not self.defined[index]:
                raise LispError(f"unbound variable: {name}")
            return self.globals.get_slot(index)

        return global_variable

    def _compile_application(self, form: list, scope: tuple, tail: bool) -> Compiled:
        function = self.compile(form[0], scope, tail=False)
        arguments = [self.compile(arg, scope, tail=False) for arg in form[1:]]

        def application(env):
            procedure = function(env)
            args = [argument(env) for argument in arguments]
            if tail:
                return TailCall(procedure, args)
            return self.apply(procedure, args)

        return application

    def _compile_body(self, body: list, scope: tuple, tail: bool) -> Compiled:
        if not body:
            raise LispError("empty body")
        steps = [self.compile(form, scope, tail=False) for form in body[:-1]]
        last = self.compile(body[-1], scope, tail)
        if not steps:
            return last

        def sequence(env):
            for step in steps:
                step(env)
            return last(env)

        return sequence

    def _compile_lambda(self, name: str, params: list, body: list, scope: tuple) -> Compiled:
        if not all(isinstance(p, Symbol) for p in params):
            raise LispError(f"{name}: parameters must be symbols: {params}")
        names = tuple(params)
        number = len(self.codes)
        self.codes.append(None)  # reserve the number: the body may refer to it
        self.codes[number] = Code(name, len(names), self._compile_body(body, (names, *scope), tail=True))
        return lambda env: self.memory.closure(number, env)


# --- special forms ------------------------------------------------------------------------
def _quote(lisp: Interpreter, form, scope, tail):
    _expect(form, 2)
    datum = lisp.constant(form[1])
    return lambda env: datum


def _if(lisp: Interpreter, form, scope, tail):
    if len(form) not in (3, 4):
        raise LispError(f"if: expected (if test then [else]), got {form}")
    test = lisp.compile(form[1], scope, tail=False)
    then = lisp.compile(form[2], scope, tail)
    otherwise = lisp.compile(form[3], scope, tail) if len(form) == 4 else (lambda env: None)
    return lambda env: then(env) if test(env) is not None else otherwise(env)


def _cond(lisp: Interpreter, form, scope, tail):
    clauses = []
    for clause in form[1:]:
        if not isinstance(clause, list) or len(clause) < 2:
            raise LispError(f"cond: bad clause {clause}")
        test = (lambda env: lisp.true) if clause[0] == "else" else lisp.compile(clause[0], scope, tail=False)
        clauses.append((test, lisp._compile_body(clause[1:], scope, tail)))

    def cond(env):
        for test, body in clauses:
            if test(env) is not None:
                return body(env)
        return None

    return cond


def _and(lisp: Interpreter, form, scope, tail):
    parts = [lisp.compile(part, scope, tail=False) for part in form[1:-1]]
    last = lisp.compile(form[-1], scope, tail) if len(form) > 1 else (lambda env: lisp.true)

    def conjunction(env):
        for part in parts:
            if part(env) is None:
                return None
        return last(env)

    return conjunction


def _or(lisp: Interpreter, form, scope, tail):
    parts = [lisp.compile(part, scope, tail=False) for part in form[1:-1]]
    last = lisp.compile(form[-1], scope, tail) if len(form) > 1 else (lambda env: None)

    def disjunction(env):
        for part in parts:
            value = part(env)
            if value is not None:
                return value
        return last(env)

    return disjunction


def _begin(lisp: Interpreter, form, scope, tail):
    return lisp._compile_body(form[1:], scope, tail)


def _let(lisp: Interpreter, form, scope, tail):
    if len(form) < 3 or not isinstance(form[1], list):
        raise LispError(f"let: expected (let ((name value) ...) body ...), got {form}")
    bindings = form[1]
    if not all(isinstance(b, list) and len(b) == 2 and isinstance(b[0], Symbol) for b in bindings):
        raise LispError(f"let: bad bindings {bindings}")
    names = tuple(b[0] for b in bindings)
    inits = [lisp.compile(b[1], scope, tail=False) for b in bindings]
    body = lisp._compile_body(form[2:], (names, *scope), tail)

    def let(env):
        return body(lisp.memory.frame(env, [init(env) for init in inits]))

    return let


def _lambda(lisp: Interpreter, form, scope, tail):
    if len(form) < 3 or not isinstance(form[1], list):
        raise LispError(f"lambda: expected (lambda (param ...) body ...), got {form}")
    return lisp._compile_lambda("lambda", form[1], form[2:], scope)


def _define(lisp: Interpreter, form, scope, tail):
    if scope:
        raise LispError("define is only allowed at top level")
    if len(form) >= 3 and isinstance(form[1], list) and form[1] and isinstance(form[1][0], Symbol):
        name, params = form[1][0], form[1][1:]
        make_value = lisp._compile_lambda(str(name), params, form[2:], scope)
    elif len(form) == 3 and isinstance(form[1], Symbol):
        name, make_value = form[1], lisp.compile(form[2], scope, tail=False)
    else:
        raise LispError(f"define: expected (define name value) or (define (name param ...) body ...), got {form}")

    def define(env):
        lisp._define_global(name, make_value(env))
        return lisp.intern(name)

    return define


def _expect(form: list, length: int) -> None:
    if len(form) != length:
        raise LispError(f"{form[0]}: expected {length - 1} operand(s), got {form}")


SPECIAL_FORMS = {
    "quote": _quote, "if": _if, "cond": _cond, "and": _and, "or": _or,
    "begin": _begin, "let": _let, "lambda": _lambda, "define": _define,
}


@contextlib.contextmanager
def deep_recursion(limit: int = 20_000):
    """Non-tail recursion in Lisp is recursion in Python: allow it to go deep."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)
