/* The collector's side-table loops (heap.native): they only read and write
   arrays the heap owns (side tables, slot numbering, the address index) and
   never touch heap memory, which is reached only through the Kernel
   protocol. Portable C, built by cffi (heap/_native_build.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "remapgc_program.h"

/* out = firsts[i] + stride * k for k < counts[i], object after object; returns the count. */
int64_t rgc_expand(const int64_t *firsts, const int64_t *counts, int64_t n, int64_t stride, int64_t *out)
{
    int64_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t f = firsts[i];
        for (int64_t k = 0; k < counts[i]; k++)
            out[o++] = f + stride * k;
    }
    return o;
}

/* One marking level: map each slot word to the row of the object starting
   there, record it for the slot, and collect the rows seen for the first
   time. Returns 0, or -(i+1) for the first word that is no object start. */
int64_t rgc_mark_targets(const int64_t *words, const int64_t *positions, int64_t nwords,
                         const int32_t *index, int64_t index_len, int64_t base, int64_t shift,
                         const int64_t *starts, int64_t nstarts,
                         int64_t *slot_target, uint8_t *live, int64_t *next, int64_t *nnext)
{
    int64_t n = 0;
    for (int64_t i = 0; i < nwords; i++) {
        int64_t w = words[i];
        if (w == 0) {
            slot_target[positions[i]] = -1;
            continue;
        }
        int64_t g = (w - base) >> shift;
        if (w < base || g >= index_len) { *nnext = n; return -(i + 1); }
        int64_t r = index[g];
        if (r < 0 || r >= nstarts || starts[r] != w) { *nnext = n; return -(i + 1); }
        slot_target[positions[i]] = r;
        if (!live[r]) {
            live[r] = 1;
            next[n++] = r;
        }
    }
    *nnext = n;
    return 0;
}

/* The new value of every slot of the objects in rows (object-major). */
int64_t rgc_slot_values(const int64_t *rows, int64_t nrows, const int64_t *nrefs, const int64_t *slot_base,
                        const int64_t *slot_target, const int64_t *new_by_row, int64_t *out)
{
    int64_t o = 0;
    for (int64_t i = 0; i < nrows; i++) {
        int64_t r = rows[i], s = slot_base[r];
        for (int64_t k = 0; k < nrefs[r]; k++) {
            int64_t t = slot_target[s + k];
            out[o++] = t >= 0 ? new_by_row[t] : 0;
        }
    }
    return o;
}

/* v / m and v % m for v >= 0: a shift and a mask when m is a power of two (pages and units always
   are), which a division by a run-time divisor is not (tens of cycles, several per object). */
static inline int64_t pdiv(int64_t v, int64_t m)
{
    return (m & (m - 1)) ? v / m : v >> __builtin_ctzll((uint64_t)m);
}

static inline int64_t pmod(int64_t v, int64_t m)
{
    return (m & (m - 1)) ? v % m : v & (m - 1);
}

static inline int64_t round_up(int64_t v, int64_t m) { return pdiv(v + m - 1, m) * m; }

/* One step of greedy placement under the rules of heap/objects.py: where an
   object of t bytes goes at or after pos; *next is the first byte after it. */
static int64_t place(int64_t pos, int64_t t, int64_t page, int64_t hpage_pages, int64_t *next)
{
    if (t < page) {
        if (pdiv(pos, page) != pdiv(pos + t - 1, page))
            pos = round_up(pos, page);
        *next = pos + t;
        return pos;
    }
    int64_t pages = pdiv(t + page - 1, page), unit = hpage_pages * page;
    pos = round_up(pos, page);
    if (hpage_pages) {
        if (t >= unit) {
            pages = round_up(pages, hpage_pages);
            pos = round_up(pos, unit);
        } else if (pmod(pdiv(pos, page), hpage_pages) + pages > hpage_pages) {
            pos = round_up(pos, unit);
        }
    }
    *next = pos + pages * page;
    return pos;
}

/* The kind of every page the objects occupy (heap.alloc.Allocator.mark_pages's
   rules): a small object's page, a large object's whole pages (whole 2 MiB
   units when huge). One pass and no temporaries: after a compaction this runs
   over every live object inside the pause. */
void rgc_mark_pages(const int64_t *addrs, const int64_t *totals, int64_t n, int64_t base, int64_t page,
                    int64_t hpage_pages, int8_t small_kind, int8_t large_kind, int8_t *kind)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t first = pdiv(addrs[i] - base, page), t = totals[i];
        if (t < page) {
            kind[first] = small_kind;
            continue;
        }
        int64_t pages = pdiv(t + page - 1, page);
        if (hpage_pages && t >= hpage_pages * page) pages = round_up(pages, hpage_pages);
        memset(kind + first, large_kind, (size_t)pages);
    }
}

/* The address index's entries of n objects given rows first_row, first_row + 1, ... */
void rgc_index_add(const int64_t *starts, int64_t n, int64_t base, int64_t shift, int32_t first_row, int32_t *index)
{
    for (int64_t i = 0; i < n; i++)
        index[(starts[i] - base) >> shift] = first_row + (int32_t)i;
}

/* Greedy placement in order from offset 0; returns the pages used. */
int64_t rgc_pack(const int64_t *totals, int64_t n, int64_t page, int64_t hpage_pages, int64_t *offsets)
{
    int64_t pos = 0;
    for (int64_t i = 0; i < n; i++)
        offsets[i] = place(pos, totals[i], page, hpage_pages, &pos);
    return pdiv(pos + page - 1, page);
}

/* The remap plan's new order: the whole-moving objects (new addresses given),
   then the evacuees packed after them, sliding in the from-space through the
   units they come from (sources). Returns the number of evacuees. */
int64_t rgc_plan_order(const int64_t *start, const int64_t *total, const uint8_t *whole, const int64_t *new_whole,
                       int64_t n, int64_t base, int64_t page, int64_t unit_pages, int64_t hpage_pages,
                       int64_t whole_end, int64_t *order, int64_t *new_start, int64_t *evac_from,
                       int64_t *evac_to, int64_t *sources, int64_t *nsources, int64_t *ev_pages)
{
    int64_t unit = unit_pages * page, nw = 0, ns = 0, last = -1;
    for (int64_t i = 0; i < n; i++) {
        if (whole[i]) {
            order[nw] = i;
            new_start[nw++] = new_whole[i];
        } else if (pdiv(start[i] - base, unit) != last) {
            last = pdiv(start[i] - base, unit);
            sources[ns++] = last;
        }
    }
    int64_t pos = 0, m = 0, origin = base + whole_end * page;
    for (int64_t i = 0; i < n; i++) {
        if (whole[i]) continue;
        int64_t off = place(pos, total[i], page, hpage_pages, &pos);
        order[nw + m] = i;
        new_start[nw + m] = origin + off;
        evac_from[m] = start[i] - base;
        evac_to[m++] = sources[pdiv(off, unit)] * unit + pmod(off, unit);
    }
    *nsources = ns;
    *ev_pages = pdiv(pos + page - 1, page);
    return m;
}

/* A sparse unit that may move whole: its live bytes and its objects [first, end). */
struct rgc_sparse_unit { int64_t bytes, first, end; };

/* The fullest first, then address order: the budget buys the most bytes not copied. */
static int fullest_first(const void *a, const void *b)
{
    const struct rgc_sparse_unit *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes > y->bytes ? -1 : 1;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* The remap plan's whole-moving part, for live objects in address order:
   which objects move whole (owners of their units, objects of dense units,
   and -- units of several pages, i.e. huge pages -- objects of sparse units
   holding only objects of a page or more, the fullest first, each while the
   dead bytes such units keep fit in keep_budget; *kept says how many they
   keep), the pieces they move in, and their new addresses. Returns the piece
   count, or -1 when out of memory. */
int64_t rgc_plan_whole(const int64_t *start, const int64_t *total, int64_t n, int64_t base, int64_t page,
                       int64_t unit_pages, int64_t hpage_pages, int64_t dense_bytes, int64_t keep_budget,
                       uint8_t *whole, int64_t *new_start, int64_t *piece_src, int64_t *piece_n,
                       int64_t *whole_end, int64_t *kept)
{
    int64_t unit = unit_pages * page, ncand = 0;
    struct rgc_sparse_unit *cand = NULL;
    *kept = 0;
    if (keep_budget > 0 && unit_pages > 1 && n > 0) {
        cand = malloc(sizeof(*cand) * (size_t)n);
        if (!cand) return -1;
    }
    for (int64_t i = 0; i < n;) {
        if (total[i] >= unit) { whole[i++] = 1; continue; }
        int64_t u = pdiv(start[i] - base, unit), j = i, bytes = 0;
        uint8_t large_only = cand != NULL;
        for (; j < n && total[j] < unit && pdiv(start[j] - base, unit) == u; j++) {
            bytes += total[j];
            large_only &= total[j] >= page;
        }
        uint8_t dense = bytes >= dense_bytes;
        if (!dense && large_only && unit - bytes <= keep_budget)
            cand[ncand++] = (struct rgc_sparse_unit){bytes, i, j};
        for (; i < j; i++) whole[i] = dense;
    }
    if (ncand) {  /* copying these units' objects out would cost more than the dead pages kept */
        qsort(cand, (size_t)ncand, sizeof(*cand), fullest_first);
        for (int64_t c = 0; c < ncand; c++) {
            if (unit - cand[c].bytes > keep_budget - *kept) continue;
            *kept += unit - cand[c].bytes;
            for (int64_t i = cand[c].first; i < cand[c].end; i++) whole[i] = 1;
        }
    }
    free(cand);
    int64_t pieces = 0, dst = 0, src = 0, at = 0, last_unit = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!whole[i]) continue;
        int64_t pg = pdiv(start[i] - base, page);
        if (total[i] >= unit) {
            int64_t pages = pdiv(total[i] + page - 1, page);
            if (hpage_pages && total[i] >= hpage_pages * page) pages = round_up(pages, hpage_pages);
            src = pg; at = dst;
            piece_src[pieces] = pg; piece_n[pieces++] = pages;
            dst += pages;
            last_unit = -1;
        } else if (pdiv(pg, unit_pages) != last_unit) {
            last_unit = pdiv(pg, unit_pages);
            src = last_unit * unit_pages; at = dst;
            piece_src[pieces] = src; piece_n[pieces++] = unit_pages;
            dst += unit_pages;
        }
        new_start[i] = base + (at + pg - src) * page + pmod(start[i] - base, page);
    }
    *whole_end = dst;
    return pieces;
}

/* ---- page claims of a concurrent cycle: unprocessed -> processing ----
   A compare-and-swap per page, so that Python installers (holding the page
   states' lock) and a compactor running in C without the GIL never both
   claim one page. */
int64_t rgc_claim_range(int8_t *state, int64_t lo, int64_t hi, uint8_t *mine)
{
    int64_t n = 0;
    for (int64_t p = lo; p < hi; p++) {
        int8_t expected = RGC_PAGE_UNPROCESSED;
        mine[p - lo] = __atomic_compare_exchange_n(&state[p], &expected, RGC_PAGE_PROCESSING, 0, __ATOMIC_ACQ_REL,
                                                   __ATOMIC_ACQUIRE);
        n += mine[p - lo];
    }
    return n;
}

int64_t rgc_claim_page(int8_t *state, int64_t page)
{
    int8_t expected = RGC_PAGE_UNPROCESSED;
    __atomic_compare_exchange_n(&state[page], &expected, RGC_PAGE_PROCESSING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return expected;  /* the state before: RGC_PAGE_UNPROCESSED means the page is now ours */
}
