/* Serving one faulting page: the one piece both the fault server's thread
   (fault_server.c, a uffd message) and a self-served fault (sigbus.c, the
   faulting thread's own SIGBUS) use. Async-signal-safe: no allocation, no
   lock, only ioctls, madvise, mincore and plain memory (the build runs
   under the access guard).

   For arena page p of the cycle's program:
   - past the program (a fresh allocation), or installed as a hole:
     ZEROPAGE, or WAKE if someone filled it meanwhile;
   - unprocessed: claimed by compare-and-swap (the heap's claim), built and
     installed: a page that moves whole by MOVE, a rebuilt page assembled in
     the caller's scratch page and COPYed;
   - held by another installer: not ours (the caller waits, or forwards). */
#include "accelerator.h"

static int32_t rgc_settle_seq, rgc_settle_waiters;

void rgc_settled_wake(void)
{
    __atomic_add_fetch(&rgc_settle_seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&rgc_settle_waiters, __ATOMIC_SEQ_CST) > 0)
        syscall(SYS_futex, &rgc_settle_seq, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

void rgc_settled_wait(const int8_t *state, int64_t page)
{
    /* waiters first, then the sequence, then the state: a settle after our look
       either changed the sequence (the futex returns at once) or sees us waiting */
    __atomic_add_fetch(&rgc_settle_waiters, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        int32_t seen = __atomic_load_n(&rgc_settle_seq, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&state[page], __ATOMIC_ACQUIRE) != RGC_PAGE_PROCESSING) break;
        struct timespec slice = { 0, 1000000 };  /* a Python installer's settle wakes nobody */
        syscall(SYS_futex, &rgc_settle_seq, FUTEX_WAIT_PRIVATE, seen, &slice, NULL, 0);
    }
    __atomic_sub_fetch(&rgc_settle_waiters, 1, __ATOMIC_SEQ_CST);
}

void rgc_page_installed(int8_t *state, int64_t *installed, int64_t page)
{
    __atomic_store_n(&state[page], RGC_PAGE_INSTALLED, __ATOMIC_RELEASE);
    __atomic_add_fetch(installed, 1, __ATOMIC_ACQ_REL);
    rgc_settled_wake();
}

static void rgc_give_back(int8_t *state, int64_t page)
{
    __atomic_store_n(&state[page], RGC_PAGE_UNPROCESSED, __ATOMIC_RELEASE);
    rgc_settled_wake();
}

int rgc_serve_page(const struct rgc_program *g, int uffd, int8_t *state, int64_t *installed, int64_t *counters,
                   uint64_t scratch, uint64_t addr, struct rgc_refusal *refused)
{
    if (addr < g->arena) return RGC_SERVE_NOT_MINE;
    int64_t page = (int64_t)((addr - g->arena) / g->page_size);
    int8_t expected = RGC_PAGE_UNPROCESSED;
    if (page >= g->npages
        || (!__atomic_compare_exchange_n(&state[page], &expected, RGC_PAGE_PROCESSING, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)
            && expected == RGC_PAGE_INSTALLED)) {
        /* past the plan (a fresh allocation), or installed as a hole: a zero page */
        struct rgc_uffdio_zeropage zp = { { addr, g->page_size }, 0, 0 };
        if (ioctl(uffd, RGC_UFFDIO_ZEROPAGE, &zp) == 0) {
            if (page >= g->npages) RGC_COUNT(counters, RGC_SRV_FRESH, 1);
        } else {
            struct rgc_uffdio_range range = { addr, g->page_size };
            if (errno != EEXIST || ioctl(uffd, RGC_UFFDIO_WAKE, &range) < 0) return RGC_SERVE_NOT_MINE;
        }
        RGC_COUNT(counters, RGC_SRV_RESOLVED, 1);
        return RGC_SERVE_DONE;
    }
    if (expected != RGC_PAGE_UNPROCESSED) return RGC_SERVE_NOT_MINE;  /* someone holds it */
    uint64_t src;
    int64_t copied = 0;
    int rebuilt = rgc_sources(g, page, page + 1, scratch, &src);
    if (rgc_build_chunk(g, page, page + 1, scratch, &src, rebuilt, NULL, &copied) < 0) {
        rgc_give_back(state, page);
        return RGC_SERVE_NOT_MINE;
    }
    if (rebuilt) {
        struct rgc_uffdio_copy cp = { addr, scratch, g->page_size, 0, 0 };
        if (ioctl(uffd, RGC_UFFDIO_COPY, &cp) < 0) {  /* a one-page COPY that fails copied nothing */
            rgc_give_back(state, page);
            return RGC_SERVE_NOT_MINE;
        }
        rgc_page_installed(state, installed, page);
        RGC_COUNT(counters, RGC_SRV_COPIED, 1);
        RGC_COUNT(counters, RGC_SRV_BYTES_COPIED, copied + (int64_t)g->page_size);
        return RGC_SERVE_DONE;
    }
    struct rgc_uffdio_move mv = { addr, src, g->page_size, 0, 0 };
    if (ioctl(uffd, RGC_UFFDIO_MOVE, &mv) < 0) {
        /* it may have moved and been reported as EINTR: the caller settles it, still claimed */
        refused->dst = addr;
        refused->src = src;
        refused->err = errno;
        refused->moved = mv.move;
        return RGC_SERVE_REFUSED;
    }
    rgc_page_installed(state, installed, page);
    RGC_COUNT(counters, RGC_SRV_MOVED, 1);
    return RGC_SERVE_DONE;
}

/* Is this one page resident (mapped to a frame, or the zero page)? -1: mincore failed. */
static int rgc_resident(uint64_t addr, uint64_t ps)
{
    unsigned char vec = 0;
    if (mincore((void *)addr, ps, &vec) < 0) return -1;
    return vec & 1;
}

static void rgc_pause_briefly(long ns)
{
    struct timespec ts = { 0, ns };
    nanosleep(&ts, NULL);  /* async-signal-safe */
}

#define RGC_EAGAIN_TRIES 64

int rgc_settle_refused(const struct rgc_program *g, int uffd, int8_t *state, int64_t *installed, int64_t *counters,
                       const struct rgc_refusal *refused)
{
    uint64_t dst = refused->dst, src = refused->src, ps = g->page_size;
    int64_t page = (int64_t)((dst - g->arena) / ps);
    int err = refused->err;
    for (int tries = 0; err == EAGAIN && refused->moved <= 0 && tries < RGC_EAGAIN_TRIES; tries++) {
        /* an event pending, or contention: the kernel asks us to come back */
        RGC_COUNT(counters, RGC_SRV_EAGAIN, 1);
        rgc_pause_briefly(tries < 8 ? 0 : 20000);
        struct rgc_uffdio_move mv = { dst, src, ps, 0, 0 };
        if (ioctl(uffd, RGC_UFFDIO_MOVE, &mv) == 0) {
            rgc_page_installed(state, installed, page);
            RGC_COUNT(counters, RGC_SRV_MOVED, 1);
            return 1;
        }
        err = errno;
    }
    if (err == EBUSY || err == EAGAIN) {
        /* shared with a forked child (or pinned), or EAGAIN that persisted: copy it, the source stays */
        struct rgc_uffdio_copy cp = { dst, src, ps, 0, 0 };
        if (ioctl(uffd, RGC_UFFDIO_COPY, &cp) == 0) {
            rgc_page_installed(state, installed, page);
            RGC_COUNT(counters, RGC_SRV_EBUSY_COPIES, 1);
            RGC_COUNT(counters, RGC_SRV_BYTES_COPIED, (int64_t)ps);
            return 1;
        }
        err = errno;
    } else if (err == ENOENT) {
        /* a source hole (a page never touched): the page is a zero page */
        struct rgc_uffdio_zeropage zp = { { dst, ps }, 0, 0 };
        if (ioctl(uffd, RGC_UFFDIO_ZEROPAGE, &zp) == 0) {
            rgc_page_installed(state, installed, page);
            RGC_COUNT(counters, RGC_SRV_HOLES, 1);
            return 1;
        }
        err = errno;
    }
    /* EEXIST, or a MOVE that went in and was reported otherwise (EINTR after its step) */
    int dst_in = rgc_resident(dst, ps), src_in = rgc_resident(src, ps);
    if (dst_in == 1) {
        rgc_page_installed(state, installed, page);
        if (src_in == 1 && err == EEXIST)
            RGC_COUNT(counters, RGC_SRV_CORRUPT, 1);  /* filled from outside the heap: Python says HeapCorrupted */
        else
            RGC_COUNT(counters, RGC_SRV_EEXIST, 1);
        return 1;
    }
    /* refused (ENOMEM, EINTR...): given back; the access faults again and retries */
    RGC_COUNT(counters, RGC_SRV_RETRIES, 1);
    rgc_give_back(state, page);
    rgc_pause_briefly(100000);
    return 0;
}
