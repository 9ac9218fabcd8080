/* What the Linux backend's accelerator files share: the install program
   and page states (heap/csrc/remapgc_program.h), the fault server's state,
   and the walk's helpers the fault server also uses. */
#ifndef RGC_ACCELERATOR_H
#define RGC_ACCELERATOR_H

#include "linux_abi.h"
#include "remapgc_program.h"

/* The fault server's counters (uffd_backend/accelerator.py reads them by these numbers). */
enum rgc_server_counter {
    RGC_SRV_MOVED,         /* faults served by a MOVE */
    RGC_SRV_FORWARDED,     /* faults forwarded to Python */
    RGC_SRV_LATENCIES,     /* latencies recorded */
    RGC_SRV_FRESH,         /* zero pages past the program (fresh allocations) */
    RGC_SRV_COPIED,        /* rebuilt pages COPYed */
    RGC_SRV_BYTES_COPIED,  /* bytes copied into rebuilt pages, and by the COPYs */
    RGC_SRV_RESOLVED,      /* faults resolved by ZEROPAGE or WAKE */
    /* what only a self-served fault settles itself (the fault server forwards refusals to Python) */
    RGC_SRV_EBUSY_COPIES,  /* MOVE refused with EBUSY (shared with a forked child, pinned): COPYed */
    RGC_SRV_EAGAIN,        /* MOVE answered EAGAIN with no progress: retried */
    RGC_SRV_EEXIST,        /* MOVE/COPY answered EEXIST and the page was in already (a race) */
    RGC_SRV_HOLES,         /* MOVE answered ENOENT (a source hole): ZEROPAGE */
    RGC_SRV_RETRIES,       /* an install refused otherwise (ENOMEM, EINTR...): given back, the access retries */
    RGC_SRV_WAITS,         /* faults on a page another installer held: waited for it */
    RGC_SRV_CORRUPT,       /* EEXIST with the source still there: a page filled from outside the heap */
    RGC_SRV_SIGNALS,       /* SIGBUS taken for this heap */
    RGC_SRV_NCOUNTERS
};

#define RGC_COUNT(counters, which, n) __atomic_add_fetch(&(counters)[which], (n), __ATOMIC_RELAXED)

struct rgc_fault_server {
    int uffd, forward_fd, stop_fd;
    int8_t *state;         /* the heap's page states */
    const struct rgc_program *g;
    uint64_t scratch;      /* one page: rebuilt pages are assembled here */
    int64_t *installed;    /* pages installed here, added without the GIL */
    int64_t *counters;     /* RGC_SRV_NCOUNTERS of them, by enum rgc_server_counter */
    int64_t *latencies;    /* ns from reading the event to the ioctl's return */
    int64_t max_latencies;
    pthread_t thread;
    int running;
};

/* One faulting page, served by whoever took the fault: the fault server's
   thread (a uffd message) or the faulting thread itself (a SIGBUS,
   sigbus.c). serve_page.c. */
enum rgc_serve_outcome {
    RGC_SERVE_NOT_MINE,  /* someone else holds the page, or its build faulted (given back): not served */
    RGC_SERVE_DONE,      /* installed (or already there); the ioctl woke any waiter */
    RGC_SERVE_REFUSED,   /* the MOVE was refused: the page is still claimed, built; see the refusal */
};
struct rgc_refusal { uint64_t dst, src; int err; int64_t moved; };
int rgc_serve_page(const struct rgc_program *g, int uffd, int8_t *state, int64_t *installed, int64_t *counters,
                   uint64_t scratch, uint64_t addr, struct rgc_refusal *refused);
/* A claimed, built page whose MOVE was refused: settle it as the heap's
   install_page_range does (EAGAIN: retry; EBUSY: COPY; ENOENT: ZEROPAGE;
   EEXIST: in already, or corrupt; anything else: given back). 1 if the page
   is in, 0 if it was given back (unprocessed). */
int rgc_settle_refused(const struct rgc_program *g, int uffd, int8_t *state, int64_t *installed, int64_t *counters,
                       const struct rgc_refusal *refused);
void rgc_page_installed(int8_t *state, int64_t *installed, int64_t page);

/* Pages settled (installed or given back) by the native side: a sequence a
   self-served fault waiting for a page someone holds sleeps on (a futex),
   instead of spinning on a core the holder needs. Settlers call
   rgc_settled_wake after their state stores; Python's settles are seen by
   the waiter's timeout (a millisecond). serve_page.c. */
void rgc_settled_wake(void);
void rgc_settled_wait(const int8_t *state, int64_t page);

/* A heap whose faults its mutators serve themselves, by SIGBUS (sigbus.c). */
struct rgc_selfserve {
    int uffd;
    const struct rgc_program *g;
    int8_t *state;
    int64_t *installed;
    int64_t *counters;      /* RGC_SRV_NCOUNTERS */
    int64_t *latencies;     /* ns from the signal to the install's return */
    int64_t max_latencies;
    uint64_t lo, hi;        /* the arena range served */
    uint64_t scratch;       /* nscratch pages */
    int32_t *scratch_busy;  /* nscratch flags */
    int64_t nscratch;
};

/* Sources of pages [lo, hi) into src[]; returns whether any is rebuilt. */
int rgc_sources(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch, uint64_t *src);

/* Build the pages of [lo, hi) marked in mine[] (NULL: all): evacuees copied
   into their rebuilt pages in the scratch (the gaps read zero), slot fix-ups
   stored at each page's source. 0, or -EFAULT if an access faulted. */
int64_t rgc_build_chunk(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch,
                        const uint64_t *src, int any_rebuilt, const uint8_t *mine, int64_t *copied);

#endif
