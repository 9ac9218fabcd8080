/* The Linux backend's system calls: the mmap family, PAGEMAP_SCAN, a
   sleeping fork, and the userfaultfd ioctls, each a thin wrapper returning
   its result or -errno. */
#include "linux_abi.h"

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

/* Bytes of [start, end) in present pages that are not the zero page (its
   private frames), summed over as many PAGEMAP_SCAN calls as the regions
   need, in one call: a fragmented heap has thousands of regions, and a
   round trip to Python per 512 of them hands the GIL over each time. */
int64_t rgc_resident_bytes(int fd, uint64_t start, uint64_t end, uint64_t present, uint64_t zero)
{
    enum { REGIONS = 512 };
    uint64_t regions[3 * REGIONS];
    int64_t resident = 0;
    while (start < end) {
        int64_t n = rgc_pagemap_scan(fd, start, end, present, present | zero, regions, REGIONS);
        if (n < 0) return n;
        for (int64_t i = 0; i < n; i++)
            if (!(regions[3 * i + 2] & zero)) resident += (int64_t)(regions[3 * i + 1] - regions[3 * i]);
        if (n < REGIONS) break;
        start = regions[3 * (n - 1) + 1]; /* the vector filled up: go on after its last region */
    }
    return resident;
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

/* MOVE, COPY, ZEROPAGE: the ioctl on a struct whose last field the kernel
   sets to the bytes done (or -errno). That field starts at 0, so that "not
   written by the kernel" reads as no progress; *out receives it. */
static int64_t rgc_uffd_op(int fd, unsigned long request, void *arg, const int64_t *field, int64_t *out)
{
    int r = ioctl(fd, request, arg);
    *out = *field;
    return rgc_result(r);
}

int64_t rgc_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *moved)
{
    struct rgc_uffdio_move mv = { dst, src, length, mode, 0 };
    return rgc_uffd_op(fd, RGC_UFFDIO_MOVE, &mv, &mv.move, moved);
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

int64_t rgc_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *copied)
{
    struct rgc_uffdio_copy cp = { dst, src, length, mode, 0 };
    return rgc_uffd_op(fd, RGC_UFFDIO_COPY, &cp, &cp.copy, copied);
}

int64_t rgc_uffd_zeropage(int fd, uint64_t dst, uint64_t length, uint64_t mode, int64_t *zeroed)
{
    struct rgc_uffdio_zeropage zp = { { dst, length }, mode, 0 };
    return rgc_uffd_op(fd, RGC_UFFDIO_ZEROPAGE, &zp, &zp.zeropage, zeroed);
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
