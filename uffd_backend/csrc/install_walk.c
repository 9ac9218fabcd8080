/* The concurrent compactor's walk over chunks nobody touched (the
   accelerator's chunk_walker, heap.kernel.Accelerator).

   Straight from the install program (struct rgc_program, declared in
   heap/csrc/remapgc_program.h): for chunk c, each page's source (its piece:
   the from-space, or for a rebuilt page the scratch slot scratch + (page -
   lo) * page size), the evacuation copies into the scratch, the slot stores
   into the sources, then one MOVE per run of pages contiguous at their
   sources. Page states are claimed and settled with the compare-and-swap the
   heap's installers use, so this runs without the GIL while the fault
   handlers claim pages for waiting mutators: a page someone else holds is
   theirs to install, and the walk goes around it (mine[] marks the pages of
   the current chunk it claimed). It returns to Python at a MOVE the kernel
   refused (REFUSED: the pages it claimed before that run are in, the rest
   of mine[] is built and still claimed), a build that faulted (FAULTED:
   given back), or the stop flag. out: status, chunk, the refused run's
   first page, errno, the refused MOVE's output field, bytes copied, pages
   installed, MOVE ioctls. */
#include "accelerator.h"

/* How a walk ends: out[0]. heap.kernel.CHUNK_WALK_STATUS names them in this
   order, and accelerator.py checks it at import (rgc_chunk_walk_statuses). */
#define RGC_WALK_STATUSES(X) X(DONE, done) X(STOPPED, stopped) X(REFUSED, refused) X(FAULTED, faulted)
#define RGC_WALK_ENUM(name, text) RGC_WALK_##name,
enum rgc_walk_status { RGC_WALK_STATUSES(RGC_WALK_ENUM) };
#undef RGC_WALK_ENUM

const char *rgc_chunk_walk_statuses(void)
{
#define RGC_WALK_TEXT(name, text) #text " "
    return RGC_WALK_STATUSES(RGC_WALK_TEXT);
#undef RGC_WALK_TEXT
}

static int64_t rgc_upper_bound(const int64_t *a, int64_t n, int64_t key)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) { int64_t mid = lo + (hi - lo) / 2; if (a[mid] <= key) lo = mid + 1; else hi = mid; }
    return lo;
}

/* Sources of pages [lo, hi) into src[]; returns whether any is rebuilt. */
int rgc_sources(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch, uint64_t *src)
{
    int any = 0;
    int64_t piece = rgc_upper_bound(g->piece_dst, g->npieces, lo) - 1;
    for (int64_t p = lo; p < hi; p++) {
        while (piece + 1 < g->npieces && g->piece_dst[piece + 1] <= p) piece++;
        if (piece < 0 || g->piece_rebuilt[piece]) {
            src[p - lo] = scratch + (uint64_t)(p - lo) * g->page_size;
            any = 1;
        } else {
            src[p - lo] = g->from_space + (uint64_t)(g->piece_src[piece] + p - g->piece_dst[piece]) * g->page_size;
        }
    }
    return any;
}

/* Build the pages of [lo, hi) marked in mine[] (NULL: all): evacuees copied
   into their rebuilt pages in the scratch (the gaps read zero), slot fix-ups
   stored at each page's source. */
int64_t rgc_build_chunk(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch,
                               const uint64_t *src, int any_rebuilt, const uint8_t *mine, int64_t *copied)
{
    int64_t s0 = 0, s1 = 0;
    if (any_rebuilt) {
        if (madvise((void *)scratch, (uint64_t)(hi - lo) * g->page_size, MADV_DONTNEED) < 0) return -errno;
        s0 = rgc_upper_bound(g->seg_page, g->nsegs, lo - 1);
        s1 = rgc_upper_bound(g->seg_page, g->nsegs, hi - 1);
    }
    int64_t t0 = rgc_upper_bound(g->slot_page, g->nslots, lo - 1), t1 = rgc_upper_bound(g->slot_page, g->nslots, hi - 1);
    GUARDED_BEGIN
    for (int64_t i = s0; i < s1; i++) {
        if (mine && !mine[g->seg_page[i] - lo]) continue;
        memmove((void *)(scratch + (uint64_t)(g->seg_page[i] - lo) * g->page_size + (uint64_t)g->seg_off[i]),
                (const void *)g->seg_src[i], (size_t)g->seg_len[i]);
        *(volatile int64_t *)copied += g->seg_len[i];
    }
    for (int64_t t = t0; t < t1; t++) {
        if (mine && !mine[g->slot_page[t] - lo]) continue;
        uint64_t w = g->slot_val[t];
        memcpy((void *)(src[g->slot_page[t] - lo] + (uint64_t)g->slot_off[t]), &w, sizeof w);
    }
    GUARDED_END
    return 0;
}

/* Give back, or mark installed, the pages of [from, to) marked in mine[]. */
static int64_t rgc_settle_mine(int8_t *state, int64_t lo, int64_t from, int64_t to, const uint8_t *mine, int8_t value)
{
    int64_t n = 0;
    for (int64_t p = from; p < to; p++)
        if (mine[p - lo]) { __atomic_store_n(&state[p], value, __ATOMIC_RELEASE); n++; }
    if (n) rgc_settled_wake();  /* self-served faults waiting for these pages */
    return n;
}

static int64_t rgc_walk(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk, int64_t first_chunk,
                        uint64_t scratch, const int32_t *stop, int64_t *installed, uint8_t *mine, int64_t *out,
                        int64_t *settle);

int64_t rgc_install_chunks(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk, int64_t first_chunk,
                           uint64_t scratch, const int32_t *stop, int64_t *installed, uint8_t *mine, int64_t *out)
{
    return rgc_walk(fd, g, state, chunk, first_chunk, scratch, stop, installed, mine, out, NULL);
}

/* The same walk for a self-serving heap: a refused MOVE is settled here, page
   by page, as a self-served fault settles it (serve_page.c's
   rgc_settle_refused: EBUSY -> COPY, EAGAIN retried, ENOENT -> ZEROPAGE,
   EEXIST checked, anything else given back), counted in settle[] (enum
   rgc_server_counter). The walk never returns REFUSED: no page is left held
   for Python, whose installer would need the GIL a faulting thread may hold
   while it waits for that page. */
int64_t rgc_install_chunks_settling(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk,
                                    int64_t first_chunk, uint64_t scratch, const int32_t *stop, int64_t *installed,
                                    uint8_t *mine, int64_t *out, int64_t *settle)
{
    return rgc_walk(fd, g, state, chunk, first_chunk, scratch, stop, installed, mine, out, settle);
}

static int64_t rgc_walk(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk, int64_t first_chunk,
                        uint64_t scratch, const int32_t *stop, int64_t *installed, uint8_t *mine, int64_t *out,
                        int64_t *settle)
{
    int64_t nchunks = (g->npages + chunk - 1) / chunk;
    uint64_t *src = malloc((size_t)chunk * sizeof *src);
    if (!src) return -ENOMEM;
    for (int i = 0; i < 8; i++) out[i] = 0;
    out[0] = RGC_WALK_DONE;
    for (int64_t c = first_chunk; c < nchunks; c++) {
        int64_t lo = c * chunk, hi = lo + chunk < g->npages ? lo + chunk : g->npages, held = 0;
        out[1] = c;
        if (__atomic_load_n(stop, __ATOMIC_ACQUIRE)) { out[0] = RGC_WALK_STOPPED; break; }
        for (int64_t p = lo; p < hi; p++) {  /* claim what nobody holds; a held page is its claimer's */
            int8_t expected = RGC_PAGE_UNPROCESSED;
            mine[p - lo] = __atomic_compare_exchange_n(&state[p], &expected, RGC_PAGE_PROCESSING, 0, __ATOMIC_ACQ_REL,
                                                       __ATOMIC_ACQUIRE);
            held += mine[p - lo];
        }
        if (!held) continue;
        int any_rebuilt = rgc_sources(g, lo, hi, scratch, src);
        int64_t err = rgc_build_chunk(g, lo, hi, scratch, src, any_rebuilt, mine, &out[5]);
        if (err < 0) {
            rgc_settle_mine(state, lo, lo, hi, mine, RGC_PAGE_UNPROCESSED);
            out[0] = RGC_WALK_FAULTED;
            out[3] = -err;
            break;
        }
        int64_t first = -1, p;  /* runs: held pages contiguous at dst and at their sources */
        for (p = lo; p <= hi; p++) {
            int extends = p < hi && mine[p - lo] && first >= 0 && src[p - lo] == src[p - 1 - lo] + g->page_size;
            if (extends) continue;
            if (first >= 0) {
                struct rgc_uffdio_move mv = { g->arena + (uint64_t)first * g->page_size, src[first - lo],
                                              (uint64_t)(p - first) * g->page_size,
                                              RGC_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, 0 };
                out[7] += 1;
                int refused = ioctl(fd, RGC_UFFDIO_MOVE, &mv) < 0;
                int err = errno;
                if (refused && settle) {
                    /* the run's pages from the first not moved: one MOVE each, a refusal settled here */
                    int64_t moved = mv.move > 0 ? mv.move / (int64_t)g->page_size : 0;
                    for (int64_t q = first + moved; q < p; q++) {
                        struct rgc_uffdio_move one = { g->arena + (uint64_t)q * g->page_size, src[q - lo],
                                                       g->page_size, 0, 0 };
                        out[7] += 1;
                        if (ioctl(fd, RGC_UFFDIO_MOVE, &one) == 0) continue;  /* in: settled with the chunk */
                        struct rgc_refusal r = { one.dst, one.src, errno, one.move };
                        mine[q - lo] = 0;  /* settled (installed or given back) on its own */
                        held--;
                        rgc_settle_refused(g, fd, state, installed, settle, &r);
                    }
                } else if (refused) {
                    out[0] = RGC_WALK_REFUSED;
                    out[2] = first;
                    out[3] = err;
                    out[4] = mv.move;
                    int64_t done = rgc_settle_mine(state, lo, lo, first, mine, RGC_PAGE_INSTALLED);
                    __atomic_add_fetch(installed, done, __ATOMIC_ACQ_REL);
                    out[6] += done;
                    break;
                }
            }
            first = p < hi && mine[p - lo] ? p : -1;
        }
        if (out[0] == RGC_WALK_REFUSED) break;
        rgc_settle_mine(state, lo, lo, hi, mine, RGC_PAGE_INSTALLED);
        __atomic_add_fetch(installed, held, __ATOMIC_ACQ_REL);
        out[6] += held;
    }
    free(src);
    return 0;
}
