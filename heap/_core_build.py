"""cffi (API mode) build of ``heap._core``: the collector's per-object work in C.

The sources are ``heap/csrc/core.c`` and ``core.h``; the declarations cffi
needs are the part of core.h between its ``cffi:begin`` and ``cffi:end``
markers, so they are written once. Portable C (no OS calls): built on every
OS with a compiler (a parallel mark where there are POSIX threads); without it ``heap.core`` reports itself unavailable and
the heap keeps its numpy paths.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def declarations() -> str:
    with open(os.path.join(CSRC, "core.h")) as f:
        text = f.read()
    return text.split("/* cffi:begin */", 1)[1].split("/* cffi:end */", 1)[0]


def _source_path() -> str:
    # setuptools wants sources relative to the project when it can have them
    path = os.path.join(CSRC, "core.c")
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


ffibuilder = FFI()
ffibuilder.cdef(declarations())
ffibuilder.set_source("heap._core", '#include "core.h"', sources=[_source_path()], include_dirs=[CSRC],
                      extra_compile_args=["-O2", "-pthread"], extra_link_args=["-pthread"])  # the parallel mark

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
