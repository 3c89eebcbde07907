"""glibc allocator settings for large, short-lived tensors, applied when the CLI starts.

A forward pass allocates and frees the same large activation buffers every batch (wav2vec2-base at 4 s × 8: the
CNN's first output alone is 210 MB). glibc serves every block above its mmap threshold (adaptive, at most 32 MiB on
64-bit) with fresh ``mmap`` pages and hands them back with ``munmap`` when freed, so each batch page-faults all of
them in again: most of the system time of an extraction, and a large share of its wall time on a VM (see
``benchmarks/results/allocator.md``). :func:`tune_allocator` sets three ``mallopt`` parameters through ctypes:

* ``M_MMAP_MAX = 0``: large blocks come from the heap too, so a freed buffer is reused by the next batch without
  page faults (glibc still falls back to ``mmap`` if the heap cannot grow);
* ``M_TRIM_THRESHOLD = 1 GiB``: free memory at the top of the heap is kept mapped up to 1 GiB instead of being
  returned at once;
* ``M_TOP_PAD = 64 MiB``: the heap grows in large steps.

The price: memory freed after a peak is returned to the system lazily, so the resident size stays near the peak
(the peak itself does not grow). ``SPEECHPRUNE_MALLOC=default`` leaves glibc's defaults; nothing is done where the
C library is not glibc or another allocator (tcmalloc, jemalloc) was preloaded with ``LD_PRELOAD``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}

_applied: bool | None = None


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` once per process; returns whether they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("SPEECHPRUNE_MALLOC", "").lower() in ("default", "off", "0", "no"):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("tcmalloc", "jemalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt means something else
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _applied
