"""The Lisp reader: source text to syntax, before anything touches the heap."""

import re

import pytest

from demos.lisp.reader import LispSyntaxError, String, Symbol, read, read_all


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42),
        ("-7", -7),
        ("foo", Symbol("foo")),
        ("null?", Symbol("null?")),
        ("-", Symbol("-")),
        ('"a string"', String("a string")),
        (r'"quote \" and \\ and \n"', String('quote " and \\ and \n')),
        ("()", []),
        ("(+ 1 2)", [Symbol("+"), 1, 2]),
        ("(a (b (c)) d)", [Symbol("a"), [Symbol("b"), [Symbol("c")]], Symbol("d")]),
        ("'x", [Symbol("quote"), Symbol("x")]),
        ("'(1 2)", [Symbol("quote"), [1, 2]]),
        ("(f ; a comment\n 1)", [Symbol("f"), 1]),
    ],
    ids=["number", "negative", "symbol", "symbol-with-?", "minus-is-a-symbol", "string", "string-escapes",
         "empty-list", "call", "nested", "quote-symbol", "quote-list", "comment"],
)
def test_reads_one_form(text, expected):
    form = read(text)
    assert form == expected
    assert type(form) is type(expected)


def test_strings_and_symbols_stay_distinct():
    symbol, string = read_all('abc "abc"')
    assert isinstance(symbol, Symbol) and not isinstance(symbol, String)
    assert isinstance(string, String) and not isinstance(string, Symbol)


def test_reads_every_top_level_form_in_order():
    assert read_all("(define x 1) x\n; trailing comment\n") == [[Symbol("define"), Symbol("x"), 1], Symbol("x")]


@pytest.mark.parametrize(
    "text, message",
    [("(a b", "missing )"), (")", "unexpected )"), ("'", "unexpected end"), ('(a "b)', "unexpected character")],
    ids=["unclosed", "stray-close", "dangling-quote", "unterminated-string"],
)
def test_rejects_malformed_source(text, message):
    with pytest.raises(LispSyntaxError, match=re.escape(message)):
        read_all(text)
