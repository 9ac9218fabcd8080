"""Heap value -> the text a Lisp would print for it."""

from __future__ import annotations

import json

from demos.lisp.layout import LispMemory, Tag


def to_text(memory: LispMemory, value) -> str:
    if value is None:
        return "()"
    tag, word = memory.tag_and_word(value)
    if tag == Tag.FIXNUM:
        return str(memory.fixnum_value(value))
    if tag == Tag.SYMBOL:
        return memory.text(value)
    if tag == Tag.STRING:
        return json.dumps(memory.text(value), ensure_ascii=False)  # "..." with \" and \\ escapes
    if tag == Tag.CONS:
        return list_text(memory, value)
    if tag == Tag.CLOSURE:
        return f"#<closure {word}>"
    if tag == Tag.BUILTIN:
        return f"#<builtin {word}>"
    return f"#<{Tag(tag).name.lower()}>"


def list_text(memory: LispMemory, pair) -> str:
    items = []
    while memory.tag(pair) is Tag.CONS:
        items.append(to_text(memory, pair.get_slot(0)))
        pair = pair.get_slot(1)
    tail = "" if pair is None else f" . {to_text(memory, pair)}"
    return f"({' '.join(items)}{tail})"
