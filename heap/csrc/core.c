/* The collector's per-object work: see core.h for the contract of each call. */
#include "core.h"

#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define RGC_PREFETCH(p) __builtin_prefetch(p)
#define RGC_PREFETCH_W(p) __builtin_prefetch(p, 1)
#else
#define RGC_PREFETCH(p) ((void)(p))
#define RGC_PREFETCH_W(p) ((void)(p))
#endif


/* Host address of heap address a, or NULL when the page is not accessible here. */
static inline const uint8_t *host(const struct rgc_mem *m, int64_t a)
{
    if (m->direct)
        return (const uint8_t *)(uintptr_t)a;
    int64_t p = (a >> m->page_shift) - m->page_lo;
    if (p < 0 || p >= m->npages || m->page[p] == 0)
        return NULL;
    return (const uint8_t *)(uintptr_t)(m->page[p] + (uint64_t)(a & (((int64_t)1 << m->page_shift) - 1)));
}

/* The first page of [lo, hi) not accessible through m, or -1. */
static int64_t missing_page(const struct rgc_mem *m, int64_t lo, int64_t hi)
{
    if (m->direct || hi <= lo)
        return -1;
    for (int64_t page = lo >> m->page_shift; page <= (hi - 1) >> m->page_shift; page++) {
        int64_t p = page - m->page_lo;
        if (p < 0 || p >= m->npages || m->page[p] == 0)
            return page;
    }
    return -1;
}

static inline uint64_t load_word(const struct rgc_mem *m, int64_t a)
{
    uint64_t w;
    memcpy(&w, host(m, a), sizeof w);
    return w;
}

static inline void store_word(const struct rgc_mem *m, int64_t a, uint64_t w)
{
    memcpy((void *)host(m, a), &w, sizeof w);
}

static inline int64_t granule_of(const struct rgc_objects *o, int64_t a)
{
    if (a < o->base)
        return -1;
    uint64_t g = (uint64_t)(a - o->base) >> o->shift;
    return g < (uint64_t)o->index_len ? (int64_t)g : -1;
}

int64_t rgc_core_row_of(const struct rgc_objects *o, int64_t a)
{
    int64_t g = granule_of(o, a);
    if (g < 0)
        return -1;
    int64_t r = o->index[g];
    if (r < 0 || r >= o->n || o->start[r] != a)
        return -1;
    return r;
}

static inline void mark_row(const struct rgc_objects *o, struct rgc_mark *mk, int64_t r)
{
    mk->live[r] = 1;
    mk->marked++;
    if (o->nrefs[r])  /* a row without slots has nothing to scan: it never waits on the stack */
        mk->stack[mk->depth++] = r;
}

int64_t rgc_core_mark_roots(const struct rgc_objects *o, struct rgc_mark *mk, const int64_t *roots, int64_t nroots)
{
    for (int64_t i = 0; i < nroots; i++) {
        if (roots[i] == 0)
            continue;
        int64_t r = rgc_core_row_of(o, roots[i]);
        if (r < 0) {
            mk->at = i;
            mk->bad = roots[i];
            return RGC_BAD_ADDRESS;
        }
        if (!mk->live[r])
            mark_row(o, mk, r);
    }
    return RGC_DONE;
}

/* Marking is depth-first: rows wait on an explicit stack, and the rows on
   top of it are taken a batch at a time. Between reading a slot and pushing
   the row it names there are dependent cache misses (the index entry, the
   row's start, its live byte), and between popping a row and reading its
   slots more (its side-table entries, its memory); one object at a time they
   would cost a memory latency each. A batch goes through each step for all
   its rows or slots before the next step (read every slot word; look every
   word up in the index; check and mark every target), so the loads of one
   step are independent and the processor overlaps their misses. A chain
   gives batches of one row: its links cost what dependent loads cost,
   nothing per level. Which row is scanned when changes; what is recorded
   does not. */
#define RGC_BATCH_ROWS 64
#define RGC_BATCH_SLOTS 256

struct batch {
    int64_t word[RGC_BATCH_SLOTS];
    int64_t position[RGC_BATCH_SLOTS];
    int64_t row[RGC_BATCH_SLOTS];
    int64_t n;
};

/* Look up, check and mark the words gathered in b; the first bad one stops it. */
static int64_t resolve(const struct rgc_objects *o, struct rgc_mark *mk, struct batch *b)
{
    for (int64_t e = 0; e < b->n; e++) {
        int64_t g = granule_of(o, b->word[e]);
        int64_t t = g < 0 ? -1 : o->index[g];
        b->row[e] = t < o->n ? t : -1;
    }
    for (int64_t e = 0; e < b->n; e++) {
        int64_t t = b->row[e];
        if (t >= 0) {
            RGC_PREFETCH(o->start + t);
            RGC_PREFETCH(mk->live + t);
            RGC_PREFETCH(o->nrefs + t);
        }
    }
    for (int64_t e = 0; e < b->n; e++) {
        int64_t t = b->row[e];
        if (t < 0 || o->start[t] != b->word[e]) {
            mk->bad = b->word[e];
            mk->at = b->position[e];
            return RGC_BAD_ADDRESS;
        }
        mk->slot_target[b->position[e]] = t;
        if (!mk->live[t]) {
            RGC_PREFETCH(o->slot_base + t);
            mark_row(o, mk, t);
        }
    }
    b->n = 0;
    return RGC_DONE;
}

/* Read the slots [j0, j1) of row r into b (which has room), None slots recorded at once. */
static void gather(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk, struct batch *b,
                   int64_t r, int64_t j0, int64_t j1)
{
    int64_t lo = o->start[r] + o->slot_offset;
    int64_t pos = o->slot_base[r];
    for (int64_t j = j0; j < j1; j++) {
        int64_t w = (int64_t)load_word(m, lo + 8 * j);
        if (w == 0) {
            mk->slot_target[pos + j] = -1;
        } else if (w & 1) {
            mk->slot_target[pos + j] = RGC_IMMEDIATE;  /* not a reference: never followed */
        } else {
            b->word[b->n] = w;
            b->position[b->n] = pos + j;
            b->n++;
        }
    }
}

/* The row whose slot is at position p (for naming a bad slot's owner). */
static int64_t owner_of_position(const struct rgc_objects *o, int64_t p)
{
    int64_t lo = 0, hi = o->n - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (o->slot_base[mid] <= p)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

int64_t rgc_core_mark(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk)
{
    struct batch b;
    b.n = 0;
    int64_t rows[RGC_BATCH_ROWS];
    while (mk->depth > 0) {
        /* take rows off the top while their slots fit in one batch */
        int64_t nr = 0, slots = 0;
        while (nr < RGC_BATCH_ROWS && mk->depth > 0) {
            int64_t r = mk->stack[mk->depth - 1];
            int64_t k = o->nrefs[r];
            if (nr > 0 && slots + k > RGC_BATCH_SLOTS)
                break;
            mk->depth--;
            if (k == 0)
                continue;
            rows[nr++] = r;
            slots += k;
        }
        for (int64_t i = 0; i < nr; i++)
            RGC_PREFETCH(host(m, o->start[rows[i]] + o->slot_offset));
        for (int64_t i = 0; i < nr; i++) {
            int64_t r = rows[i];
            int64_t lo = o->start[r] + o->slot_offset;
            int64_t page = missing_page(m, lo, lo + 8 * o->nrefs[r]);
            if (page >= 0) {
                /* nothing of rows[i..] is read yet: back on the stack, rows[i] on top */
                for (int64_t j = nr - 1; j >= i; j--)
                    mk->stack[mk->depth++] = rows[j];
                if (resolve(o, mk, &b) != RGC_DONE)
                    goto bad;
                mk->page = page;
                return RGC_NEED_PAGE;
            }
            int64_t k = o->nrefs[r];
            for (int64_t j0 = 0; j0 < k; j0 += RGC_BATCH_SLOTS) {  /* a row of many slots: in pieces */
                int64_t j1 = k - j0 > RGC_BATCH_SLOTS ? j0 + RGC_BATCH_SLOTS : k;
                if (b.n + (j1 - j0) > RGC_BATCH_SLOTS && resolve(o, mk, &b) != RGC_DONE)
                    goto bad;
                gather(o, m, mk, &b, r, j0, j1);
            }
            mk->slots_read += k;
        }
        if (resolve(o, mk, &b) != RGC_DONE)
            goto bad;
    }
    return RGC_DONE;
bad:
    mk->at = owner_of_position(o, mk->at);
    return RGC_BAD_ADDRESS;
}

/* How far ahead fixup prefetches the new addresses it will read. */
#define RGC_FIXUP_AHEAD 16

int64_t rgc_core_fixup(const struct rgc_mem *m, const int64_t *rows, const int64_t *loc, int64_t from, int64_t n,
                       const int64_t *nrefs, const int64_t *slot_base, const int64_t *slot_target,
                       const int64_t *new_by_row, int64_t slot_offset)
{
    for (int64_t i = from; i < n; i++) {
        if (i + RGC_FIXUP_AHEAD < n) {
            int64_t a = rows[i + RGC_FIXUP_AHEAD];
            const int64_t *t = slot_target + slot_base[a];
            for (int64_t j = 0; j < nrefs[a] && j < 4; j++)
                if (t[j] >= 0)
                    RGC_PREFETCH(new_by_row + t[j]);
            RGC_PREFETCH_W(host(m, loc[i + RGC_FIXUP_AHEAD] + slot_offset));
        }
        int64_t r = rows[i];
        int64_t k = nrefs[r];
        if (k == 0)
            continue;
        int64_t lo = loc[i] + slot_offset;
        if (missing_page(m, lo, lo + 8 * k) >= 0)
            return i;
        const int64_t *target = slot_target + slot_base[r];
        for (int64_t j = 0; j < k; j++) {
            int64_t t = target[j];
            if (t >= -1)  /* an immediate stays as it was */
                store_word(m, lo + 8 * j, t >= 0 ? (uint64_t)new_by_row[t] : 0);
        }
    }
    return n;
}

int64_t rgc_core_forward(const struct rgc_objects *o, const int64_t *new_by_row, const int64_t *addrs, int64_t n,
                         int64_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        if (addrs[i] == 0) {
            out[i] = 0;
            continue;
        }
        int64_t r = rgc_core_row_of(o, addrs[i]);
        if (r < 0)
            return i;
        out[i] = new_by_row[r];
    }
    return n;
}

void rgc_core_scatter(const int64_t *rows, const int64_t *new_start, int64_t n, int64_t *new_by_row)
{
    for (int64_t i = 0; i < n; i++)
        new_by_row[rows[i]] = new_start[i];
}

int64_t rgc_core_check_headers(const struct rgc_objects *o, const struct rgc_mem *m, const int64_t *nbytes,
                               int64_t page_size, uint64_t large_bit, uint64_t tag, int64_t from,
                               struct rgc_check *out)
{
    for (int64_t i = from; i < o->n; i++) {
        int64_t s = o->start[i];
        int64_t page = missing_page(m, s, s + 16);
        if (page >= 0) {
            out->at = i;
            out->page = page;
            return RGC_NEED_PAGE;
        }
        uint64_t w0 = load_word(m, s), w1 = load_word(m, s + 8);
        uint64_t want1 = (uint64_t)o->nrefs[i] | (o->total[i] >= page_size ? large_bit : 0) | tag;
        if (w0 != (uint64_t)nbytes[i] || w1 != want1) {
            out->at = i;
            out->bad = (int64_t)w0;
            return RGC_BAD_ADDRESS;
        }
    }
    return RGC_DONE;
}

int64_t rgc_core_check_slots(const struct rgc_objects *o, const struct rgc_mem *m, int64_t from,
                             struct rgc_check *out)
{
    for (int64_t i = from; i < o->n; i++) {
        int64_t k = o->nrefs[i];
        int64_t lo = o->start[i] + o->slot_offset;
        int64_t page = missing_page(m, lo, lo + 8 * k);
        if (page >= 0) {
            out->at = i;
            out->page = page;
            return RGC_NEED_PAGE;
        }
        for (int64_t j = 0; j < k; j++) {
            int64_t w = (int64_t)load_word(m, lo + 8 * j);
            if (w != 0 && !(w & 1) && rgc_core_row_of(o, w) < 0) {
                out->at = i;
                out->slot = j;
                out->bad = w;
                return RGC_BAD_ADDRESS;
            }
        }
    }
    return RGC_DONE;
}

int64_t rgc_core_live_bytes(const int64_t *total, const uint8_t *live, int64_t n)
{
    int64_t sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += live[i] ? total[i] : 0;
    return sum;
}
