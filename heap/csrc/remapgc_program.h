/* The install program of a concurrent cycle, as compiled code reads it, and
   the page states it claims. Shared by the heap's own C (heap/csrc/) and by a
   backend's accelerator (uffd_backend/csrc/); declared a second time, for
   Python, in heap/kernel.py (PAGE_*, PROGRAM_SCALARS, PROGRAM_ARRAYS).

   Change both together and bump RGC_PROGRAM_LAYOUT_VERSION: every module
   built from this header reports what it was built with
   (rgc_program_layout), and Python refuses to import one that disagrees
   with heap/kernel.py (check_program_layout). */
#ifndef REMAPGC_PROGRAM_H
#define REMAPGC_PROGRAM_H

#include <stddef.h>
#include <stdint.h>

#define RGC_PROGRAM_LAYOUT_VERSION 1

/* Page states: unprocessed -> processing (claimed by exactly one installer,
   by compare-and-swap) -> installed. */
#define RGC_PAGE_UNPROCESSED 0
#define RGC_PAGE_PROCESSING 1
#define RGC_PAGE_INSTALLED 2

/* Pages are arena page indices [0, npages); slots and segments are sorted by
   to-space page. Every field is 8 bytes. The text between the cffi markers
   is also the cffi declaration (uffd_backend/_build.py reads it). */
/* cffi:begin */
struct rgc_program {
    int64_t npages, npieces, nslots, nsegs;
    uint64_t arena, from_space, page_size;
    const int64_t *piece_dst, *piece_src;  /* a piece: first to-space page, first from-space page */
    const uint8_t *piece_rebuilt;          /* nonzero: its pages are assembled from evacuees */
    const int64_t *slot_page, *slot_off;   /* a reference slot: to-space page, offset */
    const uint64_t *slot_val;              /* the value it must hold */
    const int64_t *seg_page, *seg_off, *seg_src, *seg_len;  /* an evacuation copy, cut at pages */
};
/* cffi:end */

/* The layout this module was built with, in heap.kernel.program_layout()'s
   order: version, size, every field's offset, the page states. Returns the
   count written (at most max). */
static inline int64_t rgc_program_layout(int64_t *out, int64_t max)
{
    const int64_t stamp[] = {
        RGC_PROGRAM_LAYOUT_VERSION,
        (int64_t)sizeof(struct rgc_program),
        (int64_t)offsetof(struct rgc_program, npages),
        (int64_t)offsetof(struct rgc_program, npieces),
        (int64_t)offsetof(struct rgc_program, nslots),
        (int64_t)offsetof(struct rgc_program, nsegs),
        (int64_t)offsetof(struct rgc_program, arena),
        (int64_t)offsetof(struct rgc_program, from_space),
        (int64_t)offsetof(struct rgc_program, page_size),
        (int64_t)offsetof(struct rgc_program, piece_dst),
        (int64_t)offsetof(struct rgc_program, piece_src),
        (int64_t)offsetof(struct rgc_program, piece_rebuilt),
        (int64_t)offsetof(struct rgc_program, slot_page),
        (int64_t)offsetof(struct rgc_program, slot_off),
        (int64_t)offsetof(struct rgc_program, slot_val),
        (int64_t)offsetof(struct rgc_program, seg_page),
        (int64_t)offsetof(struct rgc_program, seg_off),
        (int64_t)offsetof(struct rgc_program, seg_src),
        (int64_t)offsetof(struct rgc_program, seg_len),
        RGC_PAGE_UNPROCESSED,
        RGC_PAGE_PROCESSING,
        RGC_PAGE_INSTALLED,
    };
    int64_t n = (int64_t)(sizeof stamp / sizeof stamp[0]);
    if (n > max) n = max;
    for (int64_t i = 0; i < n; i++) out[i] = stamp[i];
    return n;
}

#endif
