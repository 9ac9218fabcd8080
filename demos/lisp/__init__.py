"""A small Lisp whose every value lives in a remapgc heap.

The embedding story in miniature: the interpreter is the language runtime,
the heap is its memory. Conses, numbers, symbols, strings, closures and
environment frames are heap objects (``layout``); the interpreter's roots are
the ``Ref`` handles it holds — the environments and argument lists of the
calls in progress (its stack), the global table and the symbol table — so a
collection that moves every object leaves the program none the wiser.

``reader`` turns source text into syntax (plain Python data), ``compiler``
turns syntax into Python closures that compute on heap values, ``printer``
turns a heap value back into text.
"""
