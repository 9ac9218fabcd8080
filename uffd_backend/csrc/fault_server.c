/* The accelerator's fault server (heap.kernel.FaultServer): a C thread that
   reads a concurrent cycle's userfaults and serves the common ones without
   the GIL -- a page that moves whole (MOVE), a rebuilt page (assembled in
   its scratch page, COPY), a page past the program or installed as a hole
   (ZEROPAGE, or WAKE if someone else filled it). Pages are claimed with the
   heap's compare-and-swap; what it cannot serve (a page someone else holds,
   a refused MOVE) it forwards through a pipe as (address, flags, moved).
   Serving a page is serve_page.c, shared with the self-served SIGBUS. */
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
            struct rgc_refusal refused;
            int served = rgc_serve_page(s->g, s->uffd, s->state, s->installed, s->counters, s->scratch, addr,
                                        &refused);
            if (served == RGC_SERVE_NOT_MINE)
                rgc_forward(s, addr, 0, 0);  /* someone holds it: Python waits for them */
            else if (served == RGC_SERVE_REFUSED)  /* Python finishes it, still claimed */
                rgc_forward(s, addr, 1 | ((uint64_t)refused.err << 8), refused.moved);
            else if (s->counters[RGC_SRV_LATENCIES] < s->max_latencies)
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
