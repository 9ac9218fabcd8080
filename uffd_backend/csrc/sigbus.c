/* Self-served faults: with UFFD_FEATURE_SIGBUS a missing-page fault in a
   registered range is never queued; the faulting thread gets SIGBUS
   (BUS_ADRERR at the address). This handler installs that page itself --
   the same claim and the same install as the fault server (serve_page.c) --
   and returns, so the access runs again and finds the page. No thread round
   trip and no GIL: whatever the faulting thread holds (the GIL, a C
   extension's lock), nothing it waits for needs it.

   Async-signal-safe throughout: no allocation, no lock, no Python. Heaps in
   a concurrent cycle are entries of a fixed table (rgc_selfserve_add/remove,
   called from Python); a handler announces itself in rgc_ss_inflight before
   it reads the table, and remove waits for it to drop to zero before the
   entry's memory may go. Rebuilt pages are assembled in a pool of scratch
   pages the entry owns, taken by compare-and-swap.

   A SIGBUS that is not for a heap page goes to the handler installed before
   ours (Python's faulthandler, the access guard of guard.c, ...): called as
   it asked (SA_SIGINFO or not); SIG_DFL/SIG_IGN -> the default action
   (reset, and re-raised if it was sent rather than caused by the access).
   The handler goes in with the first self-serving userfaultfd
   (rgc_selfserve_acquire) and the previous one comes back with the last
   (rgc_selfserve_release), unless something was installed over ours
   meanwhile (it may chain to us: we stay, passing everything on). */
#include "accelerator.h"

#define RGC_SS_MAX 64


static struct rgc_selfserve *rgc_ss_table[RGC_SS_MAX];
static int64_t rgc_ss_inflight;
static struct sigaction rgc_ss_prev;
static int rgc_ss_users;  /* self-serving uffds open (Python serialises acquire/release) */
static int64_t rgc_ss_misses, rgc_ss_last_miss;  /* SIGBUS (BUS_ADRERR) at no heap's address, passed on */

/* Ranges whose cycle ended lately. A fault taken just before a cycle's end
   (its arena still registered) can reach the handler after the entry left
   the table: the access must run again (the page is in, or the arena
   unregistered), not fail. Bounded per thread, so that a real bus error
   at such an address (the arena since unmapped and reused) still goes on
   to the previous handler. */
#define RGC_SS_RETIRED 64
#define RGC_SS_RETIRED_RETRIES 64
static uint64_t rgc_ss_retired[RGC_SS_RETIRED][2];
static int64_t rgc_ss_retired_next;
static __thread uint64_t rgc_ss_retry_addr __attribute__((tls_model("initial-exec")));
static __thread int rgc_ss_retry_count __attribute__((tls_model("initial-exec")));
static int64_t rgc_ss_late;  /* SIGBUS of a cycle that had just ended: the access ran again */

static int rgc_ss_lately_served(uint64_t addr)
{
    for (int i = 0; i < RGC_SS_RETIRED; i++) {
        uint64_t lo = __atomic_load_n(&rgc_ss_retired[i][0], __ATOMIC_ACQUIRE);
        uint64_t hi = __atomic_load_n(&rgc_ss_retired[i][1], __ATOMIC_ACQUIRE);
        if (lo <= addr && addr < hi) {
            uint64_t page = addr & ~(uint64_t)4095;
            if (rgc_ss_retry_addr != page) { rgc_ss_retry_addr = page; rgc_ss_retry_count = 0; }
            if (++rgc_ss_retry_count > RGC_SS_RETIRED_RETRIES) return 0;
            __atomic_add_fetch(&rgc_ss_late, 1, __ATOMIC_RELAXED);
            sched_yield();  /* the cycle's end (unregister) is under way in another thread */
            return 1;
        }
    }
    return 0;
}

static int64_t rgc_ss_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void rgc_ss_nap(long ns)
{
    struct timespec ts = { 0, ns };
    nanosleep(&ts, NULL);
}

static uint64_t rgc_ss_take_scratch(struct rgc_selfserve *s)
{
    for (int64_t round = 0;; round++) {
        for (int64_t i = 0; i < s->nscratch; i++) {
            int32_t free_ = 0;
            if (__atomic_compare_exchange_n(&s->scratch_busy[i], &free_, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return s->scratch + (uint64_t)i * s->g->page_size;
        }
        if (round > 64) rgc_ss_nap(10000); else sched_yield();
    }
}

static void rgc_ss_give_scratch(struct rgc_selfserve *s, uint64_t scratch)
{
    __atomic_store_n(&s->scratch_busy[(scratch - s->scratch) / s->g->page_size], 0, __ATOMIC_RELEASE);
}

/* Another installer holds the page: wait until it settles it (the access then
   finds it, or claims it), asleep on the settle futex: the holder may need this core. */
static void rgc_ss_wait_settled(struct rgc_selfserve *s, int64_t page)
{
    RGC_COUNT(s->counters, RGC_SRV_WAITS, 1);
    rgc_settled_wait(s->state, page);
}

static void rgc_ss_serve(struct rgc_selfserve *s, uint64_t addr, int64_t t0)
{
    const struct rgc_program *g = s->g;
    uint64_t scratch = rgc_ss_take_scratch(s);
    struct rgc_refusal refused;
    int how = rgc_serve_page(g, s->uffd, s->state, s->installed, s->counters, scratch, addr, &refused);
    rgc_ss_give_scratch(s, scratch);
    if (how == RGC_SERVE_REFUSED && !rgc_settle_refused(g, s->uffd, s->state, s->installed, s->counters, &refused))
        return;  /* given back after a refusal: the access faults again and retries */
    if (how == RGC_SERVE_NOT_MINE) {
        int64_t page = (int64_t)((addr - g->arena) / g->page_size);
        if (page < g->npages) rgc_ss_wait_settled(s, page);
        else rgc_ss_nap(50000);  /* a fresh page whose ZEROPAGE failed: try again soon */
        return;
    }
    int64_t n = __atomic_fetch_add(&s->counters[RGC_SRV_LATENCIES], 1, __ATOMIC_RELAXED);
    if (n < s->max_latencies) s->latencies[n] = rgc_ss_now_ns() - t0;
    else __atomic_fetch_sub(&s->counters[RGC_SRV_LATENCIES], 1, __ATOMIC_RELAXED);
}

/* 1 if this SIGBUS was a self-served userfault (the access may run again), 0 if not ours. */
int rgc_selfserve_fault(int sig, siginfo_t *info)
{
    if (sig != SIGBUS || info == NULL || info->si_code != BUS_ADRERR) return 0;
    if (__atomic_load_n(&rgc_ss_users, __ATOMIC_RELAXED) == 0) return 0;
    int64_t t0 = rgc_ss_now_ns();
    uint64_t addr = (uint64_t)(uintptr_t)info->si_addr;
    __atomic_add_fetch(&rgc_ss_inflight, 1, __ATOMIC_SEQ_CST);
    struct rgc_selfserve *mine = NULL;
    for (int i = 0; i < RGC_SS_MAX && !mine; i++) {
        struct rgc_selfserve *s = __atomic_load_n(&rgc_ss_table[i], __ATOMIC_SEQ_CST);
        if (s && s->lo <= addr && addr < s->hi) mine = s;
    }
    if (mine) {
        int saved_errno = errno;
        sigjmp_buf *saved_jump = rgc_jump;  /* the build runs guarded: the interrupted access may be guarded too */
        RGC_COUNT(mine->counters, RGC_SRV_SIGNALS, 1);
        rgc_ss_serve(mine, addr & ~(mine->g->page_size - 1), t0);
        rgc_jump = saved_jump;
        errno = saved_errno;
    }
    __atomic_sub_fetch(&rgc_ss_inflight, 1, __ATOMIC_SEQ_CST);
    if (mine) {
        rgc_ss_retry_addr = 0;
        return 1;
    }
    if (rgc_ss_lately_served(addr)) return 1;
    __atomic_add_fetch(&rgc_ss_misses, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&rgc_ss_last_miss, (int64_t)addr, __ATOMIC_RELAXED);
    return 0;
}

static void rgc_ss_sigbus(int sig, siginfo_t *info, void *uctx)
{
    if (rgc_selfserve_fault(sig, info)) return;
    struct sigaction prev = rgc_ss_prev;
    if (prev.sa_flags & SA_SIGINFO) {
        if (prev.sa_sigaction) { prev.sa_sigaction(sig, info, uctx); return; }
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
        return;
    }
    /* the default action: returning runs the access again, which now kills us as it would have */
    signal(sig, SIG_DFL);
    if (info == NULL || info->si_code <= 0) raise(sig);
}

static int rgc_ss_is_ours(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == rgc_ss_sigbus;
}

/* Whether SIGBUS is ours and passes on to fn (guard.c: then it need not go in front of us). */
int rgc_selfserve_chains_to(void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) < 0) return 0;
    return rgc_ss_is_ours(&cur) && (rgc_ss_prev.sa_flags & SA_SIGINFO) && rgc_ss_prev.sa_sigaction == fn;
}

/* A self-serving userfaultfd opens: our SIGBUS handler goes in (if it is not in). */
int64_t rgc_selfserve_acquire(void)
{
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) < 0) return -errno;
    if (!rgc_ss_is_ours(&cur)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = rgc_ss_sigbus;
        /* NODEFER: a handler we chain to may leave by longjmp (guard.c) with no mask to restore */
        sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        rgc_ss_prev = cur;  /* saved before ours goes in: a SIGBUS in between finds it */
        if (sigaction(SIGBUS, &sa, NULL) < 0) return -errno;
    }
    __atomic_add_fetch(&rgc_ss_users, 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* The last self-serving userfaultfd closed: the previous handler comes back
   (if ours is still the one installed). 1 if it was put back. */
int64_t rgc_selfserve_release(void)
{
    if (rgc_ss_users <= 0) return -EINVAL;
    if (__atomic_sub_fetch(&rgc_ss_users, 1, __ATOMIC_SEQ_CST) > 0) return 0;
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) < 0) return -errno;
    if (!rgc_ss_is_ours(&cur)) return 0;
    if (sigaction(SIGBUS, &rgc_ss_prev, NULL) < 0) return -errno;
    return 1;
}

/* 1 if SIGBUS is handled by ours now. */
int64_t rgc_selfserve_installed(void)
{
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) < 0) return -errno;
    return rgc_ss_is_ours(&cur);
}

static void rgc_ss_retire(uint64_t lo, uint64_t hi)
{
    int64_t slot = __atomic_fetch_add(&rgc_ss_retired_next, 1, __ATOMIC_RELAXED) % RGC_SS_RETIRED;
    __atomic_store_n(&rgc_ss_retired[slot][0], lo, __ATOMIC_RELEASE);
    __atomic_store_n(&rgc_ss_retired[slot][1], hi, __ATOMIC_RELEASE);
}

/* A heap's cycle: SIGBUS in [s->lo, s->hi) is served from now on. An entry
   still there for an overlapping range is a cycle that was never stopped (its
   heap's arena was unmapped and the range reused): it goes, or it would serve
   this heap's faults from its own program. Entries stay readable until their
   owner removes them (Python's finalizer does, at the latest). */
int64_t rgc_selfserve_add(struct rgc_selfserve *s)
{
    for (int i = 0; i < RGC_SS_MAX; i++) {
        struct rgc_selfserve *old = __atomic_load_n(&rgc_ss_table[i], __ATOMIC_SEQ_CST);
        if (old && old != s && old->lo < s->hi && s->lo < old->hi
            && __atomic_compare_exchange_n(&rgc_ss_table[i], &old, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            rgc_ss_retire(old->lo, old->hi);
    }
    for (int i = 0; i < RGC_SS_MAX; i++) {
        struct rgc_selfserve *empty = NULL;
        if (__atomic_compare_exchange_n(&rgc_ss_table[i], &empty, s, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return i;
    }
    return -ENOSPC;
}

/* No longer served; waits (up to timeout_ms) until no handler may still be
   reading s. -ETIMEDOUT: one still may (the caller must keep s alive). */
int64_t rgc_selfserve_remove(struct rgc_selfserve *s, int64_t timeout_ms)
{
    int found = 0;
    for (int i = 0; i < RGC_SS_MAX; i++) {
        struct rgc_selfserve *was = s;
        if (__atomic_compare_exchange_n(&rgc_ss_table[i], &was, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            found = 1;
    }
    if (found) rgc_ss_retire(s->lo, s->hi);
    /* not found: evicted by a newer entry; a handler may still be reading it all the same */
    int64_t deadline = rgc_ss_now_ns() + timeout_ms * 1000000;
    while (__atomic_load_n(&rgc_ss_inflight, __ATOMIC_SEQ_CST)) {
        if (rgc_ss_now_ns() > deadline) return -ETIMEDOUT;
        rgc_ss_nap(50000);
    }
    return found ? 0 : -ENOENT;
}

/* For diagnostics: [entries in the table, SIGBUS passed on while a self-serving uffd was open,
   the last such address, SIGBUS of a cycle that had just ended (the access ran again)]. */
int64_t rgc_selfserve_stats(int64_t *out)
{
    out[3] = __atomic_load_n(&rgc_ss_late, __ATOMIC_RELAXED);
    int64_t n = 0;
    for (int i = 0; i < RGC_SS_MAX; i++) n += __atomic_load_n(&rgc_ss_table[i], __ATOMIC_SEQ_CST) != NULL;
    out[0] = n;
    out[1] = __atomic_load_n(&rgc_ss_misses, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&rgc_ss_last_miss, __ATOMIC_RELAXED);
    return 0;
}
