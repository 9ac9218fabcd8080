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
    RGC_SRV_NCOUNTERS
};

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

/* Sources of pages [lo, hi) into src[]; returns whether any is rebuilt. */
int rgc_sources(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch, uint64_t *src);

/* Build the pages of [lo, hi) marked in mine[] (NULL: all): evacuees copied
   into their rebuilt pages in the scratch (the gaps read zero), slot fix-ups
   stored at each page's source. 0, or -EFAULT if an access faulted. */
int64_t rgc_build_chunk(const struct rgc_program *g, int64_t lo, int64_t hi, uint64_t scratch,
                        const uint64_t *src, int any_rebuilt, const uint8_t *mine, int64_t *copied);

#endif
