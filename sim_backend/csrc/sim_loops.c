/* The simulator's per-word loops (sim_backend.native): user-mode word and
   range accesses through a per-page table of pool offsets that numpy builds
   over the span touched. Portable C, built by cffi (sim_backend/_native_build.py). */
#include <stdint.h>
#include <string.h>

#define SIM_PAGE_SHIFT 12
#define SIM_PAGE_SIZE 4096

/* out[i] = the word at addrs[i]; wbase[p - pmin] is the pool word index of page p
   (< 0: not accessible). Returns the index of the first inaccessible address, or n. */
int64_t rgc_sim_load_words(const uint64_t *pool, const int64_t *wbase, int64_t pmin, int64_t npages,
                           const uint64_t *addrs, int64_t n, uint64_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t p = (int64_t)(addrs[i] >> SIM_PAGE_SHIFT) - pmin;
        if (p < 0 || p >= npages || wbase[p] < 0)
            return i;
        out[i] = pool[wbase[p] + ((addrs[i] & (SIM_PAGE_SIZE - 1)) >> 3)];
    }
    return n;
}

/* The words, in order; stops at the first inaccessible address and returns its index (or n). */
int64_t rgc_sim_store_words(uint64_t *pool, const int64_t *wbase, int64_t pmin, int64_t npages,
                            const uint64_t *addrs, const uint64_t *vals, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t p = (int64_t)(addrs[i] >> SIM_PAGE_SHIFT) - pmin;
        if (p < 0 || p >= npages || wbase[p] < 0)
            return i;
        pool[wbase[p] + ((addrs[i] & (SIM_PAGE_SIZE - 1)) >> 3)] = vals[i];
    }
    return n;
}

/* hit[p - pmin] = 1 for the page of each address; returns how many addresses fell outside. */
int64_t rgc_sim_mark_pages(const uint64_t *addrs, int64_t n, int64_t pmin, int64_t npages, uint8_t *hit)
{
    int64_t outside = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t p = (int64_t)(addrs[i] >> SIM_PAGE_SHIFT) - pmin;
        if (p < 0 || p >= npages)
            outside++;
        else
            hit[p] = 1;
    }
    return outside;
}

/* Copy len bytes between the user range at addr (pages through base[p - pmin],
   < 0: not accessible) and buf, into the pool if to_pool, else out of it.
   Returns 0, or -1 at the first inaccessible page (the pages before it are done). */
static int sim_copy_user(uint8_t *pool, const int64_t *base, int64_t pmin, int64_t npages, int64_t addr,
                         uint8_t *buf, int64_t len, int to_pool)
{
    for (int64_t done = 0; done < len;) {
        int64_t a = addr + done;
        int64_t p = (a >> SIM_PAGE_SHIFT) - pmin;
        int64_t off = a & (SIM_PAGE_SIZE - 1);
        int64_t chunk = SIM_PAGE_SIZE - off;
        if (chunk > len - done)
            chunk = len - done;
        if (p < 0 || p >= npages || base[p] < 0)
            return -1;
        if (to_pool)
            memcpy(pool + base[p] + off, buf + done, (size_t)chunk);
        else
            memcpy(buf + done, pool + base[p] + off, (size_t)chunk);
        done += chunk;
    }
    return 0;
}

/* memmove(dsts[i], srcs[i], lens[i]) for each i in order, through the pool: s_base / d_base
   give the pool byte offset of each page of the source / destination span (< 0: not
   accessible). Each range goes through tmp (at least max(lens) bytes), so a range that
   overlaps itself is copied as memmove does. Returns the index of the first range that
   touches an inaccessible page (earlier ones are done), or n. */
int64_t rgc_sim_copy_ranges(uint8_t *pool, const int64_t *s_base, int64_t s_pmin, int64_t s_npages,
                            const int64_t *d_base, int64_t d_pmin, int64_t d_npages,
                            const int64_t *dsts, const int64_t *srcs, const int64_t *lens, int64_t n,
                            uint8_t *tmp)
{
    for (int64_t i = 0; i < n; i++) {
        if (sim_copy_user(pool, s_base, s_pmin, s_npages, srcs[i], tmp, lens[i], 0) < 0
            || sim_copy_user(pool, d_base, d_pmin, d_npages, dsts[i], tmp, lens[i], 1) < 0)
            return i;
    }
    return n;
}
