"""Block structure of similarity matrices (exact recovery on noisy block-diagonal matrices, no blocks reported
for smooth distance decay) and the heatmap plots that draw the blocks."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from speechprune.analysis.blocks import find_blocks
from speechprune.analysis.plots import plot_similarity, plot_similarity_grid
from speechprune.analysis.similarity import SimilarityMatrix
from speechprune.errors import SpeechpruneError


def block_matrix(sizes: list[int], within: float = 0.85, between: float = 0.3) -> np.ndarray:
    s = sum(sizes)
    m = np.full((s, s), between)
    start = 0
    for z in sizes:
        m[start:start + z, start:start + z] = within
        start += z
    np.fill_diagonal(m, 1.0)
    return m


def decay_matrix(s: int = 13, length: float = 3.0) -> np.ndarray:
    i = np.arange(s)
    return np.exp(-np.abs(i[:, None] - i[None, :]) / length)


def noisy(m: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).normal(0.0, sigma, m.shape)
    out = m + (e + e.T) / 2
    np.fill_diagonal(out, 1.0)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_two_blocks_recovered_exactly(seed: int) -> None:
    r = find_blocks(noisy(block_matrix([4, 9]), 0.08, seed))
    assert r.blocks == [(0, 3), (4, 12)]
    assert r.boundaries == [4]
    assert r.has_blocks and r.p_value <= 0.01
    assert r.within_mean == pytest.approx(0.85, abs=0.05) and r.between_mean == pytest.approx(0.3, abs=0.05)
    assert r.contrast > 0.45 and r.excess > 0.2
    assert "2 blocks" in r.summary() and "0–3, 4–12" in r.summary()


@pytest.mark.parametrize("seed", range(5))
def test_three_blocks_recovered_exactly(seed: int) -> None:
    r = find_blocks(noisy(block_matrix([3, 5, 5]), 0.08, 10 + seed))
    assert r.blocks == [(0, 2), (3, 7), (8, 12)]
    assert r.has_blocks


def test_blocks_with_decay_inside_and_state_labels() -> None:
    """Realistic shape: similarity also decays within each block; labels are state indices, not positions."""
    m = block_matrix([5, 8], within=1.0, between=0.25) * (0.6 + 0.4 * decay_matrix(13, 6.0))
    np.fill_diagonal(m, 1.0)
    r = find_blocks(SimilarityMatrix(noisy(m, 0.03, 0), list(range(1, 14)), "cka"))
    assert r.blocks == [(1, 5), (6, 13)]
    assert r.states == list(range(1, 14)) and r.has_blocks


@pytest.mark.parametrize("seed", range(5))
def test_smooth_decay_reports_no_blocks(seed: int) -> None:
    m = noisy(decay_matrix(), 0.03, 100 + seed)
    r = find_blocks(m)
    assert not r.has_blocks
    assert r.p_value > 0.05
    assert abs(r.excess) < 0.05 or r.n_blocks == 1
    assert "no block structure" in r.summary()


def test_noise_free_decay_and_uniform_are_one_block() -> None:
    r = find_blocks(decay_matrix())
    assert r.blocks == [(0, 12)] and not r.has_blocks
    assert max(abs(v) for v in r.score_by_k.values()) < 1e-12  # nothing beyond distance decay, for any K
    u = find_blocks(np.full((6, 6), 0.7))
    assert u.blocks == [(0, 5)] and not u.has_blocks


def test_raw_contrast_alone_would_be_fooled_by_decay() -> None:
    """Why the rule is distance-matched: forcing 2 blocks on smooth decay gives a sizeable raw contrast
    but ≈ 0 excess over the distance null, and it is not significant."""
    r = find_blocks(decay_matrix(), n_blocks=2)
    assert r.n_blocks == 2 and r.contrast > 0.1
    assert abs(r.excess) < 0.05 and not r.has_blocks


def test_constraints_are_respected() -> None:
    m = noisy(block_matrix([2, 3, 8]), 0.02, 0)
    assert find_blocks(m).blocks == [(0, 1), (2, 4), (5, 12)]
    lone = noisy(block_matrix([1, 12]), 0.02, 0)  # an input state unlike every layer
    r = find_blocks(lone)
    assert r.blocks == [(0, 0), (1, 12)] and r.multi_state_blocks == [(1, 12)]
    assert "1 of them with ≥ 2 states" in r.summary()
    r = find_blocks(m, min_size=3)
    assert all(b - a + 1 >= 3 for a, b in r.blocks)
    r = find_blocks(m, max_blocks=2)
    assert r.n_blocks <= 2 and set(r.score_by_k) == {1, 2}
    r = find_blocks(m, n_blocks=4)
    assert r.n_blocks == 4


def test_bad_matrices_raise() -> None:
    with pytest.raises(SpeechpruneError, match="square"):
        find_blocks(np.zeros((3, 4)))
    m = block_matrix([2, 2])
    m[1, 2] = m[2, 1] = np.nan
    with pytest.raises(SpeechpruneError, match="NaN"):
        find_blocks(m)
    with pytest.raises(SpeechpruneError, match="symmetric"):
        find_blocks(np.triu(block_matrix([2, 2])))
    with pytest.raises(SpeechpruneError, match="labels"):
        find_blocks(block_matrix([2, 2]), states=[0, 1, 2])
    with pytest.raises(SpeechpruneError, match="min_size"):
        find_blocks(block_matrix([2, 2]), min_size=5)
    with pytest.raises(SpeechpruneError, match="n_blocks=3 is impossible"):
        find_blocks(block_matrix([2, 2]), min_size=2, n_blocks=3)


def test_result_serialises() -> None:
    r = find_blocks(noisy(block_matrix([4, 9]), 0.05, 0))
    d = r.to_dict()
    assert d["blocks"] == [[0, 3], [4, 12]] and d["boundaries"] == [4] and d["has_blocks"] is True
    assert "distance" in d["rule"]


# ---------------------------------------------------------------- plots


def _red_pixels(path) -> int:
    img = imread(path)
    return int(((img[..., 0] > 0.9) & (img[..., 1] < 0.15) & (img[..., 2] < 0.15)).sum())


def test_heatmap_png_with_block_outlines(tmp_path) -> None:
    sm = SimilarityMatrix(noisy(block_matrix([4, 9]), 0.05, 0), list(range(13)), "cka")
    blocks = find_blocks(sm)
    plain = plot_similarity(sm, tmp_path / "plain.png")
    boxed = plot_similarity(sm, tmp_path / "sub" / "boxed.png", blocks=blocks, title="CKA")
    assert plain.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _red_pixels(plain) == 0 and _red_pixels(boxed) > 500
    assert not list(tmp_path.rglob("*.tmp"))  # atomic: no leftovers
    with pytest.raises(SpeechpruneError, match="not in the matrix"):
        plot_similarity(sm, tmp_path / "bad.png", blocks=[(0, 20)])


def test_grid_of_metrics(tmp_path) -> None:
    states = list(range(3, 10))
    m = noisy(block_matrix([3, 4]), 0.02, 1)
    mats = {"cka": SimilarityMatrix(m, states, "cka"), "mutual_knn": SimilarityMatrix(m / 2, states, "mutual_knn"),
            "cosine": SimilarityMatrix(m, states, "cosine")}
    out = plot_similarity_grid(mats, tmp_path / "grid.png", blocks={"cka": find_blocks(mats["cka"])})
    img = imread(out)
    assert img.shape[1] > img.shape[0] * 2  # three panels side by side
    assert _red_pixels(out) > 100
    with pytest.raises(SpeechpruneError, match="no similarity"):
        plot_similarity_grid({}, tmp_path / "empty.png")
