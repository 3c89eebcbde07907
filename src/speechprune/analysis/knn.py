"""Exact k-nearest neighbours without an N × N matrix: fp32 GEMM blocks, top-k, and a float64 check.

**Search.** Every score comes from an fp32 GEMM of row blocks (Euclidean: ``‖y‖² − 2 x·y`` on centred data, the
per-row constant ``‖x‖²`` dropped since it does not change a row's ranking; inner product: ``−x·y``), and each row
keeps its ``k + margin`` best candidates. Two ways to cover the N × N products:

* *dense* (small N, default below :data:`DENSE_MAX_ROWS`): each row block against all rows, one top-k per block;
* *symmetric* (large N): only the blocks on and above the diagonal are multiplied, and each product ``G = X_I X_Jᵀ``
  serves the rows of I (top-k along its rows) and the rows of J (top-k along its columns), so the GEMM work is
  halved; the running candidates of every row are merged block by block (memory O(N·(k + margin))).

On the CPU the symmetric scheme runs as compiled merges at every N (:mod:`speechprune.analysis.knn_kernels`);
N only changes its block size (:func:`block_rows`: up to 2 048 rows one block, i.e. the dense form's single full
product; blocks of ≈ 1 024 rows up to 8 192). The torch scheme choice by :data:`DENSE_MAX_ROWS` applies to other
devices and forced schemes.

**Exactness.** The fp32 scores carry a rounding error of at most ``ε = γ_D·(…)`` (the standard dot-product bound
``|fl(x·y) − x·y| ≤ γ_D ‖x‖‖y‖``, γ_D = D·u / (1 − D·u), u = 2⁻²⁴, plus the rounding of the inputs), computed per
row. Where the fp32 ranking cannot be wrong — every gap that decides the answer is larger than ``2ε`` — it is taken
as is. Only the other rows (near ties, exact duplicates) are *refined*: their candidates are rescored in float64
from the original data and sorted by ``(float64 score, index)``. A refined row whose candidate list might not hold
all its true neighbours (the last candidate within ``2ε`` of the k-th) is redone against all rows in float64. So
the result equals a dense float64 computation with ties broken by the smaller index — on the CPU and on a GPU
alike (TF32 is switched off for these products).

:func:`knn` also returns the float64 distances of the chosen neighbours (computed exactly, so only the k-th/(k+1)-th
gap decides whether a row is refined); with ``distances=False`` it returns the indices only, ordered exactly (every
gap among the first k + 1 candidates is checked), which is what the mutual-kNN overlap needs.

Used by mutual-kNN alignment (inner-product neighbours on L2-normalised rows) and by graph convexity (Euclidean,
edge weight = distance). Both accept a torch ``device`` (``"cuda"`` runs the GEMMs and top-k on the GPU).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from speechprune.analysis import knn_kernels as _kernels
from speechprune.errors import SpeechpruneError

DEFAULT_BLOCK = 2048
# The compiled CPU search's block size by N (:func:`block_rows`; measured, see there): one block up to
# ONE_BLOCK_MAX_ROWS rows (the dense form's single full product: at N = 1 000 splitting saved less GEMM time than
# its column merges cost), blocks of ≈ MID_BLOCK rows up to SMALL_N_ROWS (at N = 5 000, 1.71 s vs 2.26 s with
# 2 048-row blocks), DEFAULT_BLOCK above.
ONE_BLOCK_MAX_ROWS = 2048
MID_BLOCK = 1024
SMALL_N_ROWS = 8192
# Torch search (GPU, or a forced scheme): at or below this many rows the dense row-block scan is used: the
# symmetric scheme's extra top-k along columns and its merges pay off only once the GEMM half they save is large.
# A first choice (3 row blocks of 2 048), not tuned on an idle machine: the benchmarks of issue 18 ran at load
# 20–30 (benchmarks/results/analysis_kernels.md).
DENSE_MAX_ROWS = 6144
_U32 = 2.0**-24


@dataclass
class Neighbours:
    """``indices[i]`` are the k nearest points of row i (closest first); ``distances[i]`` their Euclidean distances
    (or negated inner products for ``metric="ip"``), float64."""

    indices: np.ndarray
    distances: np.ndarray


def knn(
    x: np.ndarray | torch.Tensor,
    k: int,
    *,
    metric: str = "euclidean",
    exclude_self: bool = True,
    exclude_duplicates: bool = False,
    margin: int = 8,
    block: int | None = None,
    normalize: bool = False,
    device: str | torch.device | None = None,
    symmetric: bool | None = None,
    distances: bool = True,
    exact_order: bool = True,
    check_finite: bool = True,
) -> Neighbours:
    """Exact k nearest neighbours of every row of ``x`` (N × D) among the rows of ``x``.

    ``exclude_duplicates`` also skips points at distance 0 from the query (other copies of the same vector), as
    the graph-convexity reference does; they are replaced by the next nearest points. ``metric="ip"`` ranks by
    inner product (largest first), as the platonic-representation mutual-kNN does; ``normalize=True`` L2-normalises
    the rows first (in float64). Ties are broken by the smaller index. ``device`` runs the products there (default:
    the tensor's device, the CPU for numpy input); ``symmetric`` forces the search scheme (default: by size).
    ``distances=False`` skips the float64 distances (``distances`` is then an empty array) — the cheaper call when
    only the lists matter, as for mutual kNN; with ``exact_order=False`` as well, only the *set* of each row's k
    neighbours is guaranteed exact (their order within the row is the fp32 one), which needs the fewest float64
    checks (only rows whose k-th and (k+1)-th candidates are within the rounding bound).

    ``block`` is the rows per GEMM block (default: :func:`block_rows` for the compiled CPU search, else
    :data:`DEFAULT_BLOCK`); it changes only the speed, never the result. ``check_finite=False`` skips the NaN/inf
    check for callers that made it already.
    """
    search = _Search(x, k, metric, exclude_self, exclude_duplicates, margin, block, normalize, device, symmetric,
                     check_finite)
    idx, dist = search.run(distances=distances, exact_order=exact_order)
    return Neighbours(idx.cpu().numpy(), dist.cpu().numpy() if dist is not None else np.empty((0, k)))


def block_rows(n: int) -> int:
    """Rows per GEMM block of the compiled CPU search for N = ``n`` rows.

    With B blocks the search multiplies only the blocks on and above the diagonal, (B + 1) / (2B) of the full
    N × N product, but each off-diagonal product also pays a merge along its columns. Measured on an idle 2-core
    Xeon (the device machine pinned to 2 cores, 13 states × 768 dims, k = 10, interleaved rounds with 0.3 s pauses,
    medians; mutual kNN of the issue-18 benchmark data):

    * N = 1 000: one block 0.222 s, 2 blocks 0.219 s, 3: 0.209 s, 4: 0.217 s, 5: 0.221 s, 8: 0.256 s, the dense
      platonic-rep form 0.487 s; best of 7 with phases timed, one block 0.166 s vs 4 blocks 0.194 s (the column
      merges cost 24 ms, more than the 25 % of the product they save). So up to :data:`ONE_BLOCK_MAX_ROWS` the
      search is one full product — the dense form's GEMM — followed by the compiled row merge.
    * N = 5 000: 3 blocks of ≤ 2 048 rows 2.26 s, 5 blocks of 1 000 rows 1.71 s, 8 of 625 1.98 s (dense form
      10.2 s). So up to :data:`SMALL_N_ROWS` the blocks are ≈ :data:`MID_BLOCK` rows.
    * Above, :data:`DEFAULT_BLOCK` as measured at N = 20 000 (``benchmarks/results/analysis_kernels.md``).

    The block size never changes the result: every fp32 score is within the same rounding bound whatever the
    blocking, near ties are decided in float64, and the lists are kept sorted by (score, index).
    """
    if n <= ONE_BLOCK_MAX_ROWS:
        return max(1, n)
    if n <= SMALL_N_ROWS:
        return -(-n // -(-n // MID_BLOCK))
    return DEFAULT_BLOCK


def subset_rows(n: int, max_rows: int | None, seed: int) -> np.ndarray | None:
    """The sorted rows of a seeded random subset of ``max_rows`` of ``n`` rows, or ``None`` for all of them: the
    one sampling rule of the exact searches that cap their rows (mutual kNN's ``knn_max_rows``, convexity's
    ``max_rows``), whose cost grows faster than N."""
    if max_rows is None or n <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


# ----------------------------------------------------------------------------------------------------- internals


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 products in full fp32 (no TF32) on CUDA, where torch may otherwise round the inputs to 10 bits."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def as_device(x: np.ndarray | torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    """``x`` as a tensor on ``device`` (default: where it is; numpy → CPU), without copying when it is there.
    Read-only arrays (memory-mapped features) are wrapped as they are: the kernels never write to their input."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": never written here
            t = torch.from_numpy(arr) if arr.dtype.kind in "fiub" else torch.as_tensor(arr.astype(np.float64))
    return t if device is None else t.to(torch.device(device))


class _Search:
    def __init__(self, x: np.ndarray | torch.Tensor, k: int, metric: str, exclude_self: bool,
                 exclude_duplicates: bool, margin: int, block: int | None, normalize: bool,
                 device: str | torch.device | None, symmetric: bool | None, check_finite: bool = True) -> None:
        if metric not in ("euclidean", "ip"):
            raise SpeechpruneError(f"unknown kNN metric {metric!r}; use 'euclidean' or 'ip'")
        data = as_device(x, device)
        if data.ndim != 2:
            raise SpeechpruneError(f"kNN needs an N × D matrix, got shape {tuple(data.shape)}")
        if not data.is_floating_point():
            data = data.to(torch.float64)
        n = data.shape[0]
        # CPU: compiled operands and merges (one pass per block side) instead of torch.topk; a forced scheme
        # keeps torch's, as does every other device
        self.compiled = (_kernels.HAVE_NUMBA and data.device.type == "cpu" and symmetric is None
                         and data.dtype in (torch.float32, torch.float64))
        if self.compiled and not data.is_contiguous():
            data = data.contiguous()  # the kernels read rows of a C-ordered array (e.g. not a column-fancy-indexed view)
        if check_finite and not _kernels.finite(data):
            raise SpeechpruneError("features contain NaN or inf values; cannot compute neighbours")
        available = n - 1 if exclude_self else n
        if k < 1 or k > available:
            raise SpeechpruneError(f"k={k} neighbours requested but only {available} other points exist (N={n})")
        if block is None:
            block = block_rows(n) if self.compiled else DEFAULT_BLOCK
        if block < 1 or margin < 0:
            raise SpeechpruneError(f"block must be ≥ 1 and margin ≥ 0, got block={block}, margin={margin}")
        self.data, self.n, self.k, self.metric = data, n, k, metric
        self.exclude_self, self.exclude_duplicates = exclude_self, exclude_duplicates and metric == "euclidean"
        self.block, self.dev = block, data.device
        self.take = min(k + margin + 1, available)  # candidates kept per row (one more than k for the gap check)
        self.symmetric = n > DENSE_MAX_ROWS if symmetric is None else symmetric
        self._prepare(normalize)

    # -- fp32 operands and the error bound ---------------------------------------------------------------------
    def _prepare(self, normalize: bool) -> None:
        """fp32 rows for the GEMM (centred for Euclidean, normalised for ``normalize``), their fp32 squared norms,
        the float64 scaling for the refinement, and each row's score error bound ε."""
        n, d = self.data.shape
        f64 = torch.float64
        self.shift = None
        self.scale = None  # float64 1/‖x‖ per row when normalising
        step = max(1, (1 << 24) // max(d, 1))  # float64 temporaries of ≈ 128 MB at most
        if self.compiled:
            _kernels.set_threads(torch.get_num_threads())  # for every compiled step of this search
            scale, shift = torch.empty(n, dtype=f64), torch.empty(d, dtype=f64)
            self.x32, self.sq = torch.empty((n, d), dtype=torch.float32), torch.empty(n, dtype=torch.float32)
            _kernels.prepare_rows(self.data.numpy(), normalize, self.metric == "euclidean", scale.numpy(),
                                  shift.numpy(), self.x32.numpy(), self.sq.numpy())
            self.scale = scale if normalize else None
            self.shift = shift if self.metric == "euclidean" else None
            self._bound()
            return
        if normalize:  # first: the search sees normalised rows, centred afterwards for Euclidean
            norms = torch.empty(n, dtype=f64, device=self.dev)
            for lo in range(0, n, step):
                norms[lo:lo + step] = torch.linalg.vector_norm(self.data[lo:lo + step].to(f64), dim=1)
            self.scale = 1.0 / norms.clamp_min(1e-12)  # as torch.nn.functional.normalize: zero rows stay zero
        if self.metric == "euclidean":
            total = torch.zeros(d, dtype=f64, device=self.dev)
            for lo in range(0, n, step):
                total += self._rows64(slice(lo, lo + step)).sum(dim=0)
            self.shift = total / n
        x32 = torch.empty((n, d), dtype=torch.float32, device=self.dev)
        for lo in range(0, n, step):
            rows = self._rows64(slice(lo, lo + step))
            x32[lo:lo + step] = rows.to(torch.float32)
        self.x32 = x32
        self.sq = (x32 * x32).sum(dim=1)  # fp32, consistent with the GEMM operands
        self._bound()

    def _bound(self) -> None:
        """Each row's score error bound ε (as ``tol`` = 2ε: comparing two scores) from the fp32 norms."""
        d = self.data.shape[1]
        norm = self.sq.to(torch.float64).sqrt()
        n = self.n
        big = float(norm.max()) if n else 0.0
        gamma = d * _U32 / (1 - d * _U32) + 4 * _U32  # dot product bound + input rounding, with slack
        if self.metric == "euclidean":  # s = ‖y‖² − 2 x·y: both terms err
            eps = gamma * (2 * norm * big + big * big)
        else:
            eps = gamma * norm * big
        self.tol = (2 * eps * 1.0001 + 1e-30).to(torch.float32)  # comparing two scores: twice the bound

    def _rows64(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """Rows in float64 as the search sees them: centred (Euclidean) or normalised (``normalize``)."""
        out = self.data[rows].to(torch.float64)
        if self.scale is not None:
            out = out * self.scale[rows][:, None]
        if self.shift is not None:
            out = out - self.shift
        return out

    # -- candidates ----------------------------------------------------------------------------------------------
    def _scores(self, g: torch.Tensor, cols: slice) -> torch.Tensor:
        """Row scores from a product block ``g = X_rows · X_colsᵀ`` (smaller = nearer); in place."""
        if self.metric == "euclidean":
            return g.mul_(-2.0).add_(self.sq[cols][None, :])
        return g.neg_()

    def _candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices), N × take, ascending by fp32 score."""
        n, take, b = self.n, self.take, self.block
        if self.compiled:
            return self._compiled_candidates()
        if not self.symmetric:
            vals = torch.empty((n, take), dtype=torch.float32, device=self.dev)
            idx = torch.empty((n, take), dtype=torch.int64, device=self.dev)
            for lo in range(0, n, b):
                hi = min(lo + b, n)
                s = self._scores(self.x32[lo:hi] @ self.x32.T, slice(0, n))
                if self.exclude_self:
                    s[torch.arange(hi - lo, device=self.dev), torch.arange(lo, hi, device=self.dev)] = float("inf")
                vals[lo:hi], idx[lo:hi] = torch.topk(s, take, dim=1, largest=False, sorted=True)
            return vals, idx
        vals = torch.full((n, take), float("inf"), dtype=torch.float32, device=self.dev)
        idx = torch.full((n, take), -1, dtype=torch.int64, device=self.dev)
        starts = list(range(0, n, b))
        for i, lo in enumerate(starts):
            hi = min(lo + b, n)
            for lo2 in starts[i:]:
                hi2 = min(lo2 + b, n)
                g = self.x32[lo:hi] @ self.x32[lo2:hi2].T
                if lo2 != lo:  # the column side first: it needs the raw product (rows of block J, scored vs I)
                    gc = g.T.contiguous()
                    self._merge(vals, idx, slice(lo2, hi2), self._scores(gc, slice(lo, hi)), lo)
                s = self._scores(g, slice(lo2, hi2))
                if lo2 == lo and self.exclude_self:
                    s.fill_diagonal_(float("inf"))
                self._merge(vals, idx, slice(lo, hi), s, lo2)
        return vals, idx

    def _compiled_candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The symmetric scheme with the compiled merges of :mod:`speechprune.analysis.knn_kernels` (CPU): each
        product of blocks on and above the diagonal updates the lists of both blocks' rows in one pass, whatever N."""
        n, take, b = self.n, self.take, self.block
        vals = np.full((n, take), np.inf, dtype=np.float32)
        idx = np.full((n, take), -1, dtype=np.int64)
        x32 = self.x32
        sq = self.sq.numpy()
        euclidean = self.metric == "euclidean"
        starts = list(range(0, n, b))
        for i, lo in enumerate(starts):
            hi = min(lo + b, n)
            for lo2 in starts[i:]:
                hi2 = min(lo2 + b, n)
                g = (x32[lo:hi] @ x32[lo2:hi2].T).numpy()
                _kernels.merge_rows(g, sq[lo2:hi2], lo, lo2, vals, idx, euclidean, self.exclude_self and lo2 == lo)
                if lo2 != lo:
                    _kernels.merge_columns(g, sq[lo:hi], lo, lo2, vals, idx, euclidean)
        return torch.from_numpy(vals), torch.from_numpy(idx)

    def _merge(self, vals: torch.Tensor, idx: torch.Tensor, rows: slice, s: torch.Tensor, offset: int) -> None:
        """Merge the top candidates of the score block ``s`` (columns = points ``offset + j``) into ``rows``."""
        t = min(self.take, s.shape[1])
        v, j = torch.topk(s, t, dim=1, largest=False, sorted=False)
        both_v = torch.cat([vals[rows], v], dim=1)
        both_i = torch.cat([idx[rows], j + offset], dim=1)
        best_v, pos = torch.topk(both_v, self.take, dim=1, largest=False, sorted=True)
        vals[rows] = best_v
        idx[rows] = torch.gather(both_i, 1, pos)

    # -- exact answer --------------------------------------------------------------------------------------------
    def run(self, *, distances: bool, exact_order: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad(), exact_fp32(self.dev):
            vals, idx = self._candidates()
            k, take = self.k, self.take
            tol = self.tol[:, None]
            # rows whose fp32 answer might differ from the float64 one
            if distances or not exact_order:  # order from the exact distances below, or not needed: only the set
                unsure = (vals[:, k] - vals[:, k - 1] <= tol[:, 0]) if take > k else torch.zeros(
                    self.n, dtype=torch.bool, device=self.dev)
            else:
                gaps = vals[:, 1:min(k + 1, take)] - vals[:, :min(k, take - 1)]
                unsure = (gaps <= tol).any(dim=1) if gaps.numel() else torch.zeros(
                    self.n, dtype=torch.bool, device=self.dev)
            if self.exclude_duplicates:  # an estimated distance² near 0 may be a duplicate (exactly 0)
                est = vals[:, :min(k + 1, take)] + self.sq[:, None]
                unsure |= (est <= tol).any(dim=1)
            out = idx[:, :k].clone()
            dist = torch.empty((self.n, k), dtype=torch.float64, device=self.dev) if distances else None
            rows = unsure.nonzero().flatten()
            if rows.numel():
                out[rows], exact_rows = self._refine(rows, vals, idx)
                if dist is not None:
                    dist[rows] = exact_rows
            if dist is not None:
                sure = (~unsure).nonzero().flatten()
                if sure.numel():
                    dist[sure] = self._exact(sure, out[sure])
                out, dist = _sort_by(dist, out)
                if self.metric == "euclidean":
                    dist = dist.clamp_min(0.0).sqrt()
            return out, dist

    def _exact(self, rows: torch.Tensor, cand: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
        """float64 scores (distance² or −inner product) of ``rows`` against their candidates ``cand`` (R × C).

        Euclidean: the difference form ``Σ (c − q)²`` (exactly 0 for duplicates, no cancellation); inner product:
        one batched float64 GEMV per chunk on the raw rows, scaled by the float64 inverse norms afterwards."""
        out = torch.empty(cand.shape, dtype=torch.float64, device=self.dev)
        if self.compiled:
            scale = (self.scale if self.scale is not None else torch.ones(self.n, dtype=torch.float64)).numpy()
            cand_np = np.ascontiguousarray(cand.numpy())
            shift = self.shift if self.shift is not None else torch.zeros(self.data.shape[1], dtype=torch.float64)
            _kernels.exact_scores(self.data.numpy(), scale, shift.numpy(), rows.numpy(), cand_np, out.numpy(),
                                  self.metric == "euclidean")
            return out
        width = cand.shape[1]
        step = max(1, chunk // max(1, width * self.data.shape[1]))
        for lo in range(0, rows.numel(), step):
            r = rows[lo:lo + step]
            cr = cand[lo:lo + step]
            if self.metric == "euclidean":
                q = self._rows64(r)[:, None, :]
                c = self._rows64(cr.reshape(-1)).view(r.numel(), width, -1)
                out[lo:lo + step] = ((c - q) ** 2).sum(dim=-1)
            else:
                q = self.data[r].to(torch.float64)
                c = self.data[cr.reshape(-1)].to(torch.float64).view(r.numel(), width, -1)
                dots = torch.bmm(c, q[:, :, None])[:, :, 0]
                if self.scale is not None:
                    dots *= self.scale[r][:, None] * self.scale[cr]
                out[lo:lo + step] = -dots
        return out

    def _refine(self, rows: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float64 answer for ``rows``: rescore their candidates, fall back to all points if needed."""
        k = self.k
        cand = idx[rows]
        exact = self._exact(rows, cand)
        if self.exclude_self:
            exact[cand == rows[:, None]] = float("inf")
        if self.exclude_duplicates:
            exact[exact <= 0.0] = float("inf")
        exact[cand < 0] = float("inf")
        chosen, chosen_d = _sort_by(exact, cand)
        chosen, chosen_d = chosen[:, :k], chosen_d[:, :k]
        complete = self.take >= (self.n - 1 if self.exclude_self else self.n)
        # points outside the list have fp32 score ≥ the last candidate's; their exact score ≥ that − ε
        safe = torch.isfinite(chosen_d).all(dim=1)
        if not complete:
            last = vals[rows, -1].to(torch.float64)
            bound = last - self.tol[rows].to(torch.float64)
            kth = chosen_d[:, -1] - (self.sq[rows].to(torch.float64) if self.metric == "euclidean" else 0.0)
            safe &= kth < bound
        redo = (~safe).nonzero().flatten()
        if redo.numel():
            chosen[redo], chosen_d[redo] = self._full_rows(rows[redo])
        return chosen, chosen_d

    def _full_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` against every point in float64 (many duplicates or near ties beyond the candidate margin).

        Scored by :meth:`_exact`, the same arithmetic as the refined candidate lists: a second float64 formula
        (e.g. the dot of the normalised rows instead of the raw dot times both inverse norms) rounds exact ties
        differently, and which rows end up here depends on the fp32 candidates, i.e. on the block size. Rows go
        in groups (float64 scores of ≤ 128 MB at a time), one compiled call per column chunk: data with many
        duplicate rows send hundreds of rows here, and one parallel call per row stalled under load."""
        n, k = self.n, self.k
        out_i = torch.empty((rows.numel(), k), dtype=torch.int64, device=self.dev)
        out_d = torch.empty((rows.numel(), k), dtype=torch.float64, device=self.dev)
        group = max(1, (1 << 24) // max(1, n))
        step = max(1, (1 << 24) // max(1, self.data.shape[1]))
        for g0 in range(0, rows.numel(), group):
            r = rows[g0:g0 + group]
            d = torch.empty((r.numel(), n), dtype=torch.float64, device=self.dev)
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                cand = torch.arange(lo, hi, dtype=torch.int64, device=self.dev)[None, :].expand(r.numel(), -1)
                d[:, lo:hi] = self._exact(r, cand)
            if self.exclude_self:
                d[torch.arange(r.numel(), device=self.dev), r] = float("inf")
            if self.exclude_duplicates:
                d[d <= 0.0] = float("inf")
            order = torch.argsort(d, dim=1, stable=True)[:, :k]  # stable: equal scores in index order
            best = torch.gather(d, 1, order)
            finite = torch.isfinite(best).all(dim=1)
            if not bool(finite.all()):
                i = int(r[(~finite).nonzero()[0, 0]])
                raise SpeechpruneError(
                    f"point {i} has fewer than k={k} distinct neighbours (too many duplicate feature vectors)"
                )
            out_i[g0:g0 + group], out_d[g0:g0 + group] = order, best
        return out_i, out_d


def _sort_by(score: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (score, index): ties in index order, whatever order the candidates came in."""
    by_index = torch.argsort(idx, dim=1)
    idx = torch.gather(idx, 1, by_index)
    score = torch.gather(score, 1, by_index)
    order = torch.argsort(score, dim=1, stable=True)
    return torch.gather(idx, 1, order), torch.gather(score, 1, order)
