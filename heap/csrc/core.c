/* The collector's per-object work: see core.h for the contract of each call. */
#include "core.h"

#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define RGC_PREFETCH(p) __builtin_prefetch(p)
#else
#define RGC_PREFETCH(p) ((void)(p))
#endif

/* Rows taken off the stack wait in a small ring while their slots are
   prefetched: scanning an object is then rarely the cache miss that reaching
   it was. The order rows are scanned in changes; what is recorded does not. */
#define RGC_RING 8
/* Slot words looked up together, so their index misses overlap. */
#define RGC_BATCH 16

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
    if (o->total)
        mk->live_bytes += o->total[r];
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

/* Read, resolve and record the slots of row r (its pages are accessible). */
static int64_t scan_row(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk, int64_t r)
{
    int64_t k = o->nrefs[r];
    int64_t lo = o->start[r] + o->slot_offset;
    int64_t *target = mk->slot_target + o->slot_base[r];
    int64_t words[RGC_BATCH], granule[RGC_BATCH];
    for (int64_t j0 = 0; j0 < k; j0 += RGC_BATCH) {
        int64_t nb = k - j0 < RGC_BATCH ? k - j0 : RGC_BATCH;
        for (int64_t j = 0; j < nb; j++) {
            words[j] = (int64_t)load_word(m, lo + 8 * (j0 + j));
            granule[j] = words[j] ? granule_of(o, words[j]) : -1;
            if (granule[j] >= 0)
                RGC_PREFETCH(o->index + granule[j]);
        }
        for (int64_t j = 0; j < nb; j++) {
            int64_t w = words[j];
            if (w == 0) {
                target[j0 + j] = -1;
                continue;
            }
            int64_t t = granule[j] < 0 ? -1 : o->index[granule[j]];
            if (t < 0 || t >= o->n || o->start[t] != w) {
                mk->at = r;
                mk->bad = w;
                return RGC_BAD_ADDRESS;
            }
            target[j0 + j] = t;
            if (!mk->live[t])
                mark_row(o, mk, t);
        }
    }
    mk->slots_read += k;
    return RGC_DONE;
}

int64_t rgc_core_mark(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk)
{
    int64_t ring[RGC_RING];
    int head = 0, count = 0;
    for (;;) {
        while (count < RGC_RING && mk->depth > 0) {
            int64_t r = mk->stack[--mk->depth];
            if (o->nrefs[r] == 0)
                continue;
            const uint8_t *p = host(m, o->start[r] + o->slot_offset);
            if (p)
                RGC_PREFETCH(p);
            ring[(head + count) % RGC_RING] = r;
            count++;
        }
        if (count == 0)
            return RGC_DONE;
        int64_t r = ring[head];
        int64_t lo = o->start[r] + o->slot_offset;
        int64_t page = missing_page(m, lo, lo + 8 * o->nrefs[r]);
        if (page >= 0) {
            /* back on the stack, r on top: the next call resumes with it */
            for (int i = count - 1; i >= 0; i--)
                mk->stack[mk->depth++] = ring[(head + i) % RGC_RING];
            mk->page = page;
            return RGC_NEED_PAGE;
        }
        head = (head + 1) % RGC_RING;
        count--;
        int64_t ret = scan_row(o, m, mk, r);
        if (ret != RGC_DONE)
            return ret;
    }
}

/* How far ahead fixup prefetches the new addresses it will read. */
#define RGC_FIXUP_AHEAD 8

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
            if (w != 0 && rgc_core_row_of(o, w) < 0) {
                out->at = i;
                out->slot = j;
                out->bad = w;
                return RGC_BAD_ADDRESS;
            }
        }
    }
    return RGC_DONE;
}
