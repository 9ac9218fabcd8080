"""Source text -> syntax: plain Python data, before anything touches the heap.

Syntax is ``int`` (numbers), ``Symbol`` (identifiers), ``String`` (string
literals) and ``list`` (parenthesised forms); ``'x`` reads as
``[Symbol("quote"), x]``. ``;`` starts a comment to the end of the line.
"""

from __future__ import annotations

import re
from typing import Iterator, Union


class Symbol(str):
    """An identifier (kept apart from string literals)."""

    def __repr__(self) -> str:
        return f"Symbol({str(self)!r})"


class String(str):
    """A string literal."""

    def __repr__(self) -> str:
        return f"String({str(self)!r})"


Syntax = Union[int, Symbol, String, list]


class LispSyntaxError(ValueError):
    pass


TOKEN = re.compile(r"""
    \s+ | ;[^\n]*                     # whitespace and comments: skipped
  | (?P<open>\() | (?P<close>\)) | (?P<quote>')
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<atom>[^\s()'";]+)
  | (?P<bad>.)
""", re.VERBOSE | re.DOTALL)

ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def tokens(text: str) -> Iterator[tuple[str, str]]:
    for match in TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        if kind == "bad":
            raise LispSyntaxError(f"unexpected character {match.group()!r} at offset {match.start()}")
        yield kind, match.group()


def unescape(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), literal[1:-1])


def atom(text: str) -> Syntax:
    try:
        return int(text)
    except ValueError:
        return Symbol(text)


def read_all(text: str) -> list[Syntax]:
    """Every top-level form of ``text``, in order."""
    stream = list(tokens(text))
    forms: list[Syntax] = []
    position = 0
    while position < len(stream):
        form, position = read_form(stream, position)
        forms.append(form)
    return forms


def read(text: str) -> Syntax:
    """The one form of ``text``."""
    forms = read_all(text)
    if len(forms) != 1:
        raise LispSyntaxError(f"expected one form, read {len(forms)}")
    return forms[0]


def read_form(stream: list[tuple[str, str]], position: int) -> tuple[Syntax, int]:
    if position >= len(stream):
        raise LispSyntaxError("unexpected end of input")
    kind, text = stream[position]
    if kind == "open":
        items: list[Syntax] = []
        position += 1
        while True:
            if position >= len(stream):
                raise LispSyntaxError("missing )")
            if stream[position][0] == "close":
                return items, position + 1
            item, position = read_form(stream, position)
            items.append(item)
    if kind == "close":
        raise LispSyntaxError("unexpected )")
    if kind == "quote":
        quoted, position = read_form(stream, position + 1)
        return [Symbol("quote"), quoted], position
    if kind == "string":
        return String(unescape(text)), position + 1
    return atom(text), position + 1
