/* The accelerator's fault server (heap.kernel.FaultServer): a C thread that
   reads a concurrent cycle's userfaults and serves the common ones without
   the GIL -- a page that moves whole (MOVE), a rebuilt page (assembled in
   its scratch page, COPY), a page past the program or installed as a hole
   (ZEROPAGE, or WAKE if someone else filled it). Pages are claimed with the
   heap's compare-and-swap; what it cannot serve (a page someone else holds,
   a refused MOVE) it forwards through a pipe as (address, flags, moved). */
#include "accelerator.h"

static int64_t rgc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void rgc_forward(struct rgc_fault_server *s, uint64_t addr, uint64_t flags, int64_t moved)
{
    uint64_t msg[3] = { addr, flags, (uint64_t)moved };
    const char *p = (const char *)msg;
    size_t left = sizeof msg;
    while (left) {  /* 24 bytes < PIPE_BUF: one write, unless interrupted */
        ssize_t w = write(s->forward_fd, p, left);
        if (w < 0) { if (errno == EINTR) continue; return; }
        p += w; left -= (size_t)w;
    }
    s->counters[RGC_SRV_FORWARDED]++;
}

static void rgc_installed(struct rgc_fault_server *s, int64_t page)
{
    __atomic_store_n(&s->state[page], RGC_PAGE_INSTALLED, __ATOMIC_RELEASE);
    __atomic_add_fetch(s->installed, 1, __ATOMIC_ACQ_REL);
}

/* 1: resolved here (the ioctl woke the faulter), 0: forward it unclaimed, 2: forwarded claimed */
static int rgc_serve_fault(struct rgc_fault_server *s, uint64_t addr)
{
    const struct rgc_program *g = s->g;
    int64_t page = (int64_t)((addr - g->arena) / g->page_size);
    if (addr < g->arena) return 0;
    int8_t expected = RGC_PAGE_UNPROCESSED;
    if (page >= g->npages
        || (!__atomic_compare_exchange_n(&s->state[page], &expected, RGC_PAGE_PROCESSING, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)
            && expected == RGC_PAGE_INSTALLED)) {
        /* past the plan (a fresh allocation), or installed as a hole: a zero page */
        struct rgc_uffdio_zeropage zp = { { addr, g->page_size }, 0, 0 };
        if (ioctl(s->uffd, RGC_UFFDIO_ZEROPAGE, &zp) == 0) {
            if (page >= g->npages) s->counters[RGC_SRV_FRESH]++;
        } else {
            struct rgc_uffdio_range range = { addr, g->page_size };
            if (errno != EEXIST || ioctl(s->uffd, RGC_UFFDIO_WAKE, &range) < 0) return 0;
        }
        s->counters[RGC_SRV_RESOLVED]++;
        return 1;
    }
    if (expected != RGC_PAGE_UNPROCESSED) return 0;  /* someone holds it: Python waits for them */
    uint64_t src;
    int64_t copied = 0;
    int rebuilt = rgc_sources(g, page, page + 1, s->scratch, &src);
    if (rgc_build_chunk(g, page, page + 1, s->scratch, &src, rebuilt, NULL, &copied) < 0) {
        __atomic_store_n(&s->state[page], RGC_PAGE_UNPROCESSED, __ATOMIC_RELEASE);
        return 0;
    }
    if (rebuilt) {
        struct rgc_uffdio_copy cp = { addr, s->scratch, g->page_size, 0, 0 };
        if (ioctl(s->uffd, RGC_UFFDIO_COPY, &cp) < 0) {  /* a one-page COPY that fails copied nothing */
            __atomic_store_n(&s->state[page], RGC_PAGE_UNPROCESSED, __ATOMIC_RELEASE);
            return 0;
        }
        rgc_installed(s, page);
        s->counters[RGC_SRV_COPIED]++;
        s->counters[RGC_SRV_BYTES_COPIED] += copied + (int64_t)g->page_size;
        return 1;
    }
    struct rgc_uffdio_move mv = { addr, src, g->page_size, 0, 0 };
    if (ioctl(s->uffd, RGC_UFFDIO_MOVE, &mv) < 0) {
        /* it may have moved and been reported as EINTR: Python finishes it, still claimed */
        rgc_forward(s, addr, 1 | ((uint64_t)errno << 8), mv.move);
        return 2;
    }
    rgc_installed(s, page);
    s->counters[RGC_SRV_MOVED]++;
    return 1;
}

static void *rgc_fault_server_main(void *arg)
{
    struct rgc_fault_server *s = arg;
    struct rgc_uffd_msg msgs[64];
    sigset_t all;  /* process signals go to other threads; faults of our own stores stay synchronous */
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        struct pollfd pfd[2] = { { s->uffd, POLLIN, 0 }, { s->stop_fd, POLLIN, 0 } };
        if (poll(pfd, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (pfd[1].revents) break;
        if (pfd[0].revents & (POLLERR | POLLNVAL | POLLHUP)) break;
        ssize_t got = read(s->uffd, msgs, sizeof msgs);
        if (got <= 0) continue;  /* EAGAIN: someone else read it */
        int64_t t0 = rgc_now_ns();
        for (ssize_t i = 0; i < got / (ssize_t)sizeof msgs[0]; i++) {
            if (msgs[i].event != RGC_UFFD_EVENT_PAGEFAULT) continue;
            uint64_t addr = msgs[i].address & ~(s->g->page_size - 1);
            int served = rgc_serve_fault(s, addr);
            if (served == 0)
                rgc_forward(s, addr, 0, 0);
            else if (served == 1 && s->counters[RGC_SRV_LATENCIES] < s->max_latencies)
                s->latencies[s->counters[RGC_SRV_LATENCIES]++] = rgc_now_ns() - t0;
        }
    }
    return NULL;
}

int64_t rgc_fault_server_start(struct rgc_fault_server *s)
{
    int err = pthread_create(&s->thread, NULL, rgc_fault_server_main, s);
    if (err) return -err;
    s->running = 1;
    return 0;
}

/* The stop pipe must have been written before: joins the thread. */
int64_t rgc_fault_server_join(struct rgc_fault_server *s)
{
    if (!s->running) return 0;
    s->running = 0;
    return -pthread_join(s->thread, NULL);
}
