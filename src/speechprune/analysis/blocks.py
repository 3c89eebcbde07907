"""Block structure of a layer-similarity matrix: contiguous runs of mutually similar layers.

The question is whether the stack has a few *processing steps* (blocks of layers that are similar to each other
and dissimilar to the rest) or whether similarity simply decays with layer distance. A raw within-vs-between
contrast cannot tell these apart: in a smooth matrix ``M_ij = f(|i−j|)`` any split puts close layers together
and far layers apart, so it also "finds" blocks. The rule here therefore measures similarity **relative to
what layer distance alone predicts**.

The rule (documented in :attr:`BlockResult.rule`):

1. Distance null: ``t_d`` = mean of the d-th off-diagonal of M; residual ``R_ij = M_ij − t_|i−j|``. A matrix
   whose similarity depends only on distance has R ≡ 0.
2. Score of a segmentation into contiguous blocks: ``Q = Σ_blocks Σ_{i<j in block} R_ij`` — within-block
   similarity in excess of the same-distance average (a modularity with a distance-only null model).
   Between-block pairs are not scored, so merging across a real boundary costs the (negative) residuals of
   the pairs it would add, and splitting a real block loses their (positive) residuals.
3. Exact dynamic programming over all contiguous segmentations (with ``min_size`` and ``max_blocks``) finds the
   best Q for every number of blocks K; the chosen segmentation is the best over K (the smallest K on ties),
   or exactly ``n_blocks`` when given.
4. Significance: the same optimisation on ``n_null`` matrices whose residuals are shuffled *within each
   diagonal* (same distance profile, no block alignment) gives a null distribution of the best Q;
   ``p = (1 + #{null ≥ Q}) / (1 + n_null)``.
5. ``has_blocks`` = (K ≥ 2) and (p ≤ alpha). Otherwise the matrix is reported as having no block structure
   beyond distance decay (the best segmentation is still returned, with its statistics, for inspection).

Reported statistics for the chosen segmentation: within- and between-block mean similarity, their difference
(``contrast``), and the distance-matched contrast ``excess`` (the same difference on R), which is ≈ 0 for
smooth decay however the layers are split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from speechprune.errors import SpeechpruneError

RULE = (
    "distance-null block model: residual R_ij = M_ij - mean of M at distance |i-j|; blocks maximise the "
    "within-block sum of R (exact DP over contiguous segmentations, smallest K on ties); has_blocks iff K >= 2 "
    "and p <= alpha, p from {n_null} shuffles of R within each diagonal"
)


@dataclass
class BlockResult:
    """Contiguous blocks of a similarity matrix, as inclusive ranges of state indices, e.g. ``[(0, 3), (4, 12)]``.

    ``score_by_k[K]`` is the best score with exactly K blocks (−inf where K blocks are impossible);
    ``within_mean`` / ``between_mean`` are mean similarities over within- and between-block pairs (NaN when
    there are none); ``contrast = within_mean − between_mean``; ``excess`` is the same contrast on the
    distance residuals (≈ 0 for smooth decay).
    """

    states: list[int]
    blocks: list[tuple[int, int]]
    has_blocks: bool
    score: float
    p_value: float
    within_mean: float
    between_mean: float
    contrast: float
    excess: float
    score_by_k: dict[int, float]
    alpha: float
    rule: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def multi_state_blocks(self) -> list[tuple[int, int]]:
        """Blocks of at least two states. A singleton (often state 0, the input embedding) is a state unlike its
        neighbours rather than a processing step; ``min_size=2`` forbids singletons altogether."""
        return [(a, b) for a, b in self.blocks if self.states.index(b) > self.states.index(a)]

    @property
    def boundaries(self) -> list[int]:
        """The first state of every block after the first (where a new processing step starts)."""
        return [a for a, _ in self.blocks[1:]]

    def summary(self) -> str:
        ranges = ", ".join(f"{a}–{b}" if a != b else f"{a}" for a, b in self.blocks)
        stats = (f"within {self.within_mean:.3f}, between {self.between_mean:.3f}, contrast {self.contrast:.3f}, "
                 f"distance-matched excess {self.excess:.3f}, p = {self.p_value:.3g}")
        if self.has_blocks:
            multi = len(self.multi_state_blocks)
            extra = f", {multi} of them with ≥ 2 states" if multi != self.n_blocks else ""
            return f"{self.n_blocks} blocks of mutually similar layers{extra}: states {ranges} ({stats})"
        return (f"no block structure beyond similarity decaying with layer distance (best split: states {ranges}; "
                f"{stats}; alpha = {self.alpha})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [list(b) for b in self.blocks]
        d["score_by_k"] = {str(k): v for k, v in self.score_by_k.items()}
        d["boundaries"] = self.boundaries
        d["multi_state_blocks"] = [list(b) for b in self.multi_state_blocks]
        d["summary"] = self.summary()
        return d


def find_blocks(
    matrix: Any,
    states: Sequence[int] | None = None,
    *,
    max_blocks: int | None = None,
    min_size: int = 1,
    n_blocks: int | None = None,
    alpha: float = 0.01,
    n_null: int = 499,
    seed: int = 0,
) -> BlockResult:
    """Find contiguous blocks of mutually similar states in an S × S similarity matrix (see the module rule).

    ``matrix`` is an array or a :class:`~speechprune.analysis.similarity.SimilarityMatrix` (whose ``states``
    label the result). ``min_size`` is the smallest block, ``max_blocks`` caps K, ``n_blocks`` forces K.
    """
    values, labels = _inputs(matrix, states)
    s = len(labels)
    k_max = s // min_size if min_size >= 1 else 0
    if min_size < 1 or k_max < 1:
        raise SpeechpruneError(f"min_size must be between 1 and the number of states ({s}), got {min_size}")
    if max_blocks is not None:
        if max_blocks < 1:
            raise SpeechpruneError(f"max_blocks must be ≥ 1, got {max_blocks}")
        k_max = min(k_max, max_blocks)
    if n_blocks is not None and not 1 <= n_blocks <= k_max:
        raise SpeechpruneError(f"n_blocks={n_blocks} is impossible with {s} states, min_size={min_size}"
                               + (f", max_blocks={max_blocks}" if max_blocks else ""))
    resid = _residuals(values)
    best, arg = _dp(_segment_gains(resid[None], min_size), k_max)
    by_k = best[0, :, s]
    k = n_blocks if n_blocks is not None else _choose_k(by_k, resid)
    cuts = _backtrack(arg[0], k, s)
    null = _null_scores(resid, min_size, k_max, n_blocks, n_null, seed)
    observed = float(by_k[k])
    tol = 1e-9 * max(1.0, float(np.abs(resid).sum()))
    p = (1 + int((null >= observed - tol).sum())) / (1 + n_null) if n_null > 0 else float("nan")
    stats = _block_stats(values, resid, cuts)
    return BlockResult(
        states=labels,
        blocks=[(labels[a], labels[b]) for a, b in cuts],
        has_blocks=bool(len(cuts) >= 2 and p <= alpha),
        score=observed,
        p_value=p,
        score_by_k={kk: float(by_k[kk]) for kk in range(1, k_max + 1)},
        alpha=alpha,
        rule=RULE.format(n_null=n_null),
        params={"min_size": min_size, "max_blocks": max_blocks, "n_blocks": n_blocks, "n_null": n_null,
                "seed": seed},
        **stats,
    )


def _inputs(matrix: Any, states: Sequence[int] | None) -> tuple[np.ndarray, list[int]]:
    if hasattr(matrix, "values") and hasattr(matrix, "states"):
        states = matrix.states if states is None else states
        matrix = matrix.values
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise SpeechpruneError(f"block detection needs a square similarity matrix, got shape {values.shape}")
    s = values.shape[0]
    labels = list(range(s)) if states is None else [int(v) for v in states]
    if len(labels) != s:
        raise SpeechpruneError(f"{len(labels)} state labels given for a {s} × {s} matrix")
    if not np.isfinite(values).all():
        bad = sorted({labels[i] for i in np.nonzero(~np.isfinite(values))[0]})
        raise SpeechpruneError(f"similarity matrix has NaN/inf entries (states {bad}); blocks are undefined there — "
                               "drop those states first")
    if not np.allclose(values, values.T, rtol=1e-6, atol=1e-9):
        raise SpeechpruneError("similarity matrix is not symmetric")
    return (values + values.T) / 2, labels


def _residuals(values: np.ndarray) -> np.ndarray:
    """Upper-triangular residuals R_ij = M_ij − mean(M at distance j − i) (zero on and below the diagonal)."""
    s = values.shape[0]
    resid = np.zeros_like(values)
    for d in range(1, s):
        diag = np.diagonal(values, offset=d)
        idx = np.arange(s - d)
        resid[idx, idx + d] = diag - diag.mean()
    return resid


def _segment_gains(resid: np.ndarray, min_size: int) -> np.ndarray:
    """``G[b, i, j]`` = Σ_{i ≤ u < v ≤ j} R_b[u, v] for every segment [i, j] (−inf where j < i or too short)."""
    b, s, _ = resid.shape
    pre = np.zeros((b, s + 1, s + 1))
    pre[:, 1:, 1:] = resid.cumsum(axis=1).cumsum(axis=2)
    i = np.arange(s)[:, None]
    j = np.arange(s)[None, :]
    gains = pre[:, j + 1, j + 1] - pre[:, i, j + 1] - pre[:, j + 1, i] + pre[:, i, i]
    gains[:, (j - i + 1) < min_size] = -np.inf
    return gains


def _dp(gains: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Best total gain of the first e states in exactly k blocks, for a batch of gain tables.

    ``best[b, k, e]``; ``arg[b, k, e]`` is the start of the last block. Vectorised over the batch and over k, so
    the loop is over the S segment ends only.
    """
    b, s, _ = gains.shape
    best = np.full((b, k_max + 1, s + 1), -np.inf)
    best[:, 0, 0] = 0.0
    arg = np.zeros((b, k_max + 1, s + 1), dtype=np.int64)
    for e in range(1, s + 1):
        cand = best[:, :-1, :e] + gains[:, None, :e, e - 1]  # (b, k_max, start)
        arg[:, 1:, e] = cand.argmax(axis=2)
        best[:, 1:, e] = cand.max(axis=2)
    return best, arg


def _choose_k(by_k: np.ndarray, resid: np.ndarray) -> int:
    top = np.max(by_k[1:])
    tol = 1e-9 * max(1.0, float(np.abs(resid).sum()))
    return int(np.nonzero(by_k[1:] >= top - tol)[0][0]) + 1


def _backtrack(arg: np.ndarray, k: int, s: int) -> list[tuple[int, int]]:
    cuts = []
    end = s
    for kk in range(k, 0, -1):
        start = int(arg[kk, end])
        cuts.append((start, end - 1))
        end = start
    return cuts[::-1]


def _null_scores(resid: np.ndarray, min_size: int, k_max: int, n_blocks: int | None, n_null: int,
                 seed: int) -> np.ndarray:
    """Best score of ``n_null`` residual matrices shuffled within each diagonal (distance profile kept)."""
    if n_null <= 0:
        return np.empty(0)
    s = resid.shape[0]
    rng = np.random.default_rng(seed)
    shuffled = np.zeros((n_null, s, s))
    for d in range(1, s):
        idx = np.arange(s - d)
        diag = resid[idx, idx + d]
        order = np.argsort(rng.random((n_null, s - d)), axis=1)
        shuffled[:, idx, idx + d] = diag[order]
    out = []
    for start in range(0, n_null, 256):  # bounded memory: 256 × K × S tables at a time
        best, _ = _dp(_segment_gains(shuffled[start:start + 256], min_size), k_max)
        out.append(best[:, n_blocks, s] if n_blocks is not None else best[:, 1:, s].max(axis=1))
    return np.concatenate(out)


def _block_stats(values: np.ndarray, resid: np.ndarray, cuts: list[tuple[int, int]]) -> dict[str, float]:
    s = values.shape[0]
    block_of = np.empty(s, dtype=np.int64)
    for b, (a, e) in enumerate(cuts):
        block_of[a:e + 1] = b
    iu = np.triu_indices(s, k=1)
    same = block_of[iu[0]] == block_of[iu[1]]
    sim, res = values[iu], resid[iu]

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    within, between = mean(sim[same]), mean(sim[~same])
    return {"within_mean": within, "between_mean": between, "contrast": within - between,
            "excess": mean(res[same]) - mean(res[~same])}
