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

/* Every field of struct rgc_program, for the stamp below. */
#define RGC_PROGRAM_FIELDS(X) X(npages) X(npieces) X(nslots) X(nsegs) X(arena) X(from_space) X(page_size) \
    X(piece_dst) X(piece_src) X(piece_rebuilt) X(slot_page) X(slot_off) X(slot_val) \
    X(seg_page) X(seg_off) X(seg_src) X(seg_len)

/* The layout this module was built with, for heap.kernel.check_program_layout:
   the version, the struct's size, each field's offset (in the order
   rgc_program_field_names gives), the page states. Returns the count
   written (at most max). */
static inline int64_t rgc_program_layout(int64_t *out, int64_t max)
{
#define RGC_OFFSET(field) (int64_t)offsetof(struct rgc_program, field),
    const int64_t stamp[] = {
        RGC_PROGRAM_LAYOUT_VERSION,
        (int64_t)sizeof(struct rgc_program),
        RGC_PROGRAM_FIELDS(RGC_OFFSET)
        RGC_PAGE_UNPROCESSED,
        RGC_PAGE_PROCESSING,
        RGC_PAGE_INSTALLED,
    };
#undef RGC_OFFSET
    int64_t n = (int64_t)(sizeof stamp / sizeof stamp[0]);
    if (n > max) n = max;
    for (int64_t i = 0; i < n; i++) out[i] = stamp[i];
    return n;
}

/* The fields whose offsets rgc_program_layout gives, space-separated, in its order. */
static inline const char *rgc_program_field_names(void)
{
#define RGC_NAME(field) #field " "
    return RGC_PROGRAM_FIELDS(RGC_NAME);
#undef RGC_NAME
}

#endif
