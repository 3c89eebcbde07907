"""Heatmaps of layer-similarity matrices with block boundaries, written as PNG atomically.

Uses matplotlib's object-oriented API with the Agg canvas directly (no ``pyplot``, no global backend switch), so
it works headless and does not disturb an interactive session that imported this module. Ticks are state indices
(state 0 = input to the first transformer layer), never matrix positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from speechprune.analysis.blocks import BlockResult
from speechprune.analysis.similarity import SimilarityMatrix
from speechprune.errors import SpeechpruneError
from speechprune.utils.io import atomic_path

BlocksLike = BlockResult | Sequence[tuple[int, int]] | None
_LABELS = {
    "cosine": "cosine",
    "cka": "linear CKA",
    "cka_debiased": "linear CKA (debiased)",
    "mutual_knn": "mutual kNN alignment",
}


def plot_similarity(
    matrix: SimilarityMatrix,
    path: str | Path,
    blocks: BlocksLike = None,
    *,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    annotate: bool | None = None,
    dpi: int = 150,
) -> Path:
    """One heatmap → PNG at ``path``. ``blocks`` (a :class:`BlockResult` or inclusive state ranges) are drawn as
    outlined squares on the diagonal with boundary lines; ``annotate`` writes values in cells (default: S ≤ 13).
    """
    fig = Figure(figsize=(6.2, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw(fig, ax, matrix, blocks, title, vmin, vmax, cmap, annotate)
    return _save(fig, path, dpi)


def plot_similarity_grid(
    matrices: Mapping[str, SimilarityMatrix] | Sequence[SimilarityMatrix],
    path: str | Path,
    blocks: Mapping[str, BlocksLike] | BlocksLike = None,
    *,
    title: str | None = None,
    ncols: int | None = None,
    cmap: str = "viridis",
    annotate: bool | None = False,
    dpi: int = 120,
) -> Path:
    """Several metrics side by side (one panel each, own colour bar) → PNG. ``blocks`` is either one block set
    drawn on every panel or a mapping from panel name to block set."""
    items = list(matrices.items()) if isinstance(matrices, Mapping) else [(m.metric, m) for m in matrices]
    if not items:
        raise SpeechpruneError("no similarity matrices to plot")
    ncols = ncols or min(len(items), 4)
    nrows = math.ceil(len(items) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, m) in enumerate(items):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        b = blocks.get(name) if isinstance(blocks, Mapping) else blocks
        _draw(fig, ax, m, b, _LABELS.get(name, name), None, None, cmap, annotate)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _draw(fig: Figure, ax: Any, matrix: SimilarityMatrix, blocks: BlocksLike, title: str | None,
          vmin: float | None, vmax: float | None, cmap: str, annotate: bool | None) -> None:
    values = np.asarray(matrix.values, dtype=np.float64)
    states = list(matrix.states)
    s = len(states)
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else min(0.0, float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else max(1.0, float(finite.max()) if finite.size else 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    step = max(1, math.ceil(s / 25))
    ticks = list(range(0, s, step))
    ax.set_xticks(ticks, [str(states[t]) for t in ticks])
    ax.set_yticks(ticks, [str(states[t]) for t in ticks])
    ax.set_xlabel("state (0 = input to layer 1, i = output of layer i)")
    ax.set_ylabel("state")
    ax.set_title(title if title is not None else _LABELS.get(matrix.metric, matrix.metric))
    fig.colorbar(image, ax=ax, shrink=0.85, label=_LABELS.get(matrix.metric, matrix.metric))
    if annotate if annotate is not None else s <= 13:
        for i in range(s):
            for j in range(s):
                if np.isfinite(values[i, j]):
                    shade = (values[i, j] - lo) / (hi - lo) if hi > lo else 0.0
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if shade > 0.6 else "white")
    if isinstance(blocks, BlockResult) and not blocks.has_blocks:
        # a block split that failed the permutation test is not drawn: the picture would claim what the test denies
        ax.set_title(f"{ax.get_title()}\nno significant blocks (p = {blocks.p_value:.2g} ≥ α = {blocks.alpha:g}): "
                     "none outlined", fontsize=9)
    for a, b in _positions(blocks, states):
        ax.add_patch(Rectangle((a - 0.5, a - 0.5), b - a + 1, b - a + 1, fill=False, edgecolor="red", linewidth=2))
        if a > 0:
            ax.axhline(a - 0.5, color="red", linewidth=0.8, linestyle="--")
            ax.axvline(a - 0.5, color="red", linewidth=0.8, linestyle="--")


def _positions(blocks: BlocksLike, states: list[int]) -> list[tuple[int, int]]:
    """Block state ranges → matrix positions (the matrix may not start at state 0)."""
    if blocks is None or (isinstance(blocks, BlockResult) and not blocks.has_blocks):
        return []  # only significant blocks are outlined (see _draw)
    ranges = blocks.blocks if isinstance(blocks, BlockResult) else list(blocks)
    out = []
    for a, b in ranges:
        if a not in states or b not in states:
            raise SpeechpruneError(f"block ({a}, {b}) uses states that are not in the matrix {states}")
        out.append((states.index(a), states.index(b)))
    return out


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
