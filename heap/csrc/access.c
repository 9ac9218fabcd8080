/* The mutator's compiled Ref operations and allocation step (heap/fastpath.py).

   For a backend whose heap addresses are this process's own (memory_in_place)
   and the default object layout, one Ref operation is one call here: the
   gate, the bounds check and the load or store, heap memory touched in place.
   cffi releases the GIL around the call, so an access that meets a page not
   yet installed sleeps in the kernel (or is served by the self-serving SIGBUS
   handler) while the fault handler runs; the arena is mapped for the heap's
   whole life, so no access here can meet an unmapped page (the gate is shut,
   for good, before the heap unmaps it).

   The gate is a safepoint protocol with no lock on the mutator's side: an
   access adds itself to `inflight`, then reads `state`; any bit set there
   (a pause drained the gate, the heap is closed, host code of a collection
   is running) and it leaves at once and returns RGC_SLOW: the caller takes
   the heap lock and the generic path. A pause sets PAUSED first, then waits
   for `inflight` to reach zero. Both sides use sequentially consistent
   atomics, so either the access sees the bit or the pause sees the access.
   Only a thread that holds the heap lock and passed the heap's entry check
   clears PAUSED again (the pause is over then). */
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define RGC_GATE_PAUSED 1
#define RGC_GATE_CLOSED 2
#define RGC_GATE_HOST 4  /* added once per thread running host code of a collection */
#define RGC_SLOW (-1)
#define RGC_SLOW_WORD 2  /* no slot word is 2: odd words are immediates, even ones 16-aligned addresses */

struct rgc_gate {
    int64_t state;
    int64_t inflight;
    int64_t epoch;     /* moves on with every drain */
    int64_t *addr;     /* handle -> its object's address */
    int64_t *nbytes;   /* handle -> the object's payload bytes; -1: not known yet */
    int64_t *nrefs;    /* handle -> the object's slots */
    int64_t header;    /* offset of slot 0 from the object's start */
};

static inline int rgc_enter(struct rgc_gate *g)
{
    __atomic_add_fetch(&g->inflight, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&g->state, __ATOMIC_SEQ_CST) == 0) return 1;
    __atomic_sub_fetch(&g->inflight, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static inline void rgc_leave(struct rgc_gate *g)
{
    __atomic_sub_fetch(&g->inflight, 1, __ATOMIC_SEQ_CST);
}

/* the handle's object, its payload bytes and slots; 0 when its shape is not cached yet */
static inline char *rgc_object(struct rgc_gate *g, int64_t h, int64_t *nbytes, int64_t *nrefs)
{
    /* nbytes before nrefs: the heap stores nrefs first (HandleTable.set_shape) */
    *nbytes = __atomic_load_n(&__atomic_load_n(&g->nbytes, __ATOMIC_RELAXED)[h], __ATOMIC_ACQUIRE);
    *nrefs = __atomic_load_n(&g->nrefs, __ATOMIC_RELAXED)[h];
    if (*nbytes < 0 || *nrefs < 0) return 0;  /* arrays of two generations of a growth: slow */
    return (char *)__atomic_load_n(&g->addr, __ATOMIC_RELAXED)[h];
}

/* Inside the gate: where bytes [offset, offset + length) of h's payload lie; 0 (the gate left again)
   when the call must take the slow path. */
static inline char *rgc_enter_payload(struct rgc_gate *g, int64_t h, int64_t offset, int64_t length)
{
    int64_t nbytes, nrefs;
    if (!rgc_enter(g)) return 0;
    char *obj = rgc_object(g, h, &nbytes, &nrefs);
    if (!obj || offset < 0 || length < 0 || offset > nbytes - length) {
        rgc_leave(g);
        return 0;
    }
    return obj + g->header + 8 * nrefs + offset;
}

int64_t rgc_ref_load(struct rgc_gate *g, int64_t h, int64_t offset, int64_t length, char *out)
{
    char *at = rgc_enter_payload(g, h, offset, length);
    if (!at) return RGC_SLOW;
    memcpy(out, at, (size_t)length);
    rgc_leave(g);
    return 0;
}

int64_t rgc_ref_store(struct rgc_gate *g, int64_t h, int64_t offset, const char *data, int64_t length)
{
    char *at = rgc_enter_payload(g, h, offset, length);
    if (!at) return RGC_SLOW;
    memcpy(at, data, (size_t)length);
    rgc_leave(g);
    return 0;
}

/* The word slot `slot` holds, or RGC_SLOW_WORD. */
int64_t rgc_ref_get_slot(struct rgc_gate *g, int64_t h, int64_t slot)
{
    int64_t nbytes, nrefs;
    if (!rgc_enter(g)) return RGC_SLOW_WORD;
    char *obj = rgc_object(g, h, &nbytes, &nrefs);
    if (!obj || slot < 0 || slot >= nrefs) {
        rgc_leave(g);
        return RGC_SLOW_WORD;
    }
    int64_t word = *(volatile int64_t *)(obj + g->header + 8 * slot);
    rgc_leave(g);
    return word;
}

/* Slot `slot` := the address handle `target` holds (target >= 0), else `word`. */
int64_t rgc_ref_set_slot(struct rgc_gate *g, int64_t h, int64_t slot, int64_t target, int64_t word)
{
    int64_t nbytes, nrefs;
    if (!rgc_enter(g)) return RGC_SLOW;
    char *obj = rgc_object(g, h, &nbytes, &nrefs);
    if (!obj || slot < 0 || slot >= nrefs) {
        rgc_leave(g);
        return RGC_SLOW;
    }
    if (target >= 0) word = __atomic_load_n(&g->addr, __ATOMIC_RELAXED)[target];
    *(volatile int64_t *)(obj + g->header + 8 * slot) = word;
    rgc_leave(g);
    return 0;
}

/* ---- the collector's side ---- */
void rgc_gate_shut(struct rgc_gate *g, int64_t bits)
{
    __atomic_or_fetch(&g->state, bits, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&g->epoch, 1, __ATOMIC_SEQ_CST);
}

void rgc_gate_open(struct rgc_gate *g, int64_t bits)
{
    __atomic_and_fetch(&g->state, ~bits, __ATOMIC_SEQ_CST);
}

void rgc_gate_add(struct rgc_gate *g, int64_t amount)
{
    __atomic_add_fetch(&g->state, amount, __ATOMIC_SEQ_CST);
}

/* Wait (without the GIL) until no access is in flight: 1, or 0 after timeout_ns (< 0: no limit).
   Accesses take well under a microsecond unless they fault: spin briefly, then sleep. */
int64_t rgc_gate_wait(struct rgc_gate *g, int64_t timeout_ns)
{
    struct timespec t0, now, nap = { 0, 20000 };
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t round = 0;; round++) {
        if (__atomic_load_n(&g->inflight, __ATOMIC_SEQ_CST) == 0) return 1;
        if (round < 64) { sched_yield(); continue; }
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t waited = (int64_t)(now.tv_sec - t0.tv_sec) * 1000000000 + (now.tv_nsec - t0.tv_nsec);
        if (timeout_ns >= 0 && waited >= timeout_ns) return 0;
        nanosleep(&nap, NULL);
    }
}

/* ---- allocation: one bump in the current small-object page ---- */
struct rgc_bump {
    int64_t *place;      /* the Allocator's [cursor, limit, top, end, base, page size] */
    int64_t *rows;       /* the ObjectTable's [n, capacity, &start, &nbytes, &nrefs, &total, &slot] */
    int32_t *index;      /* the address index: granule -> row */
    int64_t index_base, index_shift, index_len;
    uint64_t word1;      /* header word 1 without nrefs (the magic) */
    int64_t host_words;  /* 0 or 1: the host's header word follows the heap's two */
    int8_t *kind;        /* the Allocator's page kinds */
    int64_t small_kind;  /* heap.alloc.PAGE_SMALL */
};

/* Place a small object (as Allocator.place does: in the current page, else at
   the bottom of a fresh one), write its header, record its row and its index
   entry; its address, or 0 when the caller's Python path must do it (a large
   object, a full heap, a full table). One call, so nothing between placing
   and recording can be interrupted. */
int64_t rgc_bump(struct rgc_bump *b, int64_t nbytes, int64_t nrefs, int64_t total, uint64_t host)
{
    int64_t *rows = b->rows, *place = b->place;
    int64_t cursor = place[0], n = rows[0], page = place[5];
    if (n >= rows[1] || n >= INT32_MAX || total >= page) return 0;
    int fresh = !cursor || total > place[1] - cursor;
    if (fresh) {  /* a fresh page at the top */
        cursor = place[2];
        if (cursor > place[3] - page) return 0;
    }
    int64_t granule = (cursor - b->index_base) >> b->index_shift;
    if (granule < 0 || granule >= b->index_len) return 0;
    if (fresh) {
        b->kind[(cursor - place[4]) / page] = (int8_t)b->small_kind;
        place[2] = place[1] = cursor + page;
    }
    uint64_t *head = (uint64_t *)cursor;
    head[0] = (uint64_t)nbytes;
    head[1] = (uint64_t)nrefs | b->word1;
    if (b->host_words) head[2] = host;
    int64_t *start = (int64_t *)rows[2], *nb = (int64_t *)rows[3], *nr = (int64_t *)rows[4];
    int64_t *tot = (int64_t *)rows[5], *slot = (int64_t *)rows[6];
    slot[n] = n ? slot[n - 1] + nr[n - 1] : 0;
    start[n] = cursor;
    nb[n] = nbytes;
    nr[n] = nrefs;
    tot[n] = total;
    b->index[granule] = (int32_t)n;
    rows[0] = n + 1;
    place[0] = cursor + total;
    return cursor;
}

/* Under the heap lock: the row of the object starting at `addr` (the address
   index, checked against the start column), its shape cached for handle `h`
   (whose Ref does not exist yet); -1 when no object starts there. */
int64_t rgc_issue_shape(struct rgc_gate *g, struct rgc_bump *b, int64_t addr, int64_t h)
{
    int64_t granule = (addr - b->index_base) >> b->index_shift;
    if (granule < 0 || granule >= b->index_len) return -1;
    int64_t row = b->index[granule], *rows = b->rows;
    if (row < 0 || row >= rows[0] || ((int64_t *)rows[2])[row] != addr) return -1;
    g->nrefs[h] = ((int64_t *)rows[4])[row];
    __atomic_store_n(&g->nbytes[h], ((int64_t *)rows[3])[row], __ATOMIC_RELEASE);
    return row;
}
