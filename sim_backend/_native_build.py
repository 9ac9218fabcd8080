"""cffi (API mode) build of ``sim_backend._native``: the simulator's per-word loops in C.

The simulated kernel keeps page contents in one flat pool; translating a
user address to a pool offset is a lookup in a per-page table that numpy
builds (one entry per page of the span touched). These loops
(``sim_backend/csrc/sim_loops.c``) do the per-word or per-range part of
load_words / store_words / copy_ranges from such tables. Portable C; without
the extension ``sim_backend.native`` does the same in numpy.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")

CDEF = r"""
int64_t rgc_sim_load_words(const uint64_t *pool, const int64_t *wbase, int64_t pmin, int64_t npages,
                           const uint64_t *addrs, int64_t n, uint64_t *out);
int64_t rgc_sim_store_words(uint64_t *pool, const int64_t *wbase, int64_t pmin, int64_t npages,
                            const uint64_t *addrs, const uint64_t *vals, int64_t n);
int64_t rgc_sim_mark_pages(const uint64_t *addrs, int64_t n, int64_t pmin, int64_t npages, uint8_t *hit);
int64_t rgc_sim_copy_ranges(uint8_t *pool, const int64_t *s_base, int64_t s_pmin, int64_t s_npages,
                            const int64_t *d_base, int64_t d_pmin, int64_t d_npages,
                            const int64_t *dsts, const int64_t *srcs, const int64_t *lens, int64_t n,
                            uint8_t *tmp);
"""


def _source(name: str) -> str:
    # setuptools wants sources relative to the project when it can have them
    path = os.path.join(CSRC, name)
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
# the prototypes, for the module cffi generates (the definitions are in sim_loops.c)
ffibuilder.set_source("sim_backend._native", "#include <stdint.h>\n" + CDEF, sources=[_source("sim_loops.c")],
                      extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
