/* The collector's per-object work in portable C (heap/core.py wraps it).
 *
 * Mark (depth-first on an explicit stack), slot fixup, root forwarding and
 * verify's per-object checks, over the heap's side tables (one row per
 * object, rows in address order) and its memory. Nothing here calls back
 * into Python, so cffi runs every call without the GIL.
 *
 * Memory is reached through a struct rgc_mem: either the heap's addresses
 * are this process's own (the Linux backend: `direct`), or a table gives the
 * host address of each page's contents (the simulator's frames), 0 where a
 * user-mode access would fault. A call that meets such a page stops before
 * changing anything for the object it was at and says which page; the
 * caller brings the page in through the Kernel protocol (which faults it
 * faithfully), refreshes the entry and calls again to resume.
 *
 * The text between the cffi markers is also the cffi declaration
 * (heap/_core_build.py reads it), so it holds no preprocessor lines.
 */
#ifndef RGC_CORE_H
#define RGC_CORE_H

#include <stdint.h>

/* cffi:begin */
enum {
    RGC_DONE = 0,        /* the call finished its work */
    RGC_NEED_PAGE = 1,   /* stopped: page `page` is not accessible here; resume after bringing it in */
    RGC_BAD_ADDRESS = 2, /* a root, slot or header is wrong: see `at` / `bad` */
    RGC_IMMEDIATE = -2   /* slot_target of a slot holding an immediate (low bit set: not a reference) */
};

struct rgc_mem {
    const uint64_t *page;  /* host address of each page's contents, from page_lo; 0: would fault */
    int64_t page_lo;       /* first page number the table covers (address >> page_shift) */
    int64_t npages;        /* entries in the table */
    int64_t page_shift;    /* log2 of the page size */
    int64_t direct;        /* nonzero: heap addresses are host addresses (the table is unused) */
};

struct rgc_objects {
    const int64_t *start;      /* per row, ascending */
    const int64_t *nrefs;      /* reference slots per row */
    const int64_t *slot_base;  /* first slot position per row (running sum of nrefs) */
    const int64_t *total;      /* bytes per row (verify's header check; may be NULL for the rest) */
    int64_t n;                 /* rows */
    const int32_t *index;      /* AddressIndex: row of the object starting in each granule */
    int64_t index_len;         /* granules */
    int64_t base;              /* address of granule 0 */
    int64_t shift;             /* log2 of the granule size */
    int64_t slot_offset;       /* bytes from an object's start to its slot 0 */
    /* The starts as a bitmap with a rank table (rgc_core_start_bits builds them; marking's lookup):
       bit g of bits is set when an object starts at granule g, rank[w] counts the starts before
       word w, so the row starting at granule g is rank[g >> 6] + the bits below g in its word --
       two small, cache-resident tables instead of an index entry and a start per lookup. */
    uint64_t *bits;
    int32_t *rank;
    int64_t nwords;            /* words of bits and rank: granules up to the last start, / 64, rounded up */
};

struct rgc_mark {
    uint8_t *live;          /* per row: reached */
    int64_t *slot_target;   /* per slot position of a live row: the row it references, -1 for None,
                               RGC_IMMEDIATE for a word with its low bit set (not a reference) */
    int64_t *stack;         /* rows marked but not yet scanned, each as (row, address): capacity 2n
                               int64 (a row is on it at most once) */
    int64_t depth;          /* rows on the stack */
    int64_t marked;         /* rows marked live */
    int64_t slots_read;     /* reference slots read */
    int64_t page;           /* RGC_NEED_PAGE: the page to bring in */
    int64_t at;             /* RGC_BAD_ADDRESS: index of the root, or row whose slot holds it */
    int64_t bad;            /* RGC_BAD_ADDRESS: the value that is no object start */
    int64_t threads;        /* markers to run (> 1: in parallel, over direct memory only; else one) */
};

struct rgc_check {
    int64_t at;     /* RGC_NEED_PAGE: object to resume from; RGC_BAD_ADDRESS: the object that fails */
    int64_t page;   /* RGC_NEED_PAGE: the page to bring in */
    int64_t slot;   /* RGC_BAD_ADDRESS of a slot check: which slot */
    int64_t bad;    /* RGC_BAD_ADDRESS: the value found */
};

/* Build o->bits and o->rank (o->nwords words each) from the starts. */
void rgc_core_start_bits(struct rgc_objects *o);

/* The row of the object starting exactly at addr, or -1. */
int64_t rgc_core_row_of(const struct rgc_objects *o, int64_t addr);

/* Mark the rows of roots (0 entries are skipped) and push them. RGC_BAD_ADDRESS: roots[at] is
   no object start (the roots before it are marked). */
int64_t rgc_core_mark_roots(const struct rgc_objects *o, struct rgc_mark *mk, const int64_t *roots,
                            int64_t nroots);

/* Scan the stack until it is empty: every slot of every reached row is read, its target row
   recorded in slot_target and marked. RGC_DONE, RGC_NEED_PAGE (the row waiting for that page
   stays on the stack) or RGC_BAD_ADDRESS (row `at` holds `bad`). */
int64_t rgc_core_mark(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk);

/* Write the new value of every slot of the objects rows[from..n) lying at loc[i]: the new address
   (new_by_row) of the row its slot_target names, or 0; an immediate's slot is left as it is. Returns the index of the first object whose
   slots are not writable through m (its slots untouched), or n. */
int64_t rgc_core_fixup(const struct rgc_mem *m, const int64_t *rows, const int64_t *loc, int64_t from, int64_t n,
                       const int64_t *nrefs, const int64_t *slot_base, const int64_t *slot_target,
                       const int64_t *new_by_row, int64_t slot_offset);

/* The slide of a compactor that packs objects down in address order (new_start[i] <= old_start[rows[i]],
   ascending: an ordered pass never overwrites an object not yet moved), and the fixup, in one pass: for
   each object rows[from..n), move its total[row] bytes from old_start[row] + src_offset to new_start[i]
   when they differ, then write its slots there as rgc_core_fixup does (while its line is in the cache).
   *moved adds the bytes moved. Returns n, or the index of the first object this call cannot do through
   m (a page not accessible here, or, through a page table, an object spanning pages): nothing of it
   done. threads > 1 (direct memory, many objects): the fixup runs on a thread of its own, following
   the moves. */
int64_t rgc_core_slide(const struct rgc_mem *m, const int64_t *rows, const int64_t *old_start, int64_t src_offset,
                       const int64_t *new_start, int64_t from, int64_t n, const int64_t *total,
                       const int64_t *nrefs, const int64_t *slot_base, const int64_t *slot_target,
                       const int64_t *new_by_row, int64_t slot_offset, int64_t *moved, int64_t threads);

/* out[i] = new_by_row[row of addrs[i]] (0 stays 0). Returns n, or the index of the first address
   that is no object start. */
int64_t rgc_core_forward(const struct rgc_objects *o, const int64_t *new_by_row, const int64_t *addrs, int64_t n,
                         int64_t *out);

/* new_by_row[rows[i]] = new_start[i]; the rows not named keep what they hold. */
void rgc_core_scatter(const int64_t *rows, const int64_t *new_start, int64_t n, int64_t *new_by_row);

/* 1 when start[rows[i]] == new_start[i] for every i < n (every object planned where it lies), else 0. */
int64_t rgc_core_same_places(const int64_t *start, const int64_t *rows, const int64_t *new_start, int64_t n);

/* Whether the remap plan of a heap whose every object is live (rows in address order), planned in units
   of one page with no sparse unit kept whole, leaves every object where it lies -- the rules of
   heap/csrc/side_tables.c's rgc_plan_whole and rgc_plan_order, asked only that: the pieces moving whole
   (an object of a page or more, a page of small objects holding dense_bytes or more) tile the pages
   from the first, and the rest (the objects of sparse pages, after them) lie where packing them again
   from there puts them. -1 when some object would move; else the pages the whole pieces fill, with
   *ev_first the first object evacuated (all after it are) and *ev_pages the pages they fill. */
int64_t rgc_core_plan_stays(const int64_t *start, const int64_t *total, int64_t n, int64_t base, int64_t page,
                            int64_t dense_bytes, int64_t *ev_first, int64_t *ev_pages);

/* The rows marked live, in order, with their start and total (the plan's inputs), in one pass.
   Returns how many. */
int64_t rgc_core_live_rows(const uint8_t *live, int64_t n, const int64_t *start, const int64_t *total,
                           int64_t *rows, int64_t *l_start, int64_t *l_total);

/* Bytes of the rows marked live (one pass in row order, not a random access per marked row). */
int64_t rgc_core_live_bytes(const int64_t *total, const uint8_t *live, int64_t n);

/* Verify: the two header words of objects [from, n) are (nbytes, nrefs | large_bit if total >= page
   | tag). RGC_DONE, RGC_NEED_PAGE or RGC_BAD_ADDRESS (out->at: the first object that differs). */
int64_t rgc_core_check_headers(const struct rgc_objects *o, const struct rgc_mem *m, const int64_t *nbytes,
                               int64_t page_size, uint64_t large_bit, uint64_t tag, int64_t from,
                               struct rgc_check *out);

/* Verify: every slot of objects [from, n) holds 0, an immediate (low bit set) or an object start. RGC_DONE, RGC_NEED_PAGE or
   RGC_BAD_ADDRESS (out->at, out->slot: the first slot that does not; out->bad its value). */
int64_t rgc_core_check_slots(const struct rgc_objects *o, const struct rgc_mem *m, int64_t from,
                             struct rgc_check *out);
/* cffi:end */

#endif
