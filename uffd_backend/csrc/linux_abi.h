/* The Linux backend's C: the kernel ABI it speaks (spelled out, since
   /usr/include/linux/userfaultfd.h on build machines may predate UFFDIO_MOVE
   and linux/fs.h may lack PAGEMAP_SCAN), and what its files share.

   Every exported function returns its result (>= 0) or -errno and never
   touches the Python C API, so cffi releases the GIL around each call: a
   call that touches a userfaultfd-registered missing page sleeps in the
   kernel until a handler resolves the fault, and the handler may be a
   Python thread. */
#ifndef RGC_LINUX_H
#define RGC_LINUX_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
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

/* ---- the user-mode access guard (guard.c) ----
   A fault inside GUARDED_BEGIN .. GUARDED_END jumps back and the enclosing
   function returns -EFAULT. volatile + compiler barriers: the compiler knows
   memcpy cannot read rgc_jump and would otherwise drop the store as dead or
   move the access across it. */
extern __thread sigjmp_buf *volatile rgc_jump __attribute__((tls_model("initial-exec"), visibility("hidden")));
#define RGC_BARRIER() __asm__ __volatile__("" ::: "memory")
#define GUARDED_BEGIN                                   \
    sigjmp_buf jump;                                    \
    if (sigsetjmp(jump, 0)) { rgc_jump = NULL; return -EFAULT; } \
    rgc_jump = &jump;                                   \
    RGC_BARRIER();
#define GUARDED_END RGC_BARRIER(); rgc_jump = NULL;

/* ---- self-served faults (sigbus.c): the guard asks it first ---- */
int rgc_selfserve_fault(int sig, siginfo_t *info);
int rgc_selfserve_chains_to(void (*fn)(int, siginfo_t *, void *));

#define RGC_UFFD_EVENT_PAGEFAULT 0x12
#define RGC_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES (1ULL << 1)

#endif
