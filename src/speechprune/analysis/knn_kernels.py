"""Compiled parts of the exact kNN search on the CPU: operands, candidate lists, float64 checks.

Candidate lists: one pass over each fp32 product block, no sorting.

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
import torch

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

    # Row reductions in four interleaved partial sums (t mod 4), added as (s0 + s1) + (s2 + s3): four independent
    # dependency chains instead of one (a plain float64 sum waits on each add; these loops were latency-bound at
    # D = 768), in a fixed order, so the value is the same on every machine and thread count.
    @njit(cache=True, nogil=True, inline="always")
    def _dot64(x, i, y, j, d):  # type: ignore[no-untyped-def]
        """Σ_t float64(x[i, t]) · float64(y[j, t])."""
        s0 = s1 = s2 = s3 = 0.0
        t = 0
        while t + 4 <= d:
            s0 += np.float64(x[i, t]) * np.float64(y[j, t])
            s1 += np.float64(x[i, t + 1]) * np.float64(y[j, t + 1])
            s2 += np.float64(x[i, t + 2]) * np.float64(y[j, t + 2])
            s3 += np.float64(x[i, t + 3]) * np.float64(y[j, t + 3])
            t += 4
        while t < d:
            s0 += np.float64(x[i, t]) * np.float64(y[j, t])
            t += 1
        return (s0 + s1) + (s2 + s3)

    @njit(cache=True, nogil=True, inline="always")
    def _dist2(x, scale, shift, q, c, d):  # type: ignore[no-untyped-def]
        """Σ_t ((x[c, t]·s_c − m_t) − (x[q, t]·s_q − m_t))² in float64 (exactly 0 for duplicate rows)."""
        sq, sc = scale[q], scale[c]
        s0 = s1 = s2 = s3 = 0.0
        t = 0
        while t + 4 <= d:
            e0 = (np.float64(x[c, t]) * sc - shift[t]) - (np.float64(x[q, t]) * sq - shift[t])
            e1 = (np.float64(x[c, t + 1]) * sc - shift[t + 1]) - (np.float64(x[q, t + 1]) * sq - shift[t + 1])
            e2 = (np.float64(x[c, t + 2]) * sc - shift[t + 2]) - (np.float64(x[q, t + 2]) * sq - shift[t + 2])
            e3 = (np.float64(x[c, t + 3]) * sc - shift[t + 3]) - (np.float64(x[q, t + 3]) * sq - shift[t + 3])
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
            t += 4
        while t < d:
            e0 = (np.float64(x[c, t]) * sc - shift[t]) - (np.float64(x[q, t]) * sq - shift[t])
            s0 += e0 * e0
            t += 1
        return (s0 + s1) + (s2 + s3)

    @njit(cache=True, nogil=True, inline="always")
    def _dot32(x32, i, d):  # type: ignore[no-untyped-def]
        """fp32 Σ_t x32[i, t]²."""
        s0 = s1 = s2 = s3 = np.float32(0.0)
        t = 0
        while t + 4 <= d:
            s0 += x32[i, t] * x32[i, t]
            s1 += x32[i, t + 1] * x32[i, t + 1]
            s2 += x32[i, t + 2] * x32[i, t + 2]
            s3 += x32[i, t + 3] * x32[i, t + 3]
            t += 4
        while t < d:
            s0 += x32[i, t] * x32[i, t]
            t += 1
        return (s0 + s1) + (s2 + s3)

    @njit(cache=True, nogil=True, parallel=True)
    def merge_rows(g, col_sq, row_lo, col_lo, vals, idx, euclidean, skip_self):  # type: ignore[no-untyped-def]
        """Merge the block ``g = X[row_lo:…] · X[col_lo:…]ᵀ`` into the lists of its rows (points ``row_lo + i``)."""
        bi, bj = g.shape
        last = vals.shape[1] - 1
        two = np.float32(2.0)
        for i in prange(bi):
            r = row_lo + i
            worst = vals[r, last]  # the list's threshold, in a register: it changes only on an insert
            for j in range(bj):
                s = col_sq[j] - two * g[i, j] if euclidean else -g[i, j]
                if s <= worst:
                    c = col_lo + j
                    if (s < worst or c < idx[r, last]) and not (skip_self and c == r):
                        _insert(vals, idx, r, s, c)
                        worst = vals[r, last]

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
            worst = np.empty(j1 - j0, np.float32)  # the chunk's thresholds, updated on every insert
            for j in range(j0, j1):
                worst[j - j0] = vals[col_lo + j, last]
            for i in range(bi):
                c = row_lo + i
                for j in range(j0, j1):
                    s = row_sq[i] - two * g[i, j] if euclidean else -g[i, j]
                    if s <= worst[j - j0]:
                        r = col_lo + j
                        if s < worst[j - j0] or c < idx[r, last]:
                            _insert(vals, idx, r, s, c)
                            worst[j - j0] = vals[r, last]

    @njit(cache=True, nogil=True, parallel=True)
    def exact_scores(x, scale, shift, rows, cand, out, euclidean):  # type: ignore[no-untyped-def]
        """float64 score of each row q = rows[a] against candidate c = cand[a, b] (−1 → inf), the two branches of
        ``knn._Search._exact`` without their float64 gathers of R × C × D temporaries: Euclidean, the difference
        form ``Σ_d ((x_c·s_c − m_d) − (x_q·s_q − m_d))²`` with the same operations per element; inner product,
        ``−(Σ_d x_q,d · x_c,d) · s_q · s_c``."""
        n_rows, width = cand.shape
        d = x.shape[1]
        for a in prange(n_rows):
            q = rows[a]
            for b in range(width):
                c = cand[a, b]
                if c < 0:
                    out[a, b] = np.inf
                    continue
                if euclidean:
                    out[a, b] = _dist2(x, scale, shift, q, c, d)
                else:
                    out[a, b] = -(_dot64(x, q, x, c, d) * scale[q] * scale[c])

    @njit(cache=True, nogil=True, parallel=True)
    def _scaled_column_sums(x, scale, out):  # type: ignore[no-untyped-def]
        """float64 ``out[t] = Σ_i x[i, t]·scale[i]`` in one pass (per-thread partial sums over row ranges)."""
        n, d = x.shape
        parts = max(1, min(n, 64))
        partial = np.zeros((parts, d))
        for p in prange(parts):
            for i in range(p * n // parts, (p + 1) * n // parts):
                for t in range(d):
                    partial[p, t] += np.float64(x[i, t]) * scale[i]
        for t in range(d):
            acc = 0.0
            for p in range(parts):
                acc += partial[p, t]
            out[t] = acc

    @njit(cache=True, nogil=True, parallel=True)
    def prepare_rows(x, normalize, center, scale, shift, x32, sq):  # type: ignore[no-untyped-def]
        """The search's operands in one pass per step, as ``knn._Search._prepare`` forms them with torch: float64
        inverse norms (``normalize``; zero rows stay zero), the float64 column mean of the scaled rows
        (``center``), the fp32 rows ``x·s − m`` and their fp32 squared norms. Small-op torch calls cost more in
        thread start-up than in work at N ≈ 1 000, and stall whenever another process holds a core."""
        n, d = x.shape
        for i in prange(n):
            s = 1.0
            if normalize:
                s = 1.0 / max(np.sqrt(_dot64(x, i, x, i, d)), 1e-12)
            scale[i] = s
        shift[:] = 0.0
        if center and n > 0:
            _scaled_column_sums(x, scale, shift)
            shift /= n
        for i in prange(n):
            si = scale[i]
            for t in range(d):
                x32[i, t] = np.float32(np.float64(x[i, t]) * si - shift[t])
            sq[i] = _dot32(x32, i, d)

    @njit(cache=True, nogil=True, parallel=True)
    def _list_hits(a, b):  # type: ignore[no-untyped-def]
        """Σ_r |A_r ∩ B_r| over the rows of two neighbour-index lists (entries within a row distinct)."""
        n, ka = a.shape
        kb = b.shape[1]
        parts = max(1, min(n, 64))
        hits = np.zeros(parts, np.int64)
        for p in prange(parts):
            h = 0
            for r in range(p * n // parts, (p + 1) * n // parts):
                for i in range(ka):
                    v = a[r, i]
                    for j in range(kb):
                        if b[r, j] == v:
                            h += 1
            hits[p] = h
        return hits.sum()

    @njit(cache=True, nogil=True)
    def all_finite(x):  # type: ignore[no-untyped-def]
        """Whether every entry is finite (stops at the first that is not; no N × D boolean temporary)."""
        for v in x.reshape(-1):  # C-ordered arrays only (_compiled_view)
            if not np.isfinite(v):
                return False
        return True


def _compiled_view(x: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """``x`` as a numpy array the kernels can read (CPU float32/float64, C-ordered, no autograd), or None."""
    arr = x.numpy() if isinstance(x, torch.Tensor) and x.device.type == "cpu" and not x.requires_grad else x
    if (HAVE_NUMBA and isinstance(arr, np.ndarray) and arr.dtype in (np.float32, np.float64)
            and arr.flags.c_contiguous):
        return arr
    return None


def finite(x: np.ndarray | torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite: compiled for CPU float32/float64 data (one pass, stops early, no
    boolean temporary), ``torch.isfinite`` otherwise (other dtypes, GPU tensors)."""
    arr = _compiled_view(x)
    if arr is not None:
        return bool(all_finite(arr))
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return bool(torch.isfinite(t).all()) if t.is_floating_point() else True


def column_sums(x: torch.Tensor) -> torch.Tensor:
    """float64 column sums of an N × D tensor: compiled for CPU float32/float64 data (no float64 copy of x),
    torch otherwise."""
    arr = _compiled_view(x)
    if arr is None:
        return x.to(torch.float64).sum(dim=0)
    out = np.zeros(arr.shape[1])
    _scaled_column_sums(arr, np.ones(arr.shape[0]), out)
    return torch.from_numpy(out)


def list_hits(a: np.ndarray, b: np.ndarray, chunk_elems: int = 1 << 22) -> int:
    """Σ_r |A_r ∩ B_r| for two N × k neighbour lists whose rows hold distinct indices: one compiled pass (the
    numpy broadcast ``a[:, :, None] == b[:, None, :]`` of the fallback costs an N × k × k temporary per chunk;
    at N = 1 000 the 78 pairs of 13 states took 16 ms of 0.2 s that way)."""
    if HAVE_NUMBA and a.dtype == b.dtype and a.dtype in (np.int64, np.int32):
        return int(_list_hits(a, b))
    n, k = a.shape
    step = max(1, chunk_elems // max(1, k * b.shape[1]))
    return sum(int((a[lo:lo + step, :, None] == b[lo:lo + step, None, :]).sum()) for lo in range(0, n, step))


def set_threads(threads: int) -> None:
    """Use ``threads`` (capped at numba's pool size) for the parallel kernels of this module."""
    if HAVE_NUMBA:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
