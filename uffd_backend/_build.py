"""cffi (API mode) build of ``uffd_backend._native``: thin C over the Linux syscalls.

Every wrapper returns its result (>= 0) or ``-errno``; none touches the Python
C API, so cffi releases the GIL around each call. That matters: a call that
touches a userfaultfd-registered missing page sleeps in the kernel until a
handler resolves the fault, and the handler may be a Python thread.

User-mode accesses (load/store/memmove and the word loops) run under a
SIGSEGV/SIGBUS guard: a fault on an unmapped or protected address jumps back
and the call returns ``-EFAULT`` instead of killing the interpreter. The guard
is one thread-local pointer and a ``sigsetjmp`` without a signal-mask save, so
the fast path stays a plain memcpy; faults outside a guarded call are passed to
whatever handler was installed before ours.

/usr/include/linux/userfaultfd.h on build machines may predate UFFDIO_MOVE and
linux/fs.h may lack PAGEMAP_SCAN, so the ABI pieces used here are spelled out.
"""

from cffi import FFI

# A concurrent cycle's install program as the C side reads it (heap/concurrent.py
# InstallProgram; uffd_backend/linux.py NativeProgram fills it): declared once
# for cffi and the compiler alike.
PROGRAM_STRUCT = """struct rgc_program {
    int64_t npages, npieces, nslots, nsegs;
    uint64_t arena, from_space, page_size;
    const int64_t *piece_dst, *piece_src;
    const uint8_t *piece_rebuilt;
    const int64_t *slot_page, *slot_off;
    const uint64_t *slot_val;
    const int64_t *seg_page, *seg_off, *seg_src, *seg_len;
};"""

CDEF = r"""
int64_t rgc_guard_install(void);

int64_t rgc_mmap(uint64_t addr, uint64_t length, int prot, int flags);
int64_t rgc_munmap(uint64_t addr, uint64_t length);
int64_t rgc_mremap(uint64_t old_addr, uint64_t old_len, uint64_t new_len, int flags, uint64_t new_addr);
int64_t rgc_mprotect(uint64_t addr, uint64_t length, int prot);
int64_t rgc_madvise(uint64_t addr, uint64_t length, int advice);
int64_t rgc_mlock(uint64_t addr, uint64_t length);
int64_t rgc_mlock2(uint64_t addr, uint64_t length, unsigned int flags);
int64_t rgc_munlock(uint64_t addr, uint64_t length);

int64_t rgc_load(uint64_t addr, char *out, uint64_t length);
int64_t rgc_store(uint64_t addr, const char *data, uint64_t length);
int64_t rgc_memmove(uint64_t dst, uint64_t src, uint64_t length);
int64_t rgc_copy_ranges(const uint64_t *dsts, const uint64_t *srcs, const uint64_t *lengths, uint64_t n, uint64_t *done);
int64_t rgc_load_words(const uint64_t *addrs, uint64_t *out, uint64_t n, uint64_t *done);
int64_t rgc_store_words(const uint64_t *addrs, const uint64_t *values, uint64_t n, uint64_t *done);

int64_t rgc_pagemap_scan(int fd, uint64_t start, uint64_t end, uint64_t category_mask,
                         uint64_t return_mask, uint64_t *regions, uint64_t max_regions);

int64_t rgc_fork_sleeper(int *keepalive_fd);
int64_t rgc_kill_reap(int64_t pid);

int64_t rgc_userfaultfd_syscall(int flags);
int64_t rgc_userfaultfd_dev(int flags);
int64_t rgc_uffd_api(int fd, uint64_t features, uint64_t *features_out, uint64_t *ioctls_out);
int64_t rgc_uffd_register(int fd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls_out);
int64_t rgc_uffd_unregister(int fd, uint64_t start, uint64_t length);
int64_t rgc_uffd_wake(int fd, uint64_t start, uint64_t length);
int64_t rgc_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *moved);
int64_t rgc_uffd_move_ranges(int fd, const uint64_t *dsts, const uint64_t *srcs, const uint64_t *lengths,
                             uint64_t n, uint64_t mode, uint64_t *done, int64_t *moved);
@PROGRAM_STRUCT@
int64_t rgc_install_chunks(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk, int64_t first_chunk,
                           uint64_t scratch, const int32_t *stop, int64_t *installed, uint8_t *mine, int64_t *out);
struct rgc_fault_server {
    int uffd, forward_fd, stop_fd;
    int8_t *state;
    const struct rgc_program *g;
    uint64_t scratch;
    int64_t *installed;
    int64_t *counters;
    int64_t *latencies;
    int64_t max_latencies;
    ...;
};
int64_t rgc_fault_server_start(struct rgc_fault_server *s);
int64_t rgc_fault_server_join(struct rgc_fault_server *s);
int64_t rgc_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *copied);
int64_t rgc_uffd_zeropage(int fd, uint64_t dst, uint64_t length, uint64_t mode, int64_t *zeroed);
int64_t rgc_uffd_read_events(int fd, int timeout_ms, uint64_t *events, uint64_t max_events);
int64_t rgc_close(int fd);
"""

C_SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#ifndef __NR_mlock2
#define __NR_mlock2 325
#endif
#ifndef __NR_userfaultfd
#define __NR_userfaultfd 323
#endif

/* ---- userfaultfd ABI (include/uapi/linux/userfaultfd.h, 6.18) ---- */
#define RGC_UFFD_API 0xAAULL
struct rgc_uffdio_api { uint64_t api, features, ioctls; };
struct rgc_uffdio_range { uint64_t start, len; };
struct rgc_uffdio_register { struct rgc_uffdio_range range; uint64_t mode, ioctls; };
struct rgc_uffdio_copy { uint64_t dst, src, len, mode; int64_t copy; };
struct rgc_uffdio_zeropage { struct rgc_uffdio_range range; uint64_t mode; int64_t zeropage; };
struct rgc_uffdio_move { uint64_t dst, src, len, mode; int64_t move; };
struct rgc_uffd_msg {            /* 32 bytes, packed in the kernel header */
    uint8_t event, reserved1; uint16_t reserved2; uint32_t reserved3;
    uint64_t flags, address, ptid_and_pad;
};

#define RGC_IOC(dir, nr, size) (((unsigned long)(dir) << 30) | ((unsigned long)(size) << 16) | (RGC_UFFD_API << 8) | (nr))
#define RGC_UFFDIO_API        RGC_IOC(3, 0x3F, sizeof(struct rgc_uffdio_api))
#define RGC_UFFDIO_REGISTER   RGC_IOC(3, 0x00, sizeof(struct rgc_uffdio_register))
#define RGC_UFFDIO_UNREGISTER RGC_IOC(2, 0x01, sizeof(struct rgc_uffdio_range))
#define RGC_UFFDIO_WAKE       RGC_IOC(2, 0x02, sizeof(struct rgc_uffdio_range))
#define RGC_UFFDIO_COPY       RGC_IOC(3, 0x03, sizeof(struct rgc_uffdio_copy))
#define RGC_UFFDIO_ZEROPAGE   RGC_IOC(3, 0x04, sizeof(struct rgc_uffdio_zeropage))
#define RGC_UFFDIO_MOVE       RGC_IOC(3, 0x05, sizeof(struct rgc_uffdio_move))
#define RGC_USERFAULTFD_IOC_NEW RGC_IOC(0, 0x00, 0)

_Static_assert(sizeof(struct rgc_uffd_msg) == 32, "uffd_msg is 32 bytes");
_Static_assert(RGC_UFFDIO_MOVE == 0xC028AA05UL, "UFFDIO_MOVE value");

/* ---- PAGEMAP_SCAN (include/uapi/linux/fs.h, 6.7+) ---- */
struct rgc_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages,
             category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define RGC_PAGEMAP_SCAN (((3UL) << 30) | ((unsigned long)sizeof(struct rgc_pm_scan_arg) << 16) | ('f' << 8) | 16)

static inline int64_t rgc_result(long r) { return r < 0 ? -(int64_t)errno : (int64_t)r; }

/* ---- the user-mode access guard ---- */
/* volatile + compiler barriers: the compiler knows memcpy cannot read rgc_jump
   and would otherwise drop the store as dead or move the access across it. */
static __thread sigjmp_buf *volatile rgc_jump __attribute__((tls_model("initial-exec")));
#define RGC_BARRIER() __asm__ __volatile__("" ::: "memory")
static struct sigaction rgc_prev_segv, rgc_prev_bus;

static int rgc_passed_on;

static void rgc_fault(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
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
    int bus_ours = (cur_bus.sa_flags & SA_SIGINFO) && cur_bus.sa_sigaction == rgc_fault;
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

#define GUARDED_BEGIN                                   \
    sigjmp_buf jump;                                    \
    if (sigsetjmp(jump, 0)) { rgc_jump = NULL; return -EFAULT; } \
    rgc_jump = &jump;                                   \
    RGC_BARRIER();
#define GUARDED_END RGC_BARRIER(); rgc_jump = NULL;

/* ---- the mmap family ---- */
int64_t rgc_mmap(uint64_t addr, uint64_t length, int prot, int flags)
{
    void *p = mmap((void *)addr, length, prot, flags, -1, 0);
    return p == MAP_FAILED ? -(int64_t)errno : (int64_t)(uintptr_t)p;
}
int64_t rgc_munmap(uint64_t addr, uint64_t length) { return rgc_result(munmap((void *)addr, length)); }
int64_t rgc_mremap(uint64_t old_addr, uint64_t old_len, uint64_t new_len, int flags, uint64_t new_addr)
{
    void *p = mremap((void *)old_addr, old_len, new_len, flags, (void *)new_addr);
    return p == MAP_FAILED ? -(int64_t)errno : (int64_t)(uintptr_t)p;
}
int64_t rgc_mprotect(uint64_t addr, uint64_t length, int prot) { return rgc_result(mprotect((void *)addr, length, prot)); }
int64_t rgc_madvise(uint64_t addr, uint64_t length, int advice) { return rgc_result(madvise((void *)addr, length, advice)); }
int64_t rgc_mlock(uint64_t addr, uint64_t length) { return rgc_result(mlock((void *)addr, length)); }
int64_t rgc_mlock2(uint64_t addr, uint64_t length, unsigned int flags) { return rgc_result(syscall(__NR_mlock2, addr, length, flags)); }
int64_t rgc_munlock(uint64_t addr, uint64_t length) { return rgc_result(munlock((void *)addr, length)); }

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

/* ---- PAGEMAP_SCAN: regions as (start, end, categories) triples ---- */
int64_t rgc_pagemap_scan(int fd, uint64_t start, uint64_t end, uint64_t category_mask,
                         uint64_t return_mask, uint64_t *regions, uint64_t max_regions)
{
    struct rgc_pm_scan_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.start = start;
    arg.end = end;
    arg.vec = (uint64_t)(uintptr_t)regions;
    arg.vec_len = max_regions;
    arg.category_mask = category_mask;
    arg.return_mask = return_mask;
    return rgc_result(ioctl(fd, RGC_PAGEMAP_SCAN, &arg));
}

/* ---- fork: a child that holds our pages copy-on-write and does nothing ---- */
/* Raw clone(SIGCHLD): no atfork handlers, no Python in the child. The child
   closes every descriptor except the read end of a pipe and blocks reading
   it: it lives until SIGKILL, or until every write end is closed, which
   happens when the parent process dies however it dies. */
int64_t rgc_fork_sleeper(int *keepalive_fd)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) return -errno;
    long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        return -err;
    }
    if (pid == 0) {
        int keep = fds[0];
        if (keep > 0) syscall(__NR_close_range, 0, keep - 1, 0);
        syscall(__NR_close_range, keep + 1, ~0U, 0);
        char byte;
        for (;;) {
            long r = syscall(SYS_read, keep, &byte, 1);
            if (r == 0 || (r < 0 && errno != EINTR)) syscall(SYS_exit_group, 0);
        }
    }
    close(fds[0]);
    *keepalive_fd = fds[1];
    return pid;
}

int64_t rgc_kill_reap(int64_t pid)
{
    if (pid <= 0) return -EINVAL;
    if (kill((pid_t)pid, SIGKILL) < 0 && errno != ESRCH) return -errno;
    for (;;) {
        pid_t r = waitpid((pid_t)pid, NULL, 0);
        if (r == (pid_t)pid) return 0;
        if (r < 0 && errno != EINTR) return -errno;
    }
}

/* ---- userfaultfd ---- */
int64_t rgc_userfaultfd_syscall(int flags) { return rgc_result(syscall(__NR_userfaultfd, flags)); }

int64_t rgc_userfaultfd_dev(int flags)
{
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return -errno;
    int fd = ioctl(dev, RGC_USERFAULTFD_IOC_NEW, flags);
    int err = errno;
    close(dev);
    return fd < 0 ? -err : fd;
}

int64_t rgc_uffd_api(int fd, uint64_t features, uint64_t *features_out, uint64_t *ioctls_out)
{
    struct rgc_uffdio_api api = { RGC_UFFD_API, features, 0 };
    int r = ioctl(fd, RGC_UFFDIO_API, &api);
    *features_out = api.features;
    *ioctls_out = api.ioctls;
    return rgc_result(r);
}

int64_t rgc_uffd_register(int fd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls_out)
{
    struct rgc_uffdio_register reg = { { start, length }, mode, 0 };
    int r = ioctl(fd, RGC_UFFDIO_REGISTER, &reg);
    *ioctls_out = reg.ioctls;
    return rgc_result(r);
}

int64_t rgc_uffd_unregister(int fd, uint64_t start, uint64_t length)
{
    struct rgc_uffdio_range range = { start, length };
    return rgc_result(ioctl(fd, RGC_UFFDIO_UNREGISTER, &range));
}

int64_t rgc_uffd_wake(int fd, uint64_t start, uint64_t length)
{
    struct rgc_uffdio_range range = { start, length };
    return rgc_result(ioctl(fd, RGC_UFFDIO_WAKE, &range));
}

/* The output field starts at 0 so that "not written by the kernel" reads as no progress. */
int64_t rgc_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *moved)
{
    struct rgc_uffdio_move mv = { dst, src, length, mode, 0 };
    int r = ioctl(fd, RGC_UFFDIO_MOVE, &mv);
    *moved = mv.move;
    return rgc_result(r);
}

/* One UFFDIO_MOVE per range, all in one call: stops at the first range that
   fails (or moves only part), reporting its index in *done and its output
   field in *moved. */
int64_t rgc_uffd_move_ranges(int fd, const uint64_t *dsts, const uint64_t *srcs, const uint64_t *lengths,
                             uint64_t n, uint64_t mode, uint64_t *done, int64_t *moved)
{
    for (uint64_t i = 0; i < n; i++) {
        struct rgc_uffdio_move mv = { dsts[i], srcs[i], lengths[i], mode, 0 };
        if (ioctl(fd, RGC_UFFDIO_MOVE, &mv) < 0) {
            *done = i;
            *moved = mv.move;
            return -errno;
        }
    }
    *done = n;
    *moved = 0;
    return 0;
}

/* ---- the concurrent compactor's walk over chunks nobody touched ----
   Straight from the install program (heap/concurrent.py InstallProgram):
   for chunk c, each page's source (its piece: the from-space, or for a
   rebuilt page the scratch slot scratch + (page - lo) * page size), the
   evacuation copies into the scratch, the slot stores into the sources,
   then one MOVE per run of pages contiguous at their sources. Page states
   are claimed and settled with the compare-and-swap the Python installers
   use (heap/_native_build.py), so this runs without the GIL while the fault
   handlers claim pages for waiting mutators: a page someone else holds is
   theirs to install, and the walk goes around it (mine[] marks the pages of
   the current chunk it claimed). It returns to Python at a MOVE the kernel
   refused (REFUSED: the pages it claimed before that run are in, the rest
   of mine[] is built and still claimed), a build that faulted (FAULTED:
   given back), or the stop flag. out: status, chunk, the refused run's
   first page, errno, the refused MOVE's output field, bytes copied, pages
   installed, MOVE ioctls. */
#define RGC_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES (1ULL << 1)
enum { RGC_CHUNKS_DONE = 0, RGC_CHUNKS_STOPPED = 1, RGC_CHUNK_REFUSED = 2, RGC_CHUNK_FAULTED = 3 };

@PROGRAM_STRUCT@

static int64_t rgc_upper_bound(const int64_t *a, int64_t n, int64_t key)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) { int64_t mid = lo + (hi - lo) / 2; if (a[mid] <= key) lo = mid + 1; else hi = mid; }
    return lo;
}

static void rgc_set_states(int8_t *state, int64_t lo, int64_t hi, int8_t value)
{
    for (int64_t p = lo; p < hi; p++)
        __atomic_store_n(&state[p], value, __ATOMIC_RELEASE);
}

/* Sources of pages [lo, hi) into src[]; returns whether any is rebuilt. */
static int rgc_sources(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch, uint64_t *src)
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
static int64_t rgc_build_chunk(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch,
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
    return n;
}

int64_t rgc_install_chunks(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk, int64_t first_chunk,
                           uint64_t scratch, const int32_t *stop, int64_t *installed, uint8_t *mine, int64_t *out)
{
    int64_t nchunks = (g->npages + chunk - 1) / chunk;
    uint64_t *src = malloc((size_t)chunk * sizeof *src);
    if (!src) return -ENOMEM;
    for (int i = 0; i < 8; i++) out[i] = 0;
    out[0] = RGC_CHUNKS_DONE;
    for (int64_t c = first_chunk; c < nchunks; c++) {
        int64_t lo = c * chunk, hi = lo + chunk < g->npages ? lo + chunk : g->npages, held = 0;
        out[1] = c;
        if (__atomic_load_n(stop, __ATOMIC_ACQUIRE)) { out[0] = RGC_CHUNKS_STOPPED; break; }
        for (int64_t p = lo; p < hi; p++) {  /* claim what nobody holds; a held page is its claimer's */
            int8_t expected = 0;
            mine[p - lo] = __atomic_compare_exchange_n(&state[p], &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            held += mine[p - lo];
        }
        if (!held) continue;
        int any_rebuilt = rgc_sources(g, lo, hi, scratch, src);
        int64_t err = rgc_build_chunk(g, lo, hi, scratch, src, any_rebuilt, mine, &out[5]);
        if (err < 0) {
            rgc_settle_mine(state, lo, lo, hi, mine, 0);
            out[0] = RGC_CHUNK_FAULTED;
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
                if (ioctl(fd, RGC_UFFDIO_MOVE, &mv) < 0) {
                    out[0] = RGC_CHUNK_REFUSED;
                    out[2] = first;
                    out[3] = errno;
                    out[4] = mv.move;
                    int64_t done = rgc_settle_mine(state, lo, lo, first, mine, 2);
                    __atomic_add_fetch(installed, done, __ATOMIC_ACQ_REL);
                    out[6] += done;
                    break;
                }
            }
            first = p < hi && mine[p - lo] ? p : -1;
        }
        if (out[0] == RGC_CHUNK_REFUSED) break;
        rgc_settle_mine(state, lo, lo, hi, mine, 2);
        __atomic_add_fetch(installed, held, __ATOMIC_ACQ_REL);
        out[6] += held;
    }
    free(src);
    return 0;
}

#define RGC_UFFD_EVENT_PAGEFAULT 0x12
struct rgc_fault_server {
    int uffd, forward_fd, stop_fd;
    int8_t *state;
    const struct rgc_program *g;
    uint64_t scratch;      /* one page: rebuilt pages are assembled here */
    int64_t *installed;    /* PageStates.installed_natively */
    int64_t *counters;
    int64_t *latencies;    /* ns from reading the event to the ioctl's return */
    int64_t max_latencies;
    pthread_t thread;
    int running;
};


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
    s->counters[1]++;
}

static void rgc_installed(struct rgc_fault_server *s, int64_t page)
{
    __atomic_store_n(&s->state[page], 2, __ATOMIC_RELEASE);
    __atomic_add_fetch(s->installed, 1, __ATOMIC_ACQ_REL);
}

/* 1: resolved here (the ioctl woke the faulter), 0: forward it unclaimed, 2: forwarded claimed */
static int rgc_serve_fault(struct rgc_fault_server *s, uint64_t addr)
{
    const struct rgc_program *g = s->g;
    int64_t page = (int64_t)((addr - g->arena) / g->page_size);
    if (addr < g->arena) return 0;
    int8_t expected = 0;
    if (page >= g->npages
        || (!__atomic_compare_exchange_n(&s->state[page], &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
            && expected == 2)) {
        /* past the plan (a fresh allocation), or installed as a hole: a zero page */
        struct rgc_uffdio_zeropage zp = { { addr, g->page_size }, 0, 0 };
        if (ioctl(s->uffd, RGC_UFFDIO_ZEROPAGE, &zp) == 0) {
            if (page >= g->npages) s->counters[3]++;
        } else {
            struct rgc_uffdio_range range = { addr, g->page_size };
            if (errno != EEXIST || ioctl(s->uffd, RGC_UFFDIO_WAKE, &range) < 0) return 0;
        }
        s->counters[6]++;
        return 1;
    }
    if (expected != 0) return 0;  /* someone holds it: Python waits for them */
    uint64_t src;
    int64_t copied = 0;
    int rebuilt = rgc_sources(g, page, page + 1, s->scratch, &src);
    if (rgc_build_chunk(g, page, page + 1, s->scratch, &src, rebuilt, NULL, &copied) < 0) {
        __atomic_store_n(&s->state[page], 0, __ATOMIC_RELEASE);
        return 0;
    }
    if (rebuilt) {
        struct rgc_uffdio_copy cp = { addr, s->scratch, g->page_size, 0, 0 };
        if (ioctl(s->uffd, RGC_UFFDIO_COPY, &cp) < 0) {  /* a one-page COPY that fails copied nothing */
            __atomic_store_n(&s->state[page], 0, __ATOMIC_RELEASE);
            return 0;
        }
        rgc_installed(s, page);
        s->counters[4]++;
        s->counters[5] += copied + (int64_t)g->page_size;
        return 1;
    }
    struct rgc_uffdio_move mv = { addr, src, g->page_size, 0, 0 };
    if (ioctl(s->uffd, RGC_UFFDIO_MOVE, &mv) < 0) {
        /* it may have moved and been reported as EINTR: Python finishes it, still claimed */
        rgc_forward(s, addr, 1 | ((uint64_t)errno << 8), mv.move);
        return 2;
    }
    rgc_installed(s, page);
    s->counters[0]++;
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
            else if (served == 1 && s->counters[2] < s->max_latencies)
                s->latencies[s->counters[2]++] = rgc_now_ns() - t0;
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

int64_t rgc_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *copied)
{
    struct rgc_uffdio_copy cp = { dst, src, length, mode, 0 };
    int r = ioctl(fd, RGC_UFFDIO_COPY, &cp);
    *copied = cp.copy;
    return rgc_result(r);
}

int64_t rgc_uffd_zeropage(int fd, uint64_t dst, uint64_t length, uint64_t mode, int64_t *zeroed)
{
    struct rgc_uffdio_zeropage zp = { { dst, length }, mode, 0 };
    int r = ioctl(fd, RGC_UFFDIO_ZEROPAGE, &zp);
    *zeroed = zp.zeropage;
    return rgc_result(r);
}

/* Waits up to timeout_ms (-1: forever) for the fd to become readable, then
   reads every queued message without blocking. events receives
   (event, flags, address) triples; returns how many messages were read. */
int64_t rgc_uffd_read_events(int fd, int timeout_ms, uint64_t *events, uint64_t max_events)
{
    struct pollfd pfd = { fd, POLLIN, 0 };
    int r = poll(&pfd, 1, timeout_ms);
    if (r < 0) return -errno;
    if (r == 0) return 0;
    if (pfd.revents & POLLNVAL) return -EBADF;
    if (pfd.revents & POLLERR) return -EIO;
    struct rgc_uffd_msg msgs[64];
    uint64_t n = 0;
    while (n < max_events) {
        uint64_t want = max_events - n;
        if (want > 64) want = 64;
        ssize_t got = read(fd, msgs, want * sizeof msgs[0]);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            return n ? (int64_t)n : -errno;
        }
        if (got == 0) break;
        for (ssize_t i = 0; i < got / (ssize_t)sizeof msgs[0]; i++, n++) {
            events[3 * n] = msgs[i].event;
            events[3 * n + 1] = msgs[i].flags;
            events[3 * n + 2] = msgs[i].address;
        }
        if ((uint64_t)got < want * sizeof msgs[0]) break;
    }
    return (int64_t)n;
}

int64_t rgc_close(int fd) { return rgc_result(close(fd)); }
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF.replace("@PROGRAM_STRUCT@", PROGRAM_STRUCT))
ffibuilder.set_source("uffd_backend._native", C_SOURCE.replace("@PROGRAM_STRUCT@", PROGRAM_STRUCT),
                      extra_compile_args=["-O2", "-Wall", "-pthread"], extra_link_args=["-pthread"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
