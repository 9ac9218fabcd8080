/* The user-mode access guard and the accesses it guards.

   User-mode accesses (load/store/memmove and the word loops) run under a
   SIGSEGV/SIGBUS guard: a fault on an unmapped or protected address jumps
   back and the call returns -EFAULT instead of killing the interpreter. The
   guard is one thread-local pointer and a sigsetjmp without a signal-mask
   save, so the fast path stays a plain memcpy; faults outside a guarded call
   are passed to whatever handler was installed before ours. */
#include "linux_abi.h"

__thread sigjmp_buf *volatile rgc_jump __attribute__((tls_model("initial-exec"), visibility("hidden")));
static struct sigaction rgc_prev_segv, rgc_prev_bus;

static int rgc_passed_on;

static void rgc_fault(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    /* a self-served userfault (sigbus.c) first: inside a guarded access it is
       no error, the access runs again once the page is in */
    if (rgc_selfserve_fault(sig, info)) return;
    sigjmp_buf *jump = rgc_jump;
    if (jump) {
        rgc_jump = NULL;
        siglongjmp(*jump, 1);
    }
    /* Not ours. Put the previous disposition back and return: the faulting
       instruction runs again and the previous handler sees it first-hand (a
       kill()ed signal is re-sent). If we are entered a second time (handlers
       that chain back to us), fall to the default action, so that a real
       crash always ends the process instead of looping. */
    struct sigaction *prev = sig == SIGSEGV ? &rgc_prev_segv : &rgc_prev_bus;
    int handled_by_prev = (prev->sa_flags & SA_SIGINFO) ||
                          (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN);
    if (handled_by_prev && !__atomic_exchange_n(&rgc_passed_on, 1, __ATOMIC_SEQ_CST))
        sigaction(sig, prev, NULL);
    else
        signal(sig, SIG_DFL);
    if (info == NULL || info->si_code <= 0)
        raise(sig);
}

/* Installs the guard, or re-installs it if something (faulthandler.enable(),
   another library) replaced it since; never chains to itself. */
int64_t rgc_guard_install(void)
{
    struct sigaction cur_segv, cur_bus;
    if (sigaction(SIGSEGV, NULL, &cur_segv) < 0 || sigaction(SIGBUS, NULL, &cur_bus) < 0) return -errno;
    int segv_ours = (cur_segv.sa_flags & SA_SIGINFO) && cur_segv.sa_sigaction == rgc_fault;
    /* the self-serving SIGBUS handler (sigbus.c) in front of ours passes everything else on to us */
    int bus_ours = ((cur_bus.sa_flags & SA_SIGINFO) && cur_bus.sa_sigaction == rgc_fault)
                   || rgc_selfserve_chains_to(rgc_fault);
    if (segv_ours && bus_ours) return 0;
    __atomic_store_n(&rgc_passed_on, 0, __ATOMIC_SEQ_CST);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = rgc_fault;
    /* NODEFER: the signal stays unblocked, so leaving the handler by longjmp
       needs no signal-mask restore (no syscall on the fast path). */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    /* the previous disposition is saved before ours goes in: a fault in between finds it */
    if (!segv_ours) {
        rgc_prev_segv = cur_segv;
        if (sigaction(SIGSEGV, &sa, NULL) < 0) return -errno;
    }
    if (!bus_ours) {
        rgc_prev_bus = cur_bus;
        if (sigaction(SIGBUS, &sa, NULL) < 0) return -errno;
    }
    return 0;
}

/* ---- user-mode memory access (may fault, may sleep in a userfault) ---- */
int64_t rgc_load(uint64_t addr, char *out, uint64_t length)
{
    GUARDED_BEGIN
    memcpy(out, (const void *)addr, length);
    GUARDED_END
    return 0;
}
int64_t rgc_store(uint64_t addr, const char *data, uint64_t length)
{
    GUARDED_BEGIN
    memcpy((void *)addr, data, length);
    GUARDED_END
    return 0;
}
int64_t rgc_memmove(uint64_t dst, uint64_t src, uint64_t length)
{
    GUARDED_BEGIN
    memmove((void *)dst, (const void *)src, length);
    GUARDED_END
    return 0;
}
int64_t rgc_copy_ranges(const uint64_t *dsts, const uint64_t *srcs, const uint64_t *lengths, uint64_t n, uint64_t *done)
{
    GUARDED_BEGIN
    for (uint64_t i = 0; i < n; i++) {
        memmove((void *)dsts[i], (const void *)srcs[i], lengths[i]);
        *(volatile uint64_t *)done = i + 1;  /* seen after a fault's longjmp */
    }
    GUARDED_END
    return 0;
}
int64_t rgc_load_words(const uint64_t *addrs, uint64_t *out, uint64_t n, uint64_t *done)
{
    GUARDED_BEGIN
    for (uint64_t i = 0; i < n; i++) {
        uint64_t w;
        memcpy(&w, (const void *)addrs[i], sizeof w);
        out[i] = w;
        *(volatile uint64_t *)done = i + 1;  /* seen after a fault's longjmp */
    }
    GUARDED_END
    return 0;
}
int64_t rgc_store_words(const uint64_t *addrs, const uint64_t *values, uint64_t n, uint64_t *done)
{
    GUARDED_BEGIN
    for (uint64_t i = 0; i < n; i++) {
        uint64_t w = values[i];
        memcpy((void *)addrs[i], &w, sizeof w);
        *(volatile uint64_t *)done = i + 1;  /* seen after a fault's longjmp */
    }
    GUARDED_END
    return 0;
}
