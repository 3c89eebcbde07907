"""Similarity between every pair of layer states: per-row cosine, linear CKA (biased and debiased), mutual kNN.

Rows are clips (pooled features) or frames (``pooling="frames"``); the result is an S × S matrix over the
states, labelled with their state indices (state 0 = input to the first transformer layer, state i = output
of layer i).

Why the implementation looks the way it does (measurements in ``docs/methods.md`` §5):

* **Linear CKA** is computed in its *feature-space* form by :class:`StreamingCKA`: rows are staged in fixed
  chunks with the states side by side (Z), and each chunk is reduced with *triangular block GEMMs* — per state a,
  one product ``Z_aᵀ Z[:, a..]``, i.e. the blocks on and above the diagonal of ZᵀZ that one ``ssyrk`` computes —
  in fp32 by default, each chunk's D × D results added into float64 accumulators (error ≤ 1e-7 against float64,
  measured). Memory grows with D² per pair, never with N², and the N × N Gram form (O(N²) memory, fp32 errors of
  2–5·10⁻³ from centring cancellation) is kept only as the independent reference :func:`cka_gram`. Centring is
  exact: rows are shifted by the column means (so the products see centred data and the float64 mean correction
  ``C − n μ μᵀ`` cancels almost nothing), and the exact correction is applied when the matrix is read.
* **Debiased CKA** uses the unbiased HSIC U-statistic (Song et al. 2012; Nguyen et al. 2021), which the Google
  ``representation_similarity`` notebook also writes in feature space: with centred X, Y, row norms
  ``a_r = ‖x_r‖²``, ``b_r = ‖y_r‖²``::

      n(n−3)·HSIC_u = ‖XᵀY‖²_F − n/(n−2)·Σ a_r b_r + (Σ a)(Σ b)/((n−1)(n−2))

  The row-norm terms are accumulated over batches in the shifted frame and mean-corrected exactly, so both
  biased and debiased CKA come from one pass over the data.
* **Mutual kNN** (platonic-representation alignment) computes each state's neighbour lists once with the
  exact blocked :func:`speechprune.analysis.knn.knn` (fp32 GEMM blocks — only those on and above the diagonal for
  large N, each product serving the rows of both blocks — top-k, and a float64 check of near ties) and then
  intersects lists for every pair; the pairs are nearly free. ``device="cuda"`` runs the searches on the GPU.
* **Shuffled-pairing baseline**: re-pairing rows at random destroys the row correspondence but keeps each
  state's marginal distribution, so it gives the similarity two *unrelated* representations with these
  statistics would get (e.g. mutual kNN ≈ k/(N−1), biased CKA > 0 when N is not ≫ D).

Undefined values: a state with zero variance (all rows equal) has no CKA with anything, and a row with zero
norm has no cosine. Those entries are **NaN and a** :class:`SimilarityWarning` **is issued** (the rest of the
matrix is still valid); NaN/inf *features* are an error (:class:`~speechprune.errors.SpeechpruneError`).

Why one module of over 400 lines: the three measures share the row staging, the finiteness checks, the
state bookkeeping of :class:`SimilarityMatrix` and one pass over the data (:func:`similarity_matrices` feeds
CKA and collects the kNN views together); the kernels themselves already live apart
(:mod:`speechprune.analysis.knn`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from speechprune.analysis.knn import as_device, exact_fp32, knn, subset_rows
from speechprune.analysis.knn_kernels import column_sums, finite, list_hits
from speechprune.errors import LayerIndexError, SpeechpruneError
from speechprune.utils.io import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from speechprune.features.store import LayerFeatures

METRICS = ("cosine", "cka", "cka_debiased", "mutual_knn")
DEFAULT_BATCH_ROWS = 4096
# Rows per CKA GEMM chunk: 4 096 × ΣD fp32 staging (164 MB for 13 × 768) — long enough for the GEMMs to run at the
# CPU's peak and to make the float64 accumulation of the D × D results negligible (benchmarks/analysis_similarity.py).
DEFAULT_CHUNK_ROWS = 4096
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64, 128)
# A state counts as constant when its centred total variance is below this fraction of its raw second moment.
# float64 shifting leaves ~1e-32 of a truly constant state; fp32 features cannot resolve anything below ~1e-14.
_CONSTANT_RTOL = 1e-20

ArrayLike = np.ndarray | torch.Tensor
StatesLike = ArrayLike | Sequence[ArrayLike]


class SimilarityWarning(UserWarning):
    """A similarity is undefined for some states (constant state, zero-norm rows); those entries are NaN."""


# --------------------------------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SimilarityMatrix:
    """An S × S similarity matrix whose rows and columns are the state indices in ``states``.

    ``params`` records how it was computed (rows, dimension, pooling, k, precision, ...), so a saved matrix can
    be interpreted without the code that made it.
    """

    values: np.ndarray
    states: list[int]
    metric: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.states = [int(s) for s in self.states]
        n = len(self.states)
        if self.values.shape != (n, n):
            raise SpeechpruneError(f"similarity values have shape {self.values.shape}, expected {n} × {n} states")

    def value(self, a: int, b: int) -> float:
        """Similarity between state indices ``a`` and ``b`` (not matrix positions)."""
        return float(self.values[self._pos(a), self._pos(b)])

    def _pos(self, state: int) -> int:
        if state not in self.states:
            raise LayerIndexError(f"state {state} is not in this matrix; states: {self.states}")
        return self.states.index(state)

    def to_csv(self, path: str | Path) -> Path:
        """Write a labelled CSV: header ``state,<s0>,<s1>,...``, then one row per state starting with its index.

        Full float64 precision (``repr``) so the CSV round-trips; NaN is written as ``nan``.
        """
        lines = ["state," + ",".join(str(s) for s in self.states)]
        for s, row in zip(self.states, self.values, strict=True):
            lines.append(f"{s}," + ",".join(repr(float(v)) for v in row))
        write_text_atomic(path, "\n".join(lines) + "\n")
        return Path(path)

    def to_npy(self, path: str | Path) -> Path:
        """Write the raw S × S float64 values (``np.load(path)`` reads them; no pickle). Labels are in the CSV."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.values, allow_pickle=False)
        return Path(path)

    @classmethod
    def from_csv(cls, path: str | Path, metric: str = "") -> SimilarityMatrix:
        """Read a CSV written by :meth:`to_csv`."""
        lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
        header = lines[0].split(",")
        if header[0] != "state":
            raise SpeechpruneError(f"{path}: not a similarity CSV (first header cell is {header[0]!r})")
        states = [int(h) for h in header[1:]]
        rows = [line.split(",") for line in lines[1:]]
        if [int(r[0]) for r in rows] != states:
            raise SpeechpruneError(f"{path}: row labels do not match the column labels {states}")
        return cls(np.array([[float(v) for v in r[1:]] for r in rows]), states, metric or Path(path).stem)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "states": self.states, "values": self.values.tolist(), "params": self.params}


# --------------------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------------------


def _state_list(states: StatesLike) -> list[np.ndarray | torch.Tensor]:
    """Views of the S states (no copies): an S × N × D array/tensor or a sequence of N × D arrays."""
    if hasattr(states, "states") and hasattr(states, "layers"):  # a LayerFeatures
        states = states.states  # type: ignore[union-attr]
    if isinstance(states, np.ndarray | torch.Tensor):
        if states.ndim != 3:
            raise SpeechpruneError(f"states must be S × N × D, got shape {tuple(states.shape)}")
        out = [states[s] for s in range(states.shape[0])]
    else:
        out = [x if isinstance(x, torch.Tensor) else np.asarray(x) for x in states]
    if not out:
        raise SpeechpruneError("no states given")
    for s, x in enumerate(out):
        if x.ndim != 2:
            raise SpeechpruneError(f"state at position {s} must be an N × D matrix, got shape {tuple(x.shape)}")
    n = {int(x.shape[0]) for x in out}
    if len(n) != 1:
        raise SpeechpruneError(f"all states need the same number of rows (the same clips/frames), got {sorted(n)}")
    if out[0].shape[0] < 2:
        raise SpeechpruneError(f"similarity needs at least 2 rows, got {out[0].shape[0]}")
    return out


def _labels(labels: Sequence[int] | None, n_states: int) -> list[int]:
    if labels is None:
        return list(range(n_states))
    labels = [int(v) for v in labels]
    if len(labels) != n_states:
        raise SpeechpruneError(f"{len(labels)} state labels given for {n_states} states")
    return labels


def _rows64(x: np.ndarray | torch.Tensor, rows: slice | np.ndarray, label: int) -> torch.Tensor:
    """Rows of one state as a float64 tensor, refusing NaN/inf with the state named."""
    part = x[rows]
    t = part.to(torch.float64) if isinstance(part, torch.Tensor) else torch.from_numpy(np.asarray(part, np.float64))
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0])
        where = rows.start + bad if isinstance(rows, slice) else int(np.asarray(rows)[bad])
        raise SpeechpruneError(f"state {label} has NaN or inf features (first at row {where}); clean the features "
                               "(e.g. re-extract) before computing similarities")
    return t


def _tensor(x: ArrayLike) -> torch.Tensor:
    """A tensor view of ``x`` (no copy; numpy → CPU)."""
    return as_device(x, None)


def _check_finite(states: Sequence[np.ndarray | torch.Tensor], labels: Sequence[int], chunk: int = 65536) -> None:
    """Refuse NaN/inf features, naming the state and the first bad row (checked in the data's own dtype)."""
    for x, label in zip(states, labels, strict=True):
        for start in range(0, int(x.shape[0]), chunk):
            if not finite(x[start:start + chunk]):
                _rows64(x, slice(start, start + chunk), label)


def _warn_undefined(metric: str, labels: Sequence[int], bad: Iterable[int], why: str) -> None:
    bad = sorted(set(bad))
    if bad:
        names = ", ".join(str(labels[b]) for b in bad)
        warnings.warn(f"{metric} is undefined for state(s) {names} ({why}); their entries are NaN",
                      SimilarityWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------------------
# Cosine
# --------------------------------------------------------------------------------------------------------------


def cosine_matrix(
    states: StatesLike,
    *,
    groups: np.ndarray | None = None,
    batch_rows: int = 1024,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-row cosine between every pair of states, averaged over rows (S × S, float64).

    ``groups`` (e.g. ``feats.item_index`` of frame-level features) concatenates the rows of each group into one
    vector before taking the cosine, i.e. ``cos(vec H_i, vec H_j)`` per clip, which is what the reference
    implementation does on flattened frames; the mean is then over groups. Rows with zero norm make the cosine
    undefined: NaN plus a :class:`SimilarityWarning`.
    """
    xs = _state_list(states)
    labels = _labels(labels, len(xs))
    n = int(xs[0].shape[0])
    if groups is None:
        gid, n_groups = torch.arange(n), n
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise SpeechpruneError(f"groups must have one entry per row ({n}), got shape {g.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        gid, n_groups = torch.from_numpy(inverse.astype(np.int64)), int(inverse.max()) + 1
    s = len(xs)
    gram = torch.zeros(n_groups, s, s, dtype=torch.float64)  # per group: Σ over its rows of x_a · x_b
    for start in range(0, n, batch_rows):
        rows = slice(start, min(start + batch_rows, n))
        block = torch.stack([_rows64(x, rows, lab) for x, lab in zip(xs, labels, strict=True)], dim=1)  # B×S×D
        gram.index_add_(0, gid[rows], torch.bmm(block, block.transpose(1, 2)))
    return _cosine_from_gram(gram, labels)


def _cosine_from_gram(gram: torch.Tensor, labels: Sequence[int]) -> np.ndarray:
    sq = torch.diagonal(gram, dim1=1, dim2=2)  # G × S squared norms
    zero = sq <= 0
    _warn_undefined("cosine", labels, zero.any(dim=0).nonzero().flatten().tolist(), "rows with zero norm")
    norm = torch.sqrt(sq.clamp_min(torch.finfo(torch.float64).tiny))
    cos = gram / (norm[:, :, None] * norm[:, None, :])
    cos[zero[:, :, None].expand_as(cos) | zero[:, None, :].expand_as(cos)] = float("nan")
    out = cos.mean(dim=0).numpy()
    return _symmetrise(out)


def _symmetrise(m: np.ndarray) -> np.ndarray:
    """Exact symmetry (float round-off differs between (a,b) and (b,a) products) without touching NaNs."""
    return (m + m.T) / 2.0


# --------------------------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------------------------


class StreamingCKA:
    """Linear CKA (biased and debiased) between pairs of states, accumulated over row chunks in float64.

    Feed row batches with :meth:`update` (a sequence of ``B × D_s`` arrays, one per state, or an ``S × B × D``
    array; the same rows of every state), then read :meth:`cka` / :meth:`matrix`. Memory is one ``D_a × D_b``
    float64 accumulator per pair (≈ 4.7 MB at D = 768; 91 pairs for 13 states ≈ 430 MB) plus one staging chunk of
    ``chunk_rows × ΣD`` values, independent of N.

    **How.** Incoming rows are copied, shifted, into a staging chunk of exactly ``chunk_rows`` rows laid side by
    side (``Z``, ``chunk_rows × ΣD``); a full chunk is reduced with *triangular block GEMMs*: for every state a,
    ONE product ``Z_aᵀ Z[:, a..c]`` gives its cross-products with all partners c ≥ a that are adjacent in Z (the
    blocks on and above the diagonal of ZᵀZ, what one ``ssyrk`` of Z computes; 13 GEMMs per chunk for 13 states).
    ``precision="float32"`` runs these GEMMs in fp32 — the GEMM rate of the CPU, 2× float64's — and adds each
    chunk's D × D results into the float64 accumulators, so rounding grows only within a chunk (measured error of
    CKA ≤ 1e-7 against float64 at N = 1 000–20 000, ``benchmarks/results/analysis_similarity.md``). Because chunks
    have a fixed size counted from the first row, the result does not depend on how :meth:`update` was batched.

    **Centring** is exact: rows are shifted by ``shift`` (one vector per state, laid out like Z; default: the mean
    of the first :meth:`update` batch) so the products see nearly centred data, and the float64 mean correction
    ``C − n μ μᵀ`` is applied when the matrix is read (it cancels almost nothing). :func:`cka_matrices` passes the
    exact column means, so its results are independent of the batching in both precisions.

    ``pairs`` restricts the accumulated pairs (positions ``(a, b)``); self-pairs are always added because they
    normalise CKA. ``device`` holds the chunk and the accumulators there (``"cuda"``: GEMMs on the GPU, TF32 off).
    """

    def __init__(
        self,
        n_states: int,
        *,
        pairs: Iterable[tuple[int, int]] | None = None,
        precision: str = "float64",
        labels: Sequence[int] | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        shift: Sequence[ArrayLike] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if precision not in ("float64", "float32"):
            raise SpeechpruneError(f"precision must be 'float64' or 'float32', got {precision!r}")
        if n_states < 1:
            raise SpeechpruneError("StreamingCKA needs at least one state")
        if chunk_rows < 1:
            raise SpeechpruneError(f"chunk_rows must be ≥ 1, got {chunk_rows}")
        self.n_states = n_states
        self.precision = precision
        self.labels = _labels(labels, n_states)
        self.chunk_rows = int(chunk_rows)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = torch.float64 if precision == "float64" else torch.float32
        wanted = ({(a, b) for a in range(n_states) for b in range(a, n_states)} if pairs is None
                  else {(min(a, b), max(a, b)) for a, b in pairs})
        for a, b in wanted:
            if not (0 <= a < n_states and 0 <= b < n_states):
                raise SpeechpruneError(f"pair ({a}, {b}) is outside the {n_states} states")
        wanted |= {(a, a) for a in range(n_states)}
        self.pairs = sorted(wanted)
        self._runs = _partner_runs(self.pairs, n_states)
        self._given_shift = None if shift is None else [torch.as_tensor(np.asarray(v), dtype=torch.float64).ravel()
                                                        for v in shift]
        if self._given_shift is not None and len(self._given_shift) != n_states:
            raise SpeechpruneError(f"shift has {len(self._given_shift)} vectors for {n_states} states")
        self.n = 0  # rows reduced into the accumulators
        self._dims: list[int] = []
        self._offsets: list[int] = []
        self._shift = torch.empty(0, dtype=torch.float64)  # ΣD: the shift, per state
        self._sum = torch.empty(0, dtype=torch.float64)  # ΣD: Σ_r x_r (shifted frame)
        self._pq = torch.zeros(n_states, n_states, dtype=torch.float64)  # Σ_r ‖x_a,r‖² ‖x_b,r‖²
        self._py = torch.empty(0, dtype=torch.float64)  # S × ΣD: Σ_r ‖x_a,r‖² x_c,r
        self._cross: dict[tuple[int, int, int], torch.Tensor] = {}  # (a, c0, c1) → Σ_r x_a,rᵀ [x_c0..x_c1],r
        self._stage = torch.empty(0)  # chunk_rows × ΣD staging chunk (compute dtype, shifted)
        self._product_buf = np.empty(0, dtype=np.float32)  # fp32 block products on the CPU (see _host_product)
        self._filled = 0

    @property
    def n_rows(self) -> int:
        return self.n + self._filled

    def update(self, batch: Sequence[ArrayLike] | ArrayLike, *, check_finite: bool = True) -> None:
        """Add the same rows of every state (``B × D_s`` each).

        ``check_finite=False`` skips the NaN/inf scan, for callers that already scanned these rows (
        :func:`cka_matrices` does while computing the column means); non-finite rows then give NaN results."""
        xs = [batch[s] for s in range(len(batch))] if not isinstance(batch, Sequence) else list(batch)
        if len(xs) != self.n_states:
            raise SpeechpruneError(f"batch has {len(xs)} states, expected {self.n_states}")
        rows = {int(x.shape[0]) for x in xs}
        if len(rows) != 1 or any(x.ndim != 2 for x in xs):
            raise SpeechpruneError("every state in a batch must be a B × D matrix with the same B")
        b = rows.pop()
        if b == 0:
            return
        if not self._dims:
            self._init([int(x.shape[1]) for x in xs], xs)
        elif [int(x.shape[1]) for x in xs] != self._dims:
            raise SpeechpruneError(f"feature dimensions changed between batches (expected {self._dims})")
        ts = [_tensor(x) for x in xs]
        for s, t in enumerate(ts):
            if check_finite and not finite(t):
                _rows64(xs[s], slice(0, b), self.labels[s])  # raises, naming the state and the row
        done = 0
        while done < b:
            take = min(b - done, self.chunk_rows - self._filled)
            dst = self._stage[self._filled:self._filled + take]
            for s, t in enumerate(ts):
                o, d = self._offsets[s], self._dims[s]
                part = t[done:done + take].to(self.device)
                shift = self._shift_c[o:o + d]
                if part.dtype == torch.float64 or self._dtype == torch.float64:
                    dst[:, o:o + d].copy_(part.to(torch.float64) - self._shift[o:o + d].to(self.device))
                else:  # fp32 data, fp32 products: subtract in fp32 (exact for nearby values; the shift used is
                    torch.sub(part.to(self._dtype), shift, out=dst[:, o:o + d])  # shift_c, consistently)
            self._filled += take
            done += take
            if self._filled == self.chunk_rows:
                self._flush()

    def _init(self, dims: list[int], xs: Sequence[ArrayLike]) -> None:
        self._dims = dims
        self._offsets = [0, *np.cumsum(dims)[:-1].tolist()]
        total = sum(dims)
        dev, f64 = self.device, torch.float64
        if self._given_shift is not None:
            if [int(v.numel()) for v in self._given_shift] != dims:
                raise SpeechpruneError(f"shift dimensions {[int(v.numel()) for v in self._given_shift]} do not "
                                       f"match the states' {dims}")
            shift = torch.cat(self._given_shift)
        else:  # the first batch's mean (in float64)
            shift = torch.cat([_tensor(x).to(f64).mean(dim=0) for x in xs])
        if not bool(torch.isfinite(shift).all()):
            for s, x in enumerate(xs):
                _rows64(x, slice(0, int(x.shape[0])), self.labels[s])
        # the shift actually subtracted, in the compute dtype; the float64 statistics are all relative to it
        self._shift_c = shift.to(dev).to(self._dtype)
        self._shift = self._shift_c.to(f64).cpu()
        self._sum = torch.zeros(total, dtype=f64, device=dev)
        self._pq = torch.zeros(self.n_states, self.n_states, dtype=f64, device=dev)
        self._py = torch.zeros(self.n_states, total, dtype=f64, device=dev)
        for a, c0, c1 in self._runs:
            width = self._offsets[c1] + dims[c1] - self._offsets[c0]
            self._cross[(a, c0, c1)] = torch.zeros(dims[a], width, dtype=f64, device=dev)
        self._stage = torch.empty(self.chunk_rows, total, dtype=self._dtype, device=dev)

    def _flush(self) -> None:
        """Reduce the staged rows into the float64 accumulators (triangular block GEMMs)."""
        r = self._filled
        if r == 0:
            return
        z = self._stage[:r]
        f64 = torch.float64
        with torch.no_grad(), exact_fp32(self.device):
            p = self._row_norms2(z)  # r × S in the compute dtype
            for lo in range(0, r, 256):  # float64 sums of 256-row slices: a float64 copy of z would be 327 MB
                self._sum += z[lo:lo + 256].sum(dim=0, dtype=f64)
            p64 = p.to(f64)
            self._pq += p64.T @ p64
            self._py += (p.T @ z).to(f64)
        self._reduce_products(z)
        self.n += r
        self._filled = 0

    def _reduce_products(self, z: torch.Tensor) -> None:
        """Add the chunk's triangular block products into the float64 accumulators (one GEMM per run): fp32 on the
        CPU through numpy's BLAS (:meth:`_host_product`), torch's otherwise."""
        host32 = self.device.type == "cpu" and self._dtype == torch.float32
        zn = z.numpy() if host32 else None
        # numpy's BLAS gets torch's thread count, so torch.set_num_threads(1) still means one core
        blas = threadpool_limits(torch.get_num_threads(), user_api="blas") if host32 else nullcontext()
        with blas, torch.no_grad(), exact_fp32(self.device):
            for (a, c0, c1), acc in self._cross.items():
                cols_a = slice(self._offsets[a], self._offsets[a] + self._dims[a])
                cols_r = slice(self._offsets[c0], self._offsets[c1] + self._dims[c1])
                if self._dtype == torch.float64:
                    acc.addmm_(z[:, cols_a].T, z[:, cols_r])
                elif zn is not None:  # numpy's add too: torch's threads would fight OpenBLAS's spinning ones
                    acc_n = acc.numpy()
                    np.add(acc_n, self._host_product(zn[:, cols_a], zn[:, cols_r]), out=acc_n)
                else:
                    acc.add_(z[:, cols_a].T @ z[:, cols_r])  # fp32 product, float64 sum

    def _host_product(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """``leftᵀ right`` in fp32 on the CPU through numpy's BLAS (OpenBLAS) into a reused buffer.

        Why not torch: on this AMD CPU torch's MKL sgemm ran these strided products 1.13× slower than OpenBLAS
        (13 products of a 4 096 × 9 984 chunk: 2.57 s against 2.30 s, the same as one ``ssyrk`` of the chunk,
        2.26 s), and the products are ~85 % of CKA's time. Both read the strided column blocks of the chunk in
        place (no copies)."""
        size = left.shape[1] * right.shape[1]
        if self._product_buf.size < size:
            self._product_buf = np.empty(size, dtype=np.float32)
        out = self._product_buf[:size].reshape(left.shape[1], right.shape[1])
        return np.matmul(left.T, right, out=out)

    def _row_norms2(self, z: torch.Tensor) -> torch.Tensor:
        """Squared row norms per state (r × S), reduced without a chunk-sized temporary."""
        if len(set(self._dims)) == 1:
            return torch.linalg.vector_norm(z.view(z.shape[0], self.n_states, self._dims[0]), dim=2).square_()
        return torch.stack([torch.linalg.vector_norm(z[:, o:o + d], dim=1).square_()
                            for o, d in zip(self._offsets, self._dims, strict=True)], 1)

    def _block(self, vec: Any, s: int) -> Any:
        """State s's slice of a vector laid out like Z (numpy or torch)."""
        return vec[..., self._offsets[s]:self._offsets[s] + self._dims[s]]

    def _host(self) -> None:
        """Reduce any staged rows and bring the accumulators to the CPU for reading."""
        self._flush()
        if self.device.type != "cpu":
            self._sum, self._pq, self._py = self._sum.cpu(), self._pq.cpu(), self._py.cpu()
            self._cross = {key: acc.cpu() for key, acc in self._cross.items()}
            self.device = torch.device("cpu")
            self._shift_c = self._shift_c.cpu()
            self._stage = self._stage.cpu()

    # -- reading ---------------------------------------------------------------------------------------------
    # Everything below works on the accumulated float64 statistics in numpy, vectorised per run: reading a
    # 13 × 13 matrix is ~20 array operations per run, not hundreds of tiny threaded torch calls.

    def hsic_matrix(self, *, debiased: bool = False) -> np.ndarray:
        """S × S unnormalised HSIC numerators: ‖X̃ᵀỸ‖²_F (biased) or n(n−3)·HSIC_u (debiased); NaN for pairs
        that were not accumulated. X̃ = X − mean (the centring is exact, see the module docstring)."""
        self._host()
        if self.n == 0:
            raise SpeechpruneError("no rows were added yet")
        self._check_rows(debiased)
        n = float(self.n)
        mu = self._sum.numpy() / n
        sumsq = self._self_sumsq()
        out = np.full((self.n_states, self.n_states), math.nan)
        for (a, c0, c1), acc_t in self._cross.items():
            acc = acc_t.numpy()
            cs = list(range(c0, c1 + 1))
            lo, hi = self._offsets[c0], self._offsets[c1] + self._dims[c1]
            starts = [self._offsets[c] - lo for c in cs]
            mu_a, mu_r = self._block(mu, a), mu[lo:hi]
            # column sums of (acc − n μ_a μ_rᵀ)², expanded so no D × W temporary is made; the terms are of the
            # same order (the shifted frame keeps n μ_a μ_rᵀ small), so nothing cancels catastrophically
            mu_acc = mu_a @ acc
            colsq = (np.einsum("ij,ij->j", acc, acc) - 2 * n * mu_r * mu_acc
                     + (n * n) * float(mu_a @ mu_a) * mu_r * mu_r)
            vals = np.add.reduceat(colsq, starts)
            if debiased:
                m_a, m_c = float(mu_a @ mu_a), np.add.reduceat(mu_r * mu_r, starts)
                py = self._py.numpy()
                pu = (np.add.reduceat(py[a, lo:hi] * mu_r, starts)
                      + py[c0:c1 + 1, self._offsets[a]:self._offsets[a] + self._dims[a]] @ mu_a)
                uu = np.add.reduceat(mu_acc * mu_r, starts)
                # Σ_r ‖x_a,r − μ_a‖² ‖x_c,r − μ_c‖², expanded in accumulated sums (shifted frame: no cancellation)
                sum_ab = (self._pq.numpy()[a, c0:c1 + 1] - 2 * pu + m_c * sumsq[a] + m_a * sumsq[c0:c1 + 1]
                          + 4 * uu - 3 * n * m_a * m_c)
                trace_a, trace_c = sumsq[a] - n * m_a, sumsq[c0:c1 + 1] - n * m_c
                vals = vals - n / (n - 2) * sum_ab + trace_a * trace_c / ((n - 1) * (n - 2))
            out[a, cs] = vals
            out[cs, a] = vals
        return out

    def hsic(self, a: int, b: int, *, debiased: bool = False) -> float:
        """One entry of :meth:`hsic_matrix`."""
        value = float(self.hsic_matrix(debiased=debiased)[a, b])
        if math.isnan(value):
            raise SpeechpruneError(f"pair ({a}, {b}) was not accumulated")
        return value

    def _check_rows(self, debiased: bool) -> None:
        if debiased and self.n <= 3:
            raise SpeechpruneError(
                f"debiased CKA needs more than 3 rows (its U-statistic divides by n−3), got {self.n}")
        if self.n < 2:
            raise SpeechpruneError(f"CKA needs at least 2 rows, got {self.n}")

    def _self_sumsq(self) -> np.ndarray:
        """Σ_r ‖x_a,r‖² per state in the shifted frame (the trace of each state's self cross-product)."""
        out = np.empty(self.n_states)
        for (a, c0, _), acc in self._cross.items():
            if c0 == a:
                out[a] = float(np.trace(acc.numpy()[:, :self._dims[a]]))
        return out

    def constant_states(self) -> list[int]:
        """Positions whose rows are all equal (zero variance): CKA with them is undefined."""
        self._host()
        n = float(self.n)
        mu, shift = self._sum.numpy() / n, self._shift.numpy()
        sumsq = self._self_sumsq()
        out = []
        for a in range(self.n_states):
            m = self._block(mu, a)
            trace = sumsq[a] - n * float(m @ m)
            raw = sumsq[a] + n * float(self._block(shift, a) @ self._block(shift, a))
            if trace <= 0 or trace <= _CONSTANT_RTOL * raw:
                out.append(a)
        return out

    def cka(self, a: int, b: int, *, debiased: bool = False) -> float:
        """CKA between positions a and b; NaN (and a warning) when a state is constant or, for debiased CKA,
        when a state's unbiased HSIC with itself is not positive (possible for tiny or degenerate samples)."""
        return float(self._cka_values([(a, b)], debiased)[0])

    def _cka_values(self, pairs: Sequence[tuple[int, int]], debiased: bool) -> np.ndarray:
        hs = self.hsic_matrix(debiased=debiased)
        const = set(self.constant_states())
        diag = np.diag(hs)
        used = {p for pair in pairs for p in pair}
        bad_norm = {a for a in used - const if not diag[a] > 0}
        _warn_undefined("CKA", self.labels, const & used, "zero variance: all rows are equal")
        _warn_undefined("debiased CKA" if debiased else "CKA", self.labels, bad_norm,
                        "unbiased HSIC with itself ≤ 0, too few or degenerate rows")
        out = np.empty(len(pairs))
        for i, (a, b) in enumerate(pairs):
            if math.isnan(hs[a, b]):
                raise SpeechpruneError(f"pair ({a}, {b}) was not accumulated")
            if a in const or b in const or a in bad_norm or b in bad_norm:
                out[i] = math.nan
            elif a == b:
                out[i] = 1.0
            else:
                out[i] = hs[a, b] / math.sqrt(diag[a] * diag[b])
        return out

    def matrix(self, *, debiased: bool = False) -> np.ndarray:
        """S × S CKA over the accumulated pairs (NaN for pairs not accumulated); the diagonal is 1 except for
        undefined states."""
        out = np.full((self.n_states, self.n_states), math.nan)
        vals = self._cka_values(self.pairs, debiased)
        for (a, b), v in zip(self.pairs, vals, strict=True):
            out[a, b] = out[b, a] = v
        return out


def _partner_runs(pairs: Sequence[tuple[int, int]], n_states: int) -> list[tuple[int, int, int]]:
    """Group pairs (a, c ≥ a) into runs (a, c0, c1) of consecutive partners: one GEMM per run and batch."""
    runs = []
    for a in range(n_states):
        partners = sorted(c for pa, c in pairs if pa == a)
        start = prev = partners[0]
        for c in partners[1:]:
            if c != prev + 1:
                runs.append((a, start, prev))
                start = c
            prev = c
        runs.append((a, start, prev))
    return runs


def _feed(acc: StreamingCKA, xs: Sequence[np.ndarray | torch.Tensor], views: Sequence[tuple[int, np.ndarray | None]],
          batch_rows: int, *, check_finite: bool = True) -> None:
    """Feed row batches of ``views`` (state position, optional row permutation) into ``acc``; ``check_finite=False``
    when the rows were already scanned (by :func:`_column_means`)."""
    if batch_rows < 1:
        raise SpeechpruneError(f"batch_rows must be ≥ 1, got {batch_rows}")
    n = int(xs[0].shape[0])
    for start in range(0, n, batch_rows):
        stop = min(start + batch_rows, n)
        acc.update([xs[s][start:stop] if perm is None else _gather(xs[s], perm[start:stop]) for s, perm in views],
                   check_finite=check_finite)


def _gather(x: np.ndarray | torch.Tensor, idx: np.ndarray) -> np.ndarray | torch.Tensor:
    return x[torch.from_numpy(idx)] if isinstance(x, torch.Tensor) else x[idx]


def _column_means(xs: Sequence[np.ndarray | torch.Tensor], labels: Sequence[int],
                  chunk: int = 8192) -> list[torch.Tensor]:
    """Each state's float64 column means, in one streaming pass that also refuses NaN/inf (state named)."""
    out = []
    for x, label in zip(xs, labels, strict=True):
        n = int(x.shape[0])
        total = torch.zeros(int(x.shape[1]), dtype=torch.float64)
        for start in range(0, n, chunk):
            t = _tensor(x[start:start + chunk])
            if not finite(t):
                _rows64(x, slice(start, start + chunk), label)  # raises with the row
            total += column_sums(t)
        out.append(total / max(n, 1))
    return out


def cka_matrix(
    states: StatesLike,
    *,
    debiased: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    precision: str = "float32",
    labels: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """S × S linear CKA between all states (feature-space form, streamed over ``batch_rows`` rows).

    Debiased CKA needs N > 3 rows (error otherwise). A constant state gives NaN entries and a warning.
    ``precision`` and ``device`` as in :func:`cka_matrices`.
    """
    return cka_matrices(states, debiased=(debiased,), batch_rows=batch_rows, precision=precision,
                        labels=labels, device=device)[debiased]


def cka_matrices(
    states: StatesLike,
    *,
    debiased: Sequence[bool] = (False, True),
    batch_rows: int = DEFAULT_BATCH_ROWS,
    precision: str = "float32",
    labels: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> dict[bool, np.ndarray]:
    """Biased and/or debiased CKA matrices from ONE pass over the rows: ``{False: biased, True: debiased}``.

    Both come from the same accumulated statistics, so asking for both costs one pass (plus a cheap pass for the
    column means, which makes the centring exact and the result independent of ``batch_rows``).
    ``precision="float32"`` (default) runs the block GEMMs in fp32 and accumulates their D × D results in float64
    (CKA within 1e-7 of float64 in ``benchmarks/results/analysis_similarity.md``, ≈ 2× faster); ``"float64"`` is the
    exact reference. ``device="cuda"`` runs the GEMMs on the GPU.
    """
    xs = _state_list(states)
    labels = _labels(labels, len(xs))
    if any(debiased) and int(xs[0].shape[0]) <= 3:
        raise SpeechpruneError(f"debiased CKA needs more than 3 rows (its U-statistic divides by n−3), "
                               f"got {int(xs[0].shape[0])}")
    means = _column_means(xs, labels)
    acc = StreamingCKA(len(xs), precision=precision, labels=labels, shift=means, device=device)
    _feed(acc, xs, [(s, None) for s in range(len(xs))], batch_rows, check_finite=False)  # scanned by the means
    return {bool(d): acc.matrix(debiased=bool(d)) for d in debiased}


def linear_cka(x: ArrayLike, y: ArrayLike, *, debiased: bool = False, precision: str = "float64",
               device: str | torch.device | None = None) -> float:
    """Linear CKA between two N × D_x and N × D_y representations (feature-space form; float64 by default)."""
    acc = StreamingCKA(2, precision=precision, device=device)
    acc.update([x, y])
    return acc.cka(0, 1, debiased=debiased)


def cka_gram(x: ArrayLike, y: ArrayLike, *, debiased: bool = False) -> float:
    """Reference linear CKA from N × N Gram matrices in float64 (O(N²) memory: tests and small N only).

    Follows the Google ``representation_similarity`` notebook: biased HSIC with H K H centring; debiased with
    the U-centring of Székely & Rizzo (2014), which gives the unbiased HSIC of Song et al. Independent of the
    streaming code on purpose, so the two can check each other.
    """
    xa = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    ya = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[0] != ya.shape[0]:
        raise SpeechpruneError(f"cka_gram needs two N × D matrices with the same N, got {xa.shape} and {ya.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise SpeechpruneError("features contain NaN or inf values")
    n = xa.shape[0]
    if debiased and n <= 3:
        raise SpeechpruneError(f"debiased CKA needs more than 3 rows (its U-statistic divides by n−3), got {n}")
    k = _center_gram(xa @ xa.T, debiased)
    lg = _center_gram(ya @ ya.T, debiased)
    nx, ny = np.linalg.norm(k), np.linalg.norm(lg)
    if nx == 0 or ny == 0:
        warnings.warn("CKA is undefined for a constant representation; returning NaN", SimilarityWarning,
                      stacklevel=2)
        return math.nan
    return float(k.ravel() @ lg.ravel() / (nx * ny))


def _center_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = gram.mean(axis=0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


# --------------------------------------------------------------------------------------------------------------
# Mutual kNN
# --------------------------------------------------------------------------------------------------------------


def neighbour_lists(
    states: StatesLike,
    k: int,
    *,
    metric: str = "ip",
    normalize: bool = True,
    labels: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> list[np.ndarray]:
    """Each state's N × k neighbour indices (closest first, self excluded, ties by index), computed once per state.

    ``normalize=True`` L2-normalises rows first, as platonic-rep's ``compute_score`` does by default; with the
    inner-product metric that ranks neighbours by cosine and avoids high-norm "hub" rows. The search is
    :func:`speechprune.analysis.knn.knn`: fp32 GEMM blocks (only those on and above the diagonal for large N, each
    product serving both blocks' rows), top-k, and a float64 check of near ties, so the lists equal a float64
    computation's. ``device="cuda"`` runs it on the GPU.
    """
    return _lists(states, k, metric, normalize, labels, device, exact_order=True)


def _lists(states: StatesLike, k: int, metric: str, normalize: bool, labels: Sequence[int] | None,
           device: str | torch.device | None, *, exact_order: bool) -> list[np.ndarray]:
    """:func:`neighbour_lists`; ``exact_order=False`` guarantees only each row's *set* of k neighbours (the order
    within a row is fp32's), all that an overlap needs, with the fewest float64 checks."""
    xs = _state_list(states)
    labels = _labels(labels, len(xs))
    n = int(xs[0].shape[0])
    if not 1 <= k < n:
        raise SpeechpruneError(f"mutual kNN needs 1 ≤ k < N (self is excluded), got k={k} with N={n} rows")
    _check_finite(xs, labels)
    return [knn(x, k, metric=metric, normalize=normalize, distances=False, exact_order=exact_order,
                device=device, check_finite=False).indices for x in xs]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |A_r ∩ B_r| / k for two N × k neighbour lists (entries within a row are distinct)."""
    n, k = a.shape
    return list_hits(a, b) / (n * k)


def _knn_pairs_matrix(lists: Sequence[np.ndarray]) -> np.ndarray:
    s = len(lists)
    out = np.eye(s)
    for i in range(s):
        for j in range(i + 1, s):
            out[i, j] = out[j, i] = _overlap(lists[i], lists[j])
    return out


def mutual_knn_matrix(
    states: StatesLike,
    k: int = 10,
    *,
    metric: str = "ip",
    normalize: bool = True,
    labels: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Mutual kNN alignment between all states: mean over rows of |N_i(r) ∩ N_j(r)| / k (S × S).

    Identical states give 1; independent ones ≈ k/(N−1). Each state's neighbour lists are computed once
    (:func:`neighbour_lists`); a pair of states then costs only the overlap of two N × k lists.
    """
    return _knn_pairs_matrix(_lists(states, k, metric, normalize, labels, device, exact_order=False))


def mutual_knn_sweep(
    states: StatesLike,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    metric: str = "ip",
    normalize: bool = True,
    labels: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> dict[int, np.ndarray]:
    """Mutual kNN matrices for several k from ONE neighbour search per state (with the largest k; the lists
    are sorted closest first, so the first k columns are the k-NN). k values ≥ N are an error."""
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise SpeechpruneError("no k values given for the mutual kNN sweep")
    lists = neighbour_lists(states, ks[-1], metric=metric, normalize=normalize, labels=labels, device=device)
    return {k: _knn_pairs_matrix([nb[:, :k] for nb in lists]) for k in ks}


# --------------------------------------------------------------------------------------------------------------
# Shuffled-pairing baseline
# --------------------------------------------------------------------------------------------------------------


def shuffled_pairing_baseline(
    states: StatesLike,
    metric: str,
    n_permutations: int = 10,
    seed: int = 0,
    *,
    k: int = 10,
    knn_metric: str = "ip",
    normalize: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    precision: str = "float64",
    labels: Sequence[int] | None = None,
    return_all: bool = False,
    device: str | torch.device | None = None,
    lists: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Chance level of ``metric`` for every pair of states: the similarity after the rows of one state are
    randomly re-paired with the other's (mean over ``n_permutations``; S × S).

    Per permutation every state gets its own random row order, so each off-diagonal pair sees a uniformly random
    re-pairing; the diagonal compares a state with a re-paired copy of itself. Neighbour lists are computed once
    and relabelled (kNN is permutation-equivariant), so the kNN baseline costs only intersections; ``lists``
    passes them in when they exist already (:func:`similarity_matrices` shares the mutual kNN matrix's, which
    at 20 000 rows × 13 states is a 48 s search on 2 cores).
    ``return_all=True`` returns the P × S × S stack instead of the mean.
    """
    if metric not in METRICS:
        raise SpeechpruneError(f"unknown similarity metric {metric!r}; choose from {', '.join(METRICS)}")
    if n_permutations < 1:
        raise SpeechpruneError(f"n_permutations must be ≥ 1, got {n_permutations}")
    xs = _state_list(states)
    labels = _labels(labels, len(xs))
    s, n = len(xs), int(xs[0].shape[0])
    rng = np.random.default_rng(seed)
    if metric == "mutual_knn" and lists is not None:
        if len(lists) != s or any(tuple(nb.shape) != (n, k) for nb in lists):
            raise SpeechpruneError(f"lists must be {s} neighbour lists of shape ({n}, {k})")
    elif metric == "mutual_knn":
        lists = _lists(xs, k, knn_metric, normalize, labels, device, exact_order=False)
    means = _column_means(xs, labels) if metric in ("cka", "cka_debiased") else None
    # views 0..S-1: permuted states; views S..2S-1: the original states (for the diagonal).
    pairs = [(i, j) for i in range(s) for j in range(i + 1, s)] + [(i, s + i) for i in range(s)]
    stack = np.empty((n_permutations, s, s))
    for p in range(n_permutations):
        perms = [rng.permutation(n) for _ in range(s)]
        vals = _view_pairs(metric, xs, labels, perms, pairs, lists, batch_rows, precision, means, device)
        for (i, j), v in zip(pairs, vals, strict=True):
            a, b = i % s, j % s
            stack[p, a, b] = stack[p, b, a] = v
    return stack if return_all else stack.mean(axis=0)


def _view_pairs(
    metric: str,
    xs: Sequence[np.ndarray | torch.Tensor],
    labels: Sequence[int],
    perms: Sequence[np.ndarray],
    pairs: Sequence[tuple[int, int]],
    lists: Sequence[np.ndarray] | None,
    batch_rows: int,
    precision: str,
    means: Sequence[torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> list[float]:
    """Similarity for ``pairs`` of views, where view v < S is state v with rows in order ``perms[v]`` and view
    S + v is state v unpermuted."""
    s = len(xs)
    views: list[tuple[int, np.ndarray | None]] = [(v, perms[v]) for v in range(s)] + [(v, None) for v in range(s)]
    view_labels = list(labels) * 2
    if metric == "mutual_knn":
        assert lists is not None
        relabelled = []
        for state, perm in views:
            if perm is None:
                relabelled.append(lists[state])
            else:
                inverse = np.empty_like(perm)
                inverse[perm] = np.arange(perm.size)
                relabelled.append(inverse[lists[state][perm]])  # row r of the view is original row perm[r]
        return [_overlap(relabelled[a], relabelled[b]) for a, b in pairs]
    if metric == "cosine":
        return _cosine_view_pairs(xs, views, pairs, view_labels)
    shift = [means[st] for st, _ in views] if means is not None else None  # a permutation keeps the mean
    acc = StreamingCKA(len(views), pairs=pairs, precision=precision, labels=view_labels, shift=shift, device=device)
    _feed(acc, xs, views, batch_rows, check_finite=means is None)  # the means pass scanned the rows
    return list(acc._cka_values(pairs, debiased=metric == "cka_debiased"))


def _cosine_view_pairs(xs: Sequence[np.ndarray | torch.Tensor], views: Sequence[tuple[int, np.ndarray | None]],
                       pairs: Sequence[tuple[int, int]], view_labels: Sequence[int],
                       batch_rows: int = 1024) -> list[float]:
    """Mean per-row cosine of each pair of views, streamed over row batches: only the asked pairs (not all
    2S × 2S), and a permuted view gathers one batch of rows at a time — a permuted copy of every state would
    double the memory of the data (100 000 × 13 × 768: 3.7 GB more, 11.4 GB peak measured)."""
    n = int(xs[0].shape[0])
    sums = np.zeros(len(pairs))
    zero = np.zeros(len(views), dtype=bool)
    for start in range(0, n, batch_rows):
        stop = min(start + batch_rows, n)
        unit = []
        for v, (state, perm) in enumerate(views):
            rows = slice(start, stop) if perm is None else perm[start:stop]
            t = _rows64(xs[state], rows, view_labels[v])
            norm = torch.linalg.vector_norm(t, dim=1)
            zero[v] |= bool((norm <= 0).any())
            unit.append(t / norm.clamp_min(torch.finfo(torch.float64).tiny)[:, None])
        for i, (a, b) in enumerate(pairs):
            sums[i] += float((unit[a] * unit[b]).sum())
    bad = {a for a, b in pairs if zero[a]} | {b for a, b in pairs if zero[b]}
    _warn_undefined("cosine", view_labels, bad, "rows with zero norm")
    return [math.nan if zero[a] or zero[b] else sums[i] / n for i, (a, b) in enumerate(pairs)]


# --------------------------------------------------------------------------------------------------------------
# All matrices for cached features
# --------------------------------------------------------------------------------------------------------------


def similarity_matrices(
    feats: LayerFeatures,
    metrics: Sequence[str] = METRICS,
    *,
    k: int = 10,
    knn_metric: str = "ip",
    knn_normalize: bool = True,
    knn_max_rows: int | None = 20000,
    cosine_by: str = "row",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    precision: str = "float32",
    baseline_permutations: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, SimilarityMatrix]:
    """Every requested (L+1) × (L+1) similarity matrix of cached features, labelled with ``feats.layers``.

    * ``cka`` and ``cka_debiased`` share one pass over the rows.
    * ``mutual_knn`` uses at most ``knn_max_rows`` rows (a seeded random subset; exact kNN costs O(N²·D), ≈ 3 s
      per state at 20 000 rows on 2 cores); ``None`` uses all rows. The subset size is recorded in ``params``.
    * ``cosine_by="clip"`` (frame-level features) takes the cosine of each clip's flattened frames, as the
      reference implementation does; ``"row"`` averages per-row cosines.
    * ``baseline_permutations > 0`` adds ``"<metric>_baseline"`` matrices from :func:`shuffled_pairing_baseline`
      (the cosine baseline re-pairs rows, so it is the per-row chance level even with ``cosine_by="clip"``).
    * ``precision``: CKA's GEMMs in fp32 with float64 accumulation (default; within 1e-7 of float64) or float64.
    * ``device``: where CKA's GEMMs and the kNN searches run (e.g. ``"cuda"``; cosine stays on the CPU).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise SpeechpruneError(f"unknown similarity metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if cosine_by not in ("row", "clip"):
        raise SpeechpruneError(f"cosine_by must be 'row' or 'clip', got {cosine_by!r}")
    xs = _state_list(feats.states)
    labels = [int(v) for v in feats.layers]
    n, d = int(xs[0].shape[0]), int(xs[0].shape[1])
    base = {"rows": n, "dim": d, "pooling": feats.pooling}
    out: dict[str, SimilarityMatrix] = {}
    if "cosine" in metrics:
        groups = np.asarray(feats.item_index) if cosine_by == "clip" else None
        out["cosine"] = SimilarityMatrix(cosine_matrix(xs, groups=groups, labels=labels), labels, "cosine",
                                         {**base, "cosine_by": cosine_by})
    if "cka" in metrics or "cka_debiased" in metrics:
        flags = [deb for name, deb in (("cka", False), ("cka_debiased", True)) if name in metrics]
        both = cka_matrices(xs, debiased=flags, batch_rows=batch_rows, precision=precision, labels=labels,
                            device=device)
        for name, deb in (("cka", False), ("cka_debiased", True)):
            if name in metrics:
                out[name] = SimilarityMatrix(both[deb], labels, name, {**base, "precision": precision})
    # mutual kNN's rows (a seeded subset above knn_max_rows) and each state's neighbour sets: selected and searched
    # once, used by the matrix and by its baseline
    knn_sub: list[Any] = xs
    knn_lists = None
    if "mutual_knn" in metrics:
        chosen = subset_rows(n, knn_max_rows, seed)
        knn_sub = xs if chosen is None else [x[chosen] for x in xs]
        knn_lists = _lists(knn_sub, k, knn_metric, knn_normalize, labels, device, exact_order=False)
        out["mutual_knn"] = SimilarityMatrix(
            _knn_pairs_matrix(knn_lists),
            labels,
            "mutual_knn",
            {**base, "rows": n if chosen is None else len(chosen), "k": k, "knn_metric": knn_metric,
             "normalize": knn_normalize})
    if baseline_permutations:
        for name in [m for m in metrics if m in METRICS]:
            sub = knn_sub if name == "mutual_knn" else xs
            values = shuffled_pairing_baseline(sub, name, baseline_permutations, seed, k=k, knn_metric=knn_metric,
                                               normalize=knn_normalize, batch_rows=batch_rows, precision=precision,
                                               labels=labels, device=device,
                                               lists=knn_lists if name == "mutual_knn" else None)
            out[f"{name}_baseline"] = SimilarityMatrix(
                values, labels, f"{name}_baseline",
                {**out[name].params, "permutations": baseline_permutations, "seed": seed})
    return out


def save_matrices(matrices: Mapping[str, SimilarityMatrix], folder: str | Path) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.npy`` for each matrix (atomically); returns the paths written."""
    folder = Path(folder)
    paths = []
    for name, m in matrices.items():
        paths += [m.to_csv(folder / f"{name}.csv"), m.to_npy(folder / f"{name}.npy")]
    return paths
