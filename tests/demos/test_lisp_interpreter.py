"""The Lisp interpreter on the real heap: its values live in the heap and survive collections."""

import pytest

from demos.lisp.interpreter import Interpreter, LispError

HEAP_BYTES = 1 << 20


@pytest.fixture
def lisp(kernel_name):
    from heap import Heap

    with Heap(kernel=kernel_name, size=HEAP_BYTES) as heap:
        yield Interpreter(heap)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "program, printed",
    [
        ("(+ 1 (* 2 3) (- 10 4))", "13"),
        ("(list (quotient -7 2) (remainder -7 2) (quotient 7 2))", "(-3 -1 3)"),
        ("(define (adder n) (lambda (x) (+ x n))) ((adder 3) 4)", "7"),
        ("(let ((x 2) (y 3)) (let ((x 10)) (* x y)))", "30"),
        ("(cond ((< 2 1) 'no) ((= 1 2) 'no) (else 'yes))", "yes"),
        ("(list (and 1 2) (and 1 '()) (or '() 3) (or))", "(2 () 3 ())"),
        ("'(a (b \"c\") 1)", '(a (b "c") 1)'),
        ("(cons 1 2)", "(1 . 2)"),
        ('(string-append "ab" (number->string 12) (symbol->string \'cd))', '"ab12cd"'),
        ("(list (eq? 'a 'a) (eq? 'a 'b) (null? '()) (pair? '(1)))", "(t () t t)"),
        ("(define (fib n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2))))) (fib 12)", "144"),
    ],
    ids=["arithmetic", "truncating-division", "closure", "let-shadowing", "cond-else", "and-or", "quoted-data",
         "dotted-pair", "strings", "predicates", "recursion"],
)
def test_evaluates(lisp, program, printed):
    assert lisp.show(lisp.run(program)) == printed


@pytest.mark.timeout(120)
def test_tail_calls_run_in_constant_python_stack(lisp):
    # 10,000 iterations would need ~30,000 Python frames without tail calls (the limit is 20,000).
    assert lisp.show(lisp.run("(define (loop i) (if (= i 0) 'done (loop (- i 1)))) (loop 10000)")) == "done"


@pytest.mark.timeout(120)
def test_values_on_the_interpreter_stack_survive_collections(lisp):
    """A collection in every call of a 40-deep recursion: the half-built list is held only by the stack."""
    collections = []
    lisp.on_collect = collections.append
    program = """
    (define kept (list "a string" 'a-symbol (lambda (x) (* x x))))
    (define (build n) (if (= n 0) '() (begin (gc) (cons n (build (- n 1))))))
    (list (build 40) (car kept) (car (cdr kept)) ((car (cdr (cdr kept))) 9))
    """
    expected = "((" + " ".join(str(n) for n in range(40, 0, -1)) + ') "a string" a-symbol 81)'
    assert lisp.show(lisp.run(program)) == expected
    assert len(collections) == 40
    assert sum(s.pages_moved + s.bytes_copied for s in collections) > 0  # things did move
    lisp.heap.verify()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "program, message",
    [
        ("undefined-thing", "unbound variable"),
        ("(car 1)", "not a pair"),
        ("((lambda (x) x))", "expected 1 arguments"),
        ("(1 2)", "not a procedure"),
        ("(+ 1 'a)", "expected numbers"),
    ],
    ids=["unbound", "car-of-number", "arity", "call-a-number", "add-a-symbol"],
)
def test_errors_name_the_problem(lisp, program, message):
    with pytest.raises(LispError, match=message):
        lisp.run(program)
