"""cffi (API mode) build of ``heap._native``: the collector's side-table loops in C.

The source is ``heap/csrc/side_tables.c``. These loops only read and write
numpy arrays the heap owns (side tables, slot numbering, the address index);
they never touch heap memory, which is reached only through the Kernel
protocol. They are portable C, so the heap gets them on every OS with a
compiler; without the extension ``heap.native`` runs the same steps in numpy.
Its page claims use the page states of ``heap/csrc/remapgc_program.h``, and
it reports that header's layout (``rgc_program_layout``) for
``heap.kernel.check_program_layout``.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")

CDEF = r"""
int64_t rgc_expand(const int64_t *firsts, const int64_t *counts, int64_t n, int64_t stride, int64_t *out);
int64_t rgc_mark_targets(const int64_t *words, const int64_t *positions, int64_t nwords,
                         const int32_t *index, int64_t index_len, int64_t base, int64_t shift,
                         const int64_t *starts, int64_t nstarts,
                         int64_t *slot_target, uint8_t *live, int64_t *next, int64_t *nnext);
int64_t rgc_slot_values(const int64_t *rows, int64_t nrows, const int64_t *nrefs, const int64_t *slot_base,
                        const int64_t *slot_target, const int64_t *new_by_row, int64_t *out);
int64_t rgc_pack(const int64_t *totals, int64_t n, int64_t page, int64_t hpage_pages, int64_t *offsets);
int64_t rgc_plan_order(const int64_t *start, const int64_t *total, const uint8_t *whole, const int64_t *new_whole,
                       int64_t n, int64_t base, int64_t page, int64_t unit_pages, int64_t hpage_pages,
                       int64_t whole_end, int64_t *order, int64_t *new_start, int64_t *evac_from,
                       int64_t *evac_to, int64_t *sources, int64_t *nsources, int64_t *ev_pages);
int64_t rgc_plan_whole(const int64_t *start, const int64_t *total, int64_t n, int64_t base, int64_t page,
                       int64_t unit_pages, int64_t hpage_pages, int64_t dense_bytes, int64_t keep_budget,
                       uint8_t *whole, int64_t *new_start, int64_t *piece_src, int64_t *piece_n,
                       int64_t *whole_end, int64_t *kept);
void rgc_mark_pages(const int64_t *addrs, const int64_t *totals, int64_t n, int64_t base, int64_t page,
                    int64_t hpage_pages, int8_t small_kind, int8_t large_kind, int8_t *kind);
void rgc_index_add(const int64_t *starts, int64_t n, int64_t base, int64_t shift, int32_t first_row, int32_t *index);
int64_t rgc_claim_range(int8_t *state, int64_t lo, int64_t hi, uint8_t *mine);
int64_t rgc_claim_page(int8_t *state, int64_t page);
int64_t rgc_program_layout(int64_t *out, int64_t max);
const char *rgc_program_field_names(void);
"""
# heap/csrc/access.c: the mutator's compiled Ref operations and allocation step (heap/fastpath.py)
ACCESS_CDEF = r"""
struct rgc_gate { int64_t state; int64_t inflight; int64_t epoch; int64_t *addr; int64_t *nbytes; int64_t *nrefs;
                  int64_t header; };
struct rgc_bump { int64_t *place; int64_t *rows; int32_t *index; int64_t index_base, index_shift, index_len;
                  uint64_t word1; int64_t host_words; int8_t *kind; int64_t small_kind; };
int64_t rgc_ref_load(struct rgc_gate *g, int64_t h, int64_t offset, int64_t length, char *out);
int64_t rgc_ref_store(struct rgc_gate *g, int64_t h, int64_t offset, const char *data, int64_t length);
int64_t rgc_ref_get_slot(struct rgc_gate *g, int64_t h, int64_t slot);
int64_t rgc_ref_set_slot(struct rgc_gate *g, int64_t h, int64_t slot, int64_t target, int64_t word);
void rgc_gate_shut(struct rgc_gate *g, int64_t bits);
void rgc_gate_open(struct rgc_gate *g, int64_t bits);
void rgc_gate_add(struct rgc_gate *g, int64_t amount);
int64_t rgc_gate_wait(struct rgc_gate *g, int64_t timeout_ns);
int64_t rgc_bump(struct rgc_bump *b, int64_t nbytes, int64_t nrefs, int64_t total, uint64_t host);
int64_t rgc_issue_shape(struct rgc_gate *g, struct rgc_bump *b, int64_t addr, int64_t h);
"""


def _source(name: str) -> str:
    # setuptools wants sources relative to the project when it can have them
    path = os.path.join(CSRC, name)
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


ffibuilder = FFI()
ffibuilder.cdef(CDEF + ACCESS_CDEF)
# the header, then the prototypes for the module cffi generates (the definitions are in side_tables.c, access.c)
ffibuilder.set_source("heap._native", '#include "remapgc_program.h"\n' + CDEF + ACCESS_CDEF,
                      sources=[_source("side_tables.c"), _source("access.c")],
                      include_dirs=[CSRC], extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
