"""cffi (API mode) build of ``uffd_backend._native``: thin C over the Linux syscalls.

The sources are in ``uffd_backend/csrc/``: ``syscalls.c`` (the mmap family,
PAGEMAP_SCAN, fork, the userfaultfd ioctls), ``guard.c`` (user-mode accesses
under a SIGSEGV/SIGBUS guard), and the accelerator (heap.kernel.Accelerator):
``install_walk.c``, ``fault_server.c`` and ``sigbus.c`` (self-served faults:
the faulting thread's SIGBUS installs its page; both serve a page with
``serve_page.c``), which read the install program as
``heap/csrc/remapgc_program.h`` declares it. The cffi declarations below name
what Python calls; ``struct rgc_program`` is read from that header.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
PROGRAM_CSRC = os.path.join(os.path.dirname(HERE), "heap", "csrc")
SOURCES = ("syscalls.c", "guard.c", "install_walk.c", "serve_page.c", "fault_server.c", "sigbus.c")


def program_struct() -> str:
    """struct rgc_program as remapgc_program.h declares it (between its cffi markers)."""
    with open(os.path.join(PROGRAM_CSRC, "remapgc_program.h")) as f:
        text = f.read()
    return text.split("/* cffi:begin */", 1)[1].split("/* cffi:end */", 1)[0]


# What Python sets in a fault server (the rest of the struct is C's: csrc/accelerator.h).
FAULT_SERVER_FIELDS = r"""
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
"""

# What Python sets in a self-served heap's entry (csrc/sigbus.c).
SELFSERVE_FIELDS = r"""
struct rgc_selfserve {
    int uffd;
    const struct rgc_program *g;
    int8_t *state;
    int64_t *installed;
    int64_t *counters;
    int64_t *latencies;
    int64_t max_latencies;
    uint64_t lo, hi;
    uint64_t scratch;
    int32_t *scratch_busy;
    int64_t nscratch;
};
"""

CDEF = r"""
int64_t rgc_program_layout(int64_t *out, int64_t max);
const char *rgc_program_field_names(void);
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
int64_t rgc_resident_bytes(int fd, uint64_t start, uint64_t end, uint64_t present, uint64_t zero);

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
const char *rgc_chunk_walk_statuses(void);
int64_t rgc_install_chunks(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk, int64_t first_chunk,
                           uint64_t scratch, const int32_t *stop, int64_t *installed, uint8_t *mine, int64_t *out);
int64_t rgc_install_chunks_settling(int fd, const struct rgc_program *g, int8_t *state, int64_t chunk,
                                    int64_t first_chunk, uint64_t scratch, const int32_t *stop, int64_t *installed,
                                    uint8_t *mine, int64_t *out, int64_t *settle);
int64_t rgc_fault_server_start(struct rgc_fault_server *s);
int64_t rgc_fault_server_join(struct rgc_fault_server *s);
int64_t rgc_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t length, uint64_t mode, int64_t *copied);
int64_t rgc_uffd_zeropage(int fd, uint64_t dst, uint64_t length, uint64_t mode, int64_t *zeroed);
int64_t rgc_uffd_read_events(int fd, int timeout_ms, uint64_t *events, uint64_t max_events);
int64_t rgc_close(int fd);
int64_t rgc_selfserve_acquire(void);
int64_t rgc_selfserve_release(void);
int64_t rgc_selfserve_installed(void);
int64_t rgc_selfserve_add(struct rgc_selfserve *s);
int64_t rgc_selfserve_remove(struct rgc_selfserve *s, int64_t timeout_ms);
int64_t rgc_selfserve_stats(int64_t *out);
"""


def _source(name: str) -> str:
    # setuptools wants sources relative to the project when it can have them
    path = os.path.join(CSRC, name)
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


ffibuilder = FFI()
ffibuilder.cdef(program_struct() + FAULT_SERVER_FIELDS + SELFSERVE_FIELDS + CDEF)
# the headers, then the prototypes for the module cffi generates (the definitions are in SOURCES)
ffibuilder.set_source("uffd_backend._native", '#include "accelerator.h"\n' + CDEF,
                      sources=[_source(name) for name in SOURCES], include_dirs=[CSRC, PROGRAM_CSRC],
                      extra_compile_args=["-O2", "-Wall", "-pthread"], extra_link_args=["-pthread"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
