/* The collector's per-object work: see core.h for the contract of each call. */
#include "core.h"

#include <stdlib.h>
#include <string.h>

/* A parallel mark needs threads: POSIX ones where there are (heap/_core_build.py links them). */
#if defined(__unix__) || defined(__APPLE__)
#define RGC_THREADS 1
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#else
#define RGC_THREADS 0
#endif

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

void rgc_core_start_bits(struct rgc_objects *o)
{
    memset(o->bits, 0, sizeof(uint64_t) * (size_t)o->nwords);
    for (int64_t r = 0; r < o->n; r++) {
        uint64_t g = (uint64_t)(o->start[r] - o->base) >> o->shift;
        o->bits[g >> 6] |= (uint64_t)1 << (g & 63);
    }
    int64_t before = 0;
    for (int64_t w = 0; w < o->nwords; w++) {
        o->rank[w] = (int32_t)before;
        before += __builtin_popcountll(o->bits[w]);
    }
}

/* The row starting exactly at a by the bitmap, or -1; the granule's word and rank are what it reads. */
static inline int64_t ranked_row(const struct rgc_objects *o, int64_t a)
{
    if (!o->bits)  /* a sparse span (heap.core.Objects.start_bits built none): the index entry */
        return rgc_core_row_of(o, a);
    uint64_t off = (uint64_t)(a - o->base);
    if (a < o->base || off & (((uint64_t)1 << o->shift) - 1))
        return -1;
    uint64_t g = off >> o->shift;
    if (g >= (uint64_t)o->nwords << 6)
        return -1;
    uint64_t word = o->bits[g >> 6], bit = (uint64_t)1 << (g & 63);
    if (!(word & bit))
        return -1;
    return o->rank[g >> 6] + __builtin_popcountll(word & (bit - 1));
}

static inline void prefetch_rank(const struct rgc_objects *o, int64_t a)
{
    if (!o->bits) {
        int64_t gi = granule_of(o, a);
        if (gi >= 0)
            RGC_PREFETCH(o->index + gi);
        return;
    }
    uint64_t g = (uint64_t)(a - o->base) >> o->shift;
    if (a >= o->base && g < (uint64_t)o->nwords << 6) {
        RGC_PREFETCH(o->bits + (g >> 6));
        RGC_PREFETCH(o->rank + (g >> 6));
    }
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

/* Marking is depth-first on an explicit stack, and software-pipelined
   (prefetch-on-grey, after Boehm and Cher et al.): between popping a row and
   marking what its slots name there are four dependent cache misses (the
   row's slots in heap memory, the index entry of each word, the target's
   start and live byte, the target's nrefs and slot_base), and one object at a
   time each would cost a memory latency. So the work passes through three
   small rings: a popped row waits in `rows` while its slots, nrefs and
   slot_base come in; a slot word waits in `words` while its index entry comes
   in; a looked-up target waits in `targets` while its start and live byte
   come in. Each ring advances only when full (or when nothing else can), so
   every load it does was prefetched a ring's length earlier, and the misses
   of a few dozen objects overlap. The stack holds each row with its address
   (known when it is marked), so a pop reads no side table. A chain gives
   rings of one entry: its links cost what dependent loads cost. Which row is
   scanned when changes; what is recorded does not. */
#ifndef RGC_ROWS_AHEAD
#define RGC_ROWS_AHEAD 16
#endif
#ifndef RGC_WORDS_AHEAD
#define RGC_WORDS_AHEAD 16
#endif
#ifndef RGC_TARGETS_AHEAD
#define RGC_TARGETS_AHEAD 16
#endif

struct pipe {
    int64_t row[RGC_ROWS_AHEAD], row_at[RGC_ROWS_AHEAD];
    int64_t word[RGC_WORDS_AHEAD], word_pos[RGC_WORDS_AHEAD];
    int64_t tword[RGC_TARGETS_AHEAD], tpos[RGC_TARGETS_AHEAD], trow[RGC_TARGETS_AHEAD];
    int rh, rn, wh, wn, th, tn;  /* head and count of each ring */
};

/* The shared part of a parallel mark: a stack of rows any marker may take (the caller's mark stack),
   under a lock; markers with nothing to do wait on it, and the mark is over when all of them do. */
struct shared {
#if RGC_THREADS
    pthread_mutex_t lock;
    pthread_cond_t more;
#endif
    int64_t *stack;
    int64_t depth;
    int nthreads, idle, over;
    int stop;                /* a bad word: every marker returns */
    int64_t bad, at;
};

#define RGC_LOCAL_PAIRS 4096   /* a parallel marker's own stack */
#define RGC_SHARE_MIN 2        /* it hands over half of its stack to an idle marker from this depth */

/* One marker's state: the whole mark's when it marks alone, one thread's of a parallel mark. */
struct worker {
    uint8_t *live;
    int64_t *slot_target;
    int64_t *stack;          /* rows waiting to be scanned, (row, address) pairs */
    int64_t depth, cap;      /* pairs on it, and room; past it half is handed to the shared stack */
    int64_t marked, slots_read;
    int64_t bad, at, page;
    struct shared *sh;       /* NULL: marking alone */
};

static void share(struct worker *w);

static inline void push_row(struct worker *w, int64_t r, int64_t at)
{
    /* a parallel marker hands half of its stack over when it is full, or when another one waits for work */
    if (w->sh && (w->depth == w->cap || (w->depth >= RGC_SHARE_MIN && __atomic_load_n(&w->sh->idle, __ATOMIC_RELAXED)
                                          && !__atomic_load_n(&w->sh->depth, __ATOMIC_RELAXED))))
        share(w);
    w->stack[2 * w->depth] = r;
    w->stack[2 * w->depth + 1] = at;
    w->depth++;
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
        if (!mk->live[r]) {
            mk->live[r] = 1;
            mk->marked++;
            mk->stack[2 * mk->depth] = r;
            mk->stack[2 * mk->depth + 1] = roots[i];
            mk->depth++;
        }
    }
    return RGC_DONE;
}

/* Whether this marker is the one that marks row t now (in a parallel mark, another may race it to it). */
static inline int claim(struct worker *w, int64_t t)
{
    if (w->live[t])
        return 0;
    if (w->sh)
        return !__atomic_exchange_n(&w->live[t], 1, __ATOMIC_RELAXED);
    w->live[t] = 1;
    return 1;
}

/* The oldest looked-up target: check it, record it, mark it. 0, or -1 for a word that is no object start. */
static inline int target_out(const struct rgc_objects *o, struct worker *mk, struct pipe *p)
{
    int i = p->th;
    p->th = (p->th + 1) & (RGC_TARGETS_AHEAD - 1);
    p->tn--;
    int64_t t = p->trow[i], w = p->tword[i];
    if (t < 0) {
        mk->bad = w;
        mk->at = p->tpos[i];
        return -1;
    }
    mk->slot_target[p->tpos[i]] = t;
    if (claim(mk, t)) {
        mk->marked++;
        int64_t first = o->slot_base[t];
        /* a leaf is not pushed: popping it would touch its memory (a TLB miss) for no slot */
        if ((t + 1 < o->n ? o->slot_base[t + 1] : first + o->nrefs[t]) != first)
            push_row(mk, t, w);
    }
    return 0;
}

static inline int target_in(const struct rgc_objects *o, struct worker *mk, struct pipe *p, int64_t w,
                            int64_t pos, int64_t t)
{
    if (p->tn == RGC_TARGETS_AHEAD && target_out(o, mk, p) < 0)
        return -1;
    if (t >= 0) {
        RGC_PREFETCH(mk->live + t);
        RGC_PREFETCH(o->slot_base + t);  /* whether it has slots (pushed or not), and its scan if it does */
    }
    int i = (p->th + p->tn) & (RGC_TARGETS_AHEAD - 1);
    p->tword[i] = w;
    p->tpos[i] = pos;
    p->trow[i] = t;
    p->tn++;
    return 0;
}

/* The oldest slot word: its index entry is in; on to the targets ring. */
static inline int word_out(const struct rgc_objects *o, struct worker *mk, struct pipe *p)
{
    int i = p->wh;
    p->wh = (p->wh + 1) & (RGC_WORDS_AHEAD - 1);
    p->wn--;
    int64_t w = p->word[i];
    int64_t t = ranked_row(o, w);
    return target_in(o, mk, p, w, p->word_pos[i], t < o->n ? t : -1);
}

static inline int word_in(const struct rgc_objects *o, struct worker *mk, struct pipe *p, int64_t w, int64_t pos)
{
    if (p->wn == RGC_WORDS_AHEAD && word_out(o, mk, p) < 0)
        return -1;
    prefetch_rank(o, w);
    int i = (p->wh + p->wn) & (RGC_WORDS_AHEAD - 1);
    p->word[i] = w;
    p->word_pos[i] = pos;
    p->wn++;
    return 0;
}

/* Scan the oldest popped row: its slot words go to the words ring. 0, -1 (a bad word), or 1: its slots lie
   on a page not accessible here (mk->page; the row is still in the ring). */
static inline int row_out(const struct rgc_objects *o, const struct rgc_mem *m, struct worker *mk, struct pipe *p)
{
    int i = p->rh;
    int64_t r = p->row[i];
    int64_t pos = o->slot_base[r];
    int64_t k = (r + 1 < o->n ? o->slot_base[r + 1] : pos + o->nrefs[r]) - pos;  /* slot_base: nrefs' running sum */
    int64_t lo = p->row_at[i] + o->slot_offset;
    if (k) {
        int64_t page = missing_page(m, lo, lo + 8 * k);
        if (page >= 0) {
            mk->page = page;
            return 1;
        }
    }
    p->rh = (p->rh + 1) & (RGC_ROWS_AHEAD - 1);
    p->rn--;
    RGC_PREFETCH_W(mk->slot_target + pos);
    for (int64_t j = 0; j < k; j++) {
        int64_t w = (int64_t)load_word(m, lo + 8 * j);
        if (w == 0) {
            mk->slot_target[pos + j] = -1;
        } else if (w & 1) {
            mk->slot_target[pos + j] = RGC_IMMEDIATE;  /* not a reference: never followed */
        } else if (word_in(o, mk, p, w, pos + j) < 0) {
            return -1;
        }
    }
    mk->slots_read += k;
    return 0;
}

static inline void row_in(const struct rgc_objects *o, const struct rgc_mem *m, struct worker *mk,
                          struct pipe *p)
{
    mk->depth--;
    int64_t r = mk->stack[2 * mk->depth], at = mk->stack[2 * mk->depth + 1];
    RGC_PREFETCH(host(m, at + o->slot_offset));
    RGC_PREFETCH(o->slot_base + r);
    int i = (p->rh + p->rn) & (RGC_ROWS_AHEAD - 1);
    p->row[i] = r;
    p->row_at[i] = at;
    p->rn++;
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

/* Finish the words and targets in flight (they read only side tables); -1 at a bad word. */
static int drain(const struct rgc_objects *o, struct worker *mk, struct pipe *p)
{
    while (p->wn)
        if (word_out(o, mk, p) < 0)
            return -1;
    while (p->tn)
        if (target_out(o, mk, p) < 0)
            return -1;
    return 0;
}

/* Scan until the stack and the rings are empty: RGC_DONE, RGC_NEED_PAGE or RGC_BAD_ADDRESS (w->bad, w->at). */
static int64_t run(const struct rgc_objects *o, const struct rgc_mem *m, struct worker *w, int (*more)(struct worker *))
{
    struct pipe p;
    p.rh = p.rn = p.wh = p.wn = p.th = p.tn = 0;
    for (;;) {
        int ret = 0;
        if (w->depth > 0 && p.rn < RGC_ROWS_AHEAD)
            row_in(o, m, w, &p);
        else if (p.rn > 0)
            ret = row_out(o, m, w, &p);
        else if (p.wn > 0)
            ret = word_out(o, w, &p);
        else if (p.tn > 0)
            ret = target_out(o, w, &p);
        else if (!more || !more(w))
            return RGC_DONE;
        if (ret == 1) {
            /* nothing of the waiting rows is read yet: back on the stack, the blocked one on top */
            for (int j = p.rn - 1; j >= 0; j--) {
                int i = (p.rh + j) & (RGC_ROWS_AHEAD - 1);
                push_row(w, p.row[i], p.row_at[i]);
            }
            if (drain(o, w, &p) < 0)
                return RGC_BAD_ADDRESS;
            return RGC_NEED_PAGE;
        }
        if (ret < 0)
            return RGC_BAD_ADDRESS;
    }
}

static int64_t mark_alone(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk)
{
    struct worker w = {mk->live, mk->slot_target, mk->stack, mk->depth, o->n + 1, mk->marked, mk->slots_read,
                       0, 0, 0, NULL};
    int64_t ret = run(o, m, &w, NULL);
    mk->depth = w.depth;
    mk->marked = w.marked;
    mk->slots_read = w.slots_read;
    mk->page = w.page;
    mk->bad = w.bad;
    mk->at = w.at;
    return ret;
}

#if RGC_THREADS
/* Hand the older half of w's stack (the roots of the larger subtrees) to the shared stack. */
static void share(struct worker *w)
{
    struct shared *sh = w->sh;
    int64_t half = w->depth / 2;
    pthread_mutex_lock(&sh->lock);
    memcpy(sh->stack + 2 * sh->depth, w->stack, sizeof(int64_t) * 2 * (size_t)half);
    sh->depth += half;
    pthread_cond_broadcast(&sh->more);
    pthread_mutex_unlock(&sh->lock);
    memmove(w->stack, w->stack + 2 * half, sizeof(int64_t) * 2 * (size_t)(w->depth - half));
    w->depth -= half;
}

/* w has nothing left: take rows from the shared stack, waiting while others may still give some. 1: rows
   taken; 0: the mark is over (or stopped). */
static int take(struct worker *w)
{
    struct shared *sh = w->sh;
    pthread_mutex_lock(&sh->lock);
    sh->idle++;
    while (sh->depth == 0 && !sh->over && !sh->stop) {
        if (sh->idle == sh->nthreads) {
            sh->over = 1;
            pthread_cond_broadcast(&sh->more);
            break;
        }
        pthread_cond_wait(&sh->more, &sh->lock);
    }
    int got = 0;
    if (sh->depth > 0 && !sh->stop) {
        int64_t k = sh->depth < RGC_LOCAL_PAIRS / 4 ? sh->depth : RGC_LOCAL_PAIRS / 4;
        if (k > 1 && sh->nthreads > 1 && k == sh->depth)
            k = (k + 1) / 2;  /* leave some for the others */
        sh->depth -= k;
        memcpy(w->stack, sh->stack + 2 * sh->depth, sizeof(int64_t) * 2 * (size_t)k);
        w->depth = k;
        got = 1;
        sh->idle--;
    }
    pthread_mutex_unlock(&sh->lock);
    return got;
}

/* more() of a parallel marker: hand work to an idle one when it has some to spare (checked between objects),
   and take some when it has none. */
static int parallel_more(struct worker *w)
{
    return take(w);
}

static void stop_all(struct worker *w)
{
    struct shared *sh = w->sh;
    pthread_mutex_lock(&sh->lock);
    if (!sh->stop) {
        sh->stop = 1;
        sh->bad = w->bad;
        sh->at = w->at;
    }
    pthread_cond_broadcast(&sh->more);
    pthread_mutex_unlock(&sh->lock);
}

struct marker {
    const struct rgc_objects *o;
    const struct rgc_mem *m;
    struct worker w;
    int64_t ret;
    pthread_t thread;
};

static void marker_main(struct marker *mt)
{
    mt->ret = run(mt->o, mt->m, &mt->w, parallel_more);
    if (mt->ret != RGC_DONE)
        stop_all(&mt->w);
}

static void *marker_thread(void *arg)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);  /* signals go to the process's own threads */
    marker_main(arg);
    return NULL;
}

/* The mark by mk->threads markers: each scans from its own stack, hands half of it over when another is
   idle or it is full, and takes from the shared stack when it is empty. Direct memory only (a page to
   bring in would stop one marker while the others go on). -1: could not start them (mark alone). */
static int64_t mark_parallel(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk)
{
    int nt = (int)(mk->threads < 16 ? mk->threads : 16);
    struct marker mt[16];
    struct shared sh;
    memset(&sh, 0, sizeof sh);
    sh.stack = mk->stack;
    sh.depth = mk->depth;
    sh.nthreads = nt;
    if (pthread_mutex_init(&sh.lock, NULL))
        return -1;
    if (pthread_cond_init(&sh.more, NULL)) {
        pthread_mutex_destroy(&sh.lock);
        return -1;
    }
    int started = 0;
    for (int i = 0; i < nt; i++) {
        int64_t *local = malloc(sizeof(int64_t) * 2 * RGC_LOCAL_PAIRS);
        mt[i] = (struct marker){o, m, {mk->live, mk->slot_target, local, 0, RGC_LOCAL_PAIRS, 0, 0, 0, 0, 0, &sh},
                                RGC_DONE};
        if (!local || (i > 0 && pthread_create(&mt[i].thread, NULL, marker_thread, &mt[i]))) {
            free(local);
            break;
        }
        started++;
    }
    if (started < nt) {  /* fewer markers than planned: those started must not wait for the others */
        pthread_mutex_lock(&sh.lock);
        sh.nthreads = started;
        pthread_cond_broadcast(&sh.more);
        pthread_mutex_unlock(&sh.lock);
    }
    if (started > 0)
        marker_main(&mt[0]);
    for (int i = 1; i < started; i++)
        pthread_join(mt[i].thread, NULL);
    for (int i = 0; i < started; i++) {
        mk->marked += mt[i].w.marked;
        mk->slots_read += mt[i].w.slots_read;
        free(mt[i].w.stack);
    }
    pthread_cond_destroy(&sh.more);
    pthread_mutex_destroy(&sh.lock);
    if (started == 0)
        return -1;
    mk->depth = 0;
    if (sh.stop) {
        mk->bad = sh.bad;
        mk->at = sh.at;
        return RGC_BAD_ADDRESS;
    }
    return RGC_DONE;
}
#else
static void share(struct worker *w)
{
    (void)w;  /* never called: a lone marker's stack has room for every row */
}
#endif

int64_t rgc_core_mark(const struct rgc_objects *o, const struct rgc_mem *m, struct rgc_mark *mk)
{
    int64_t ret = -1;
#if RGC_THREADS
    if (mk->threads > 1 && m->direct && mk->depth > 0)
        ret = mark_parallel(o, m, mk);
#endif
    if (ret < 0)
        ret = mark_alone(o, m, mk);
    if (ret == RGC_BAD_ADDRESS)
        mk->at = owner_of_position(o, mk->at);
    return ret;
}

/* How far ahead fixup prefetches the new addresses it will read. */
#define RGC_FIXUP_AHEAD 16

/* Prefetch the new addresses row `a`'s first slots will be fixed to (random rows of new_by_row). */
static inline void prefetch_new_addresses(int64_t a, const int64_t *nrefs, const int64_t *slot_base,
                                          const int64_t *slot_target, const int64_t *new_by_row)
{
    const int64_t *t = slot_target + slot_base[a];
    for (int64_t j = 0; j < nrefs[a] && j < 4; j++)
        if (t[j] >= 0)
            RGC_PREFETCH(new_by_row + t[j]);
}

int64_t rgc_core_fixup(const struct rgc_mem *m, const int64_t *rows, const int64_t *loc, int64_t from, int64_t n,
                       const int64_t *nrefs, const int64_t *slot_base, const int64_t *slot_target,
                       const int64_t *new_by_row, int64_t slot_offset)
{
    for (int64_t i = from; i < n; i++) {
        if (i + RGC_FIXUP_AHEAD < n) {
            prefetch_new_addresses(rows[i + RGC_FIXUP_AHEAD], nrefs, slot_base, slot_target, new_by_row);
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

/* Whether [a, a + len) lies on one page accessible through m (always, for direct memory). */
static inline int one_page(const struct rgc_mem *m, int64_t a, int64_t len)
{
    if (m->direct)
        return 1;
    return (a >> m->page_shift) == ((a + len - 1) >> m->page_shift) && missing_page(m, a, a + len) < 0;
}

/* Write the new values of the slots of objects [lo, hi) (rows[i], at new_start[i]): the fixup half of a slide. */
static void fix_objects(const struct rgc_mem *m, const int64_t *rows, const int64_t *new_start, int64_t lo,
                        int64_t hi, const int64_t *nrefs, const int64_t *slot_base, const int64_t *slot_target,
                        const int64_t *new_by_row, int64_t slot_offset)
{
    for (int64_t i = lo; i < hi; i++) {
        if (i + RGC_FIXUP_AHEAD < hi)
            prefetch_new_addresses(rows[i + RGC_FIXUP_AHEAD], nrefs, slot_base, slot_target, new_by_row);
        int64_t r = rows[i], dst = new_start[i], k = nrefs[r];
        const int64_t *target = slot_target + slot_base[r];
        for (int64_t j = 0; j < k; j++) {
            int64_t t = target[j];
            if (t >= -1)  /* an immediate stays as it was */
                store_word(m, dst + slot_offset + 8 * j, t >= 0 ? (uint64_t)new_by_row[t] : 0);
        }
    }
}

#if RGC_THREADS
/* A slide's fixup on a thread of its own, following the mover: it fixes the objects the mover has
   published as moved. Safe because an object slides down in address order: what the mover writes or
   reads later lies above every object already moved, so the two never touch the same bytes. */
struct fixer {
    const struct rgc_mem *m;
    const int64_t *rows, *new_start, *nrefs, *slot_base, *slot_target, *new_by_row;
    int64_t slot_offset, from, n;
    int64_t moved_up_to;  /* objects [from, moved_up_to) are in place (the mover's release store) */
    pthread_t thread;
};

static void *fixer_main(void *arg)
{
    struct fixer *f = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    int64_t i = f->from;
    for (int idle = 0; i < f->n;) {
        int64_t d = __atomic_load_n(&f->moved_up_to, __ATOMIC_ACQUIRE);
        if (d > i) {
            fix_objects(f->m, f->rows, f->new_start, i, d, f->nrefs, f->slot_base, f->slot_target, f->new_by_row,
                        f->slot_offset);
            i = d;
            idle = 0;
        } else if (++idle > 64) {
            sched_yield();
        }
    }
    return NULL;
}
#endif

#define RGC_SLIDE_PUBLISH 256          /* the mover publishes its progress every so many objects */

int64_t rgc_core_slide(const struct rgc_mem *m, const int64_t *rows, const int64_t *old_start, int64_t src_offset,
                       const int64_t *new_start, int64_t from, int64_t n, const int64_t *total,
                       const int64_t *nrefs, const int64_t *slot_base, const int64_t *slot_target,
                       const int64_t *new_by_row, int64_t slot_offset, int64_t *moved, int64_t threads)
{
#if RGC_THREADS
    if (threads > 1 && m->direct && n > from) {
        struct fixer f = {m, rows, new_start, nrefs, slot_base, slot_target, new_by_row, slot_offset, from, n,
                          from, 0};
        if (pthread_create(&f.thread, NULL, fixer_main, &f) == 0) {
            for (int64_t i = from; i < n; i++) {
                int64_t r = rows[i], src = old_start[r] + src_offset, dst = new_start[i], len = total[r];
                if (src != dst) {
                    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, (size_t)len);
                    *moved += len;
                }
                if ((i + 1 - from) % RGC_SLIDE_PUBLISH == 0)
                    __atomic_store_n(&f.moved_up_to, i + 1, __ATOMIC_RELEASE);
            }
            __atomic_store_n(&f.moved_up_to, n, __ATOMIC_RELEASE);
            pthread_join(f.thread, NULL);
            return n;
        }
    }
#else
    (void)threads;
#endif
    for (int64_t i = from; i < n; i++) {
        if (i + RGC_FIXUP_AHEAD < n)
            prefetch_new_addresses(rows[i + RGC_FIXUP_AHEAD], nrefs, slot_base, slot_target, new_by_row);
        int64_t r = rows[i], src = old_start[r] + src_offset, dst = new_start[i], len = total[r];
        if (!one_page(m, src, len) || !one_page(m, dst, len))
            return i;
        if (src != dst) {
            memmove((void *)host(m, dst), host(m, src), (size_t)len);
            *moved += len;
        }
        fix_objects(m, rows, new_start, i, i + 1, nrefs, slot_base, slot_target, new_by_row, slot_offset);
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

int64_t rgc_core_same_places(const int64_t *start, const int64_t *rows, const int64_t *new_start, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (start[rows[i]] != new_start[i])
            return 0;
    return 1;
}

/* The page of a and the objects [i, *end) of it that are smaller than a page; their bytes. */
static inline int64_t unit_bytes(const int64_t *start, const int64_t *total, int64_t n, int64_t base, int shift,
                                 int64_t page, int64_t i, int64_t *end)
{
    int64_t u = (start[i] - base) >> shift, bytes = 0, j = i;
    for (; j < n && total[j] < page && ((start[j] - base) >> shift) == u; j++)
        bytes += total[j];
    *end = j;
    return bytes;
}

int64_t rgc_core_plan_stays(const int64_t *start, const int64_t *total, int64_t n, int64_t base, int64_t page,
                            int64_t dense_bytes, int64_t *ev_first, int64_t *ev_pages)
{
    if (page & (page - 1))
        return -1;
    int shift = __builtin_ctzll((uint64_t)page);
    int64_t i = 0, dst = 0, j;
    while (i < n) {  /* the whole pieces, each where the tiling puts it */
        int64_t pg = (start[i] - base) >> shift;
        if (total[i] >= page) {
            if (pg != dst || ((start[i] - base) & (page - 1)))
                return -1;
            dst += (total[i] + page - 1) >> shift;
            i++;
        } else if (unit_bytes(start, total, n, base, shift, page, i, &j) >= dense_bytes) {
            if (pg != dst)
                return -1;
            dst++;
            i = j;
        } else {
            break;  /* the first sparse page: evacuees from here on */
        }
    }
    *ev_first = i;
    int64_t pos = 0, origin = base + (dst << shift);
    while (i < n) {  /* only sparse pages of small objects, each object where packing puts it */
        if (total[i] >= page || unit_bytes(start, total, n, base, shift, page, i, &j) >= dense_bytes)
            return -1;
        for (; i < j; i++) {
            int64_t t = total[i];
            if ((pos >> shift) != ((pos + t - 1) >> shift))
                pos = (pos + page - 1) & ~(page - 1);
            if (origin + pos != start[i])
                return -1;
            pos += t;
        }
    }
    *ev_pages = (pos + page - 1) >> shift;
    return dst;
}

int64_t rgc_core_live_rows(const uint8_t *live, int64_t n, const int64_t *start, const int64_t *total,
                           int64_t *rows, int64_t *l_start, int64_t *l_total)
{
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        rows[m] = i;  /* written whether live or not: no branch on a coin toss */
        l_start[m] = start[i];
        l_total[m] = total[i];
        m += live[i] != 0;
    }
    return m;
}

int64_t rgc_core_live_bytes(const int64_t *total, const uint8_t *live, int64_t n)
{
    int64_t sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += total[i] & -(int64_t)(live[i] != 0);  /* no branch: live is a coin toss per row */
    return sum;
}
