"""Compiled candidate lists for the exact kNN search: one pass over each fp32 product block, no sorting.

Why (measured at N = 20 000, D = 768, k = 10 on this 2-core CPU, ``benchmarks/analysis_kernels.py``): with
``torch.topk`` the search spent as long selecting and merging candidates as multiplying — per 2 048 × 2 048 block
a top-k along the rows, a transposed copy and a top-k along the columns, two concatenations and two more top-k
merges, plus two elementwise passes to turn products into scores. Here each product block is read once per side:
a row's running list (``take`` best so far, ascending) has a threshold, nearly every score fails one comparison
against it, and the rare winner is inserted in place. Scores are formed in fp32 exactly as the torch path forms
them (``‖y‖² − 2·x·y``, or ``−x·y``), so the error bound of :mod:`speechprune.analysis.knn` holds unchanged.

Lists are kept sorted by (score, index), so the result is deterministic whatever the thread count. Rows are
independent, so the row side runs one thread per row range and the column side one thread per column range —
no two threads ever touch the same list.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a declared dependency; without it the search keeps torch.topk
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

COLUMN_CHUNK = 64  # columns per task on the column side: 64 lists of ≤ 32 entries stay in the L1 cache


if HAVE_NUMBA:

    @njit(cache=True, nogil=True, inline="always")
    def _insert(vals, idx, r, s, c):  # type: ignore[no-untyped-def]
        """Insert score s of point c into row r's ascending list (the caller checked it beats the last entry)."""
        p = vals.shape[1] - 1
        while p > 0 and (vals[r, p - 1] > s or (vals[r, p - 1] == s and idx[r, p - 1] > c)):
            vals[r, p] = vals[r, p - 1]
            idx[r, p] = idx[r, p - 1]
            p -= 1
        vals[r, p] = s
        idx[r, p] = c

    @njit(cache=True, nogil=True, parallel=True)
    def merge_rows(g, col_sq, row_lo, col_lo, vals, idx, euclidean, skip_self):  # type: ignore[no-untyped-def]
        """Merge the block ``g = X[row_lo:…] · X[col_lo:…]ᵀ`` into the lists of its rows (points ``row_lo + i``)."""
        bi, bj = g.shape
        last = vals.shape[1] - 1
        two = np.float32(2.0)
        for i in prange(bi):
            r = row_lo + i
            for j in range(bj):
                c = col_lo + j
                if skip_self and c == r:
                    continue
                s = col_sq[j] - two * g[i, j] if euclidean else -g[i, j]
                if s < vals[r, last] or (s == vals[r, last] and c < idx[r, last]):
                    _insert(vals, idx, r, s, c)

    @njit(cache=True, nogil=True, parallel=True)
    def merge_columns(g, row_sq, row_lo, col_lo, vals, idx, euclidean):  # type: ignore[no-untyped-def]
        """Merge the same block into the lists of its columns (points ``col_lo + j``), reading ``g`` row by row."""
        bi, bj = g.shape
        last = vals.shape[1] - 1
        two = np.float32(2.0)
        chunks = (bj + COLUMN_CHUNK - 1) // COLUMN_CHUNK
        for q in prange(chunks):
            j0 = q * COLUMN_CHUNK
            j1 = min(j0 + COLUMN_CHUNK, bj)
            for i in range(bi):
                c = row_lo + i
                for j in range(j0, j1):
                    r = col_lo + j
                    s = row_sq[i] - two * g[i, j] if euclidean else -g[i, j]
                    if s < vals[r, last] or (s == vals[r, last] and c < idx[r, last]):
                        _insert(vals, idx, r, s, c)

    @njit(cache=True, nogil=True, parallel=True)
    def squared_distances(x, scale, shift, rows, cand, out):  # type: ignore[no-untyped-def]
        """float64 ``Σ_d ((x_c·s_c − m_d) − (x_q·s_q − m_d))²`` of each row q = rows[a] and candidate c = cand[a, b]
        (−1 → inf): the difference form of ``knn._Search._exact``, with the same operations in the same order per
        element, without its float64 gathers of R × C × D temporaries."""
        n_rows, width = cand.shape
        d = x.shape[1]
        for a in prange(n_rows):
            q = rows[a]
            for b in range(width):
                c = cand[a, b]
                if c < 0:
                    out[a, b] = np.inf
                    continue
                acc = 0.0
                for t in range(d):
                    diff = (np.float64(x[c, t]) * scale[c] - shift[t]) - (np.float64(x[q, t]) * scale[q] - shift[t])
                    acc += diff * diff
                out[a, b] = acc


def set_threads(threads: int) -> None:
    """Use ``threads`` (capped at numba's pool size) for the parallel kernels of this module."""
    if HAVE_NUMBA:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
