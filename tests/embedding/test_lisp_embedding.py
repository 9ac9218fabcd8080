"""The Lisp demo as a runtime author's program: what it takes from the heap
besides memory (a weak symbol table, ports closed by finalization), on both
backends."""

from __future__ import annotations

import gc

import pytest

from demos.lisp.interpreter import Interpreter, LispError
from heap import Heap


@pytest.fixture(params=["copy", "remap"])
def lisp(request, kernel_name):
    with Heap(kernel=kernel_name, size=1 << 20, compactor=request.param) as heap:
        yield Interpreter(heap)


@pytest.mark.timeout(120)
def test_a_port_is_closed_once_a_collection_found_it_dead(lisp):
    lisp.run('(define kept (open-output-port)) (write-port kept "kept")')
    lisp.run('(write-port (open-output-port) "dropped")')
    assert lisp.ports_opened == 2 and len(lisp.ports) == 2
    lisp.run("(gc)")
    assert lisp.ports_closed == 1 and list(lisp.ports) == [0]  # the dropped one, number 1
    lisp.run("(gc) (gc)")
    assert lisp.ports_closed == 1  # reported once
    assert lisp.show(lisp.run("(port-contents kept)")) == '"kept"'


@pytest.mark.timeout(120)
def test_interned_symbols_are_the_same_object_while_used_and_go_when_not(lisp):
    lisp.run('(define s (string->symbol "fresh-name"))')
    assert lisp.show(lisp.run('(eq? s (string->symbol "fresh-name"))')) == "t"
    lisp.run('(string->symbol "temporary-name")')
    lisp.run("(gc)")
    gc.collect()
    lisp.prune_symbols()
    assert "fresh-name" in lisp.symbols and "temporary-name" not in lisp.symbols
    assert lisp.show(lisp.run('(symbol->string (string->symbol "temporary-name"))')) == '"temporary-name"'


@pytest.mark.timeout(120)
def test_a_non_port_is_refused(lisp):
    with pytest.raises(LispError, match="not a port"):
        lisp.run("(write-port 1 2)")
