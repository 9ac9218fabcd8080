"""The simulator's per-word loops: compiled C (``sim_backend._native``, built by
``pip install`` from ``sim_backend/_native_build.py``) when available, else None
and the kernel uses its numpy paths. Both give the same results; the tests run both.
"""

from __future__ import annotations

import numpy as np

try:
    from ._native import ffi as _ffi
    from ._native import lib as _lib
except ImportError:  # no compiler at install time: numpy does it, slower
    _ffi = _lib = None

COMPILED = _lib is not None


def _p(ctype: str, arr: np.ndarray):
    return _ffi.from_buffer(ctype, arr)


def load_words(pool_words: np.ndarray, wbase: np.ndarray, pmin: int, addrs: np.ndarray, out: np.ndarray) -> int:
    """Fill ``out`` until the first inaccessible address; returns its index (or len)."""
    return _lib.rgc_sim_load_words(_p("uint64_t[]", pool_words), _p("int64_t[]", wbase), pmin, wbase.size,
                                   _p("uint64_t[]", addrs), addrs.size, _p("uint64_t[]", out))


def store_words(pool_words: np.ndarray, wbase: np.ndarray, pmin: int, addrs: np.ndarray, vals: np.ndarray) -> int:
    return _lib.rgc_sim_store_words(_p("uint64_t[]", pool_words), _p("int64_t[]", wbase), pmin, wbase.size,
                                    _p("uint64_t[]", addrs), _p("uint64_t[]", vals), addrs.size)


def mark_pages(addrs: np.ndarray, pmin: int, hit: np.ndarray) -> int:
    return _lib.rgc_sim_mark_pages(_p("uint64_t[]", addrs), addrs.size, pmin, hit.size, _p("uint8_t[]", hit))


def copy_ranges(pool_bytes: np.ndarray, s_base: np.ndarray, s_pmin: int, d_base: np.ndarray, d_pmin: int,
                dsts: np.ndarray, srcs: np.ndarray, lens: np.ndarray) -> int:
    tmp = np.empty(max(int(lens.max()), 1), dtype=np.uint8)
    return _lib.rgc_sim_copy_ranges(_p("uint8_t[]", pool_bytes), _p("int64_t[]", s_base), s_pmin, s_base.size,
                                    _p("int64_t[]", d_base), d_pmin, d_base.size, _p("int64_t[]", dsts),
                                    _p("int64_t[]", srcs), _p("int64_t[]", lens), dsts.size, _p("uint8_t[]", tmp))
