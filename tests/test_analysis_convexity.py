"""Graph convexity: known geometries, exact values against a dense brute force, determinism, bad input, and
agreement with the reference implementation ``nnconvexity`` 0.1.1 (synthetic and real Whisper tiny.en features)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from speechprune.analysis.convexity import (
    ConvexityWarning,
    convexity_by_layer,
    graph_convexity,
    permutation_baseline,
    sample_pairs,
)
from speechprune.errors import LayerIndexError, SpeechpruneError
from speechprune.features import LayerFeatures

# ------------------------------------------------------------------------------------------------------ data


def blobs(classes: int, per_class: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (unit variance) whose centres are ``spread`` · N(0, I) apart."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * spread
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + rng.standard_normal((len(y), dim)), y


def latent_768(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """768-d points near a 6-d latent with overlapping classes plus noise (multi-hop paths, like embeddings)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    z = rng.standard_normal((classes, 6))[y] * 1.2 + rng.standard_normal((len(y), 6))
    x = z @ (rng.standard_normal((6, 768)) / np.sqrt(6)) + 0.05 * rng.standard_normal((len(y), 768))
    return x.astype(np.float32), y


def noisy_circle(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    return np.stack([np.cos(t), np.sin(t)], 1) + 0.01 * rng.standard_normal((n, 2))


# ------------------------------------------------------------------------------------------- dense brute force


def brute_force_scores(x: np.ndarray, y: np.ndarray, k: int, pairs: np.ndarray) -> np.ndarray:
    """The definition written out densely: full distance matrix, kNN by sorting, max(W, Wᵀ), Floyd–Warshall with
    next-hop reconstruction, then 0 / 1 / share of same-label interior vertices per pair."""
    n = len(x)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    w = np.zeros((n, n))
    for i in range(n):
        for j in np.argsort(d[i], kind="stable")[:k]:
            w[i, j] = d[i, j]
    w = np.maximum(w, w.T)
    dist = np.where(w > 0, w, np.inf)
    np.fill_diagonal(dist, 0.0)
    nxt = np.where(np.isfinite(dist), np.arange(n)[None, :], -1)
    for m in range(n):
        via = dist[:, m, None] + dist[None, m, :]
        better = via < dist
        dist = np.where(better, via, dist)
        nxt = np.where(better, nxt[:, m, None], nxt)
    out = []
    for u, v in pairs:
        if nxt[u, v] < 0:
            out.append(0.0)
            continue
        path = [u]
        while path[-1] != v:
            path.append(nxt[path[-1], v])
        inner = path[1:-1]
        out.append(1.0 if not inner else sum(y[i] == y[u] for i in inner) / len(inner))
    return np.array(out)


# -------------------------------------------------------------------------------------------- known geometries


def test_well_separated_blobs_are_fully_convex() -> None:
    x, y = blobs(4, 40, 8, spread=50.0, seed=0)
    res = graph_convexity(x, y, processes=1)
    assert res.score == 100.0
    assert res.per_class == {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0}
    assert res.unreachable_fraction == 0.0 and res.n_components == 4
    assert res.pair_counts == {c: 40 * 39 for c in range(4)}  # 1 560 ≤ 5 000: every ordered pair is scored
    assert res.mean_path_vertices > 2.5  # multi-hop paths exist, so 100 % is not just adjacency


def test_alternating_labels_score_at_chance_and_contiguous_labels_near_100() -> None:
    """Same noisy circle (200 points, k = 10), two labelings. Alternating labels: about half of the interior vertices
    of a long path carry the class (measured 51.9–52.3 % over 3 seeds), indistinguishable from shuffled labels.
    Contiguous halves: paths stay inside the half-circle."""
    x = noisy_circle(200, seed=0)
    alternating = np.arange(200) % 2
    res = graph_convexity(x, alternating, processes=1)
    assert 45.0 < res.score < 60.0
    assert res.mean_path_vertices > 8  # long paths: the score is not dominated by adjacent pairs
    chance = permutation_baseline(x, alternating, n_permutations=3, processes=1)
    assert abs(res.score - chance.mean) < 5.0 and len(chance.scores) == 3
    halves = (np.arange(200) >= 100).astype(int)
    assert graph_convexity(x, halves, processes=1).score > 95.0


def test_hand_built_chain_exact_values() -> None:
    """1-d points, k = 1: chain 0–1–3–6–10 and a separate chain 100–101.5–104 (indices 0..4 and 5..7).

    Class a = {0, 2, 3, 5}: (0,2) via b → 0; (0,3) via b, a → ½; (2,3) adjacent → 1; pairs with 5 unreachable → 0.
    Class b = {1, 4, 6, 7}: (1,4) via a, a → 0; (6,7) adjacent → 1; the rest unreachable → 0.
    """
    x = np.array([0, 1, 3, 6, 10, 100, 101.5, 104], float)[:, None]
    y = np.array(list("abaababb"))
    for sym in (False, True):
        res = graph_convexity(x, y, n_neighbors=1, processes=1, use_symmetry=sym)
        assert res.pair_counts == {"a": 12, "b": 12}
        assert res.per_class["a"] == pytest.approx(100 * 1.5 / 6, abs=1e-12)
        assert res.per_class["b"] == pytest.approx(100 * 1 / 6, abs=1e-12)
        assert res.score == pytest.approx(100 * 5 / 24, abs=1e-12)
        assert res.unreachable_fraction == pytest.approx(7 / 12, abs=1e-12)
        assert res.n_components == 2
        got = {tuple(p): s for p, s in zip(res.pairs.tolist(), res.pair_scores.tolist())}
        assert got[(0, 3)] == got[(3, 0)] == 0.5 and got[(2, 3)] == 1.0 and got[(0, 5)] == 0.0
        assert got[(6, 7)] == 1.0 and got[(1, 4)] == 0.0


@pytest.mark.parametrize(("use_symmetry", "chunk", "paths"), [
    (False, 256, "compiled"), (True, 256, "compiled"),
    (False, 256, "scipy"), (True, 256, "scipy"), (False, 8, "scipy"), (True, 8, "scipy"),
])
def test_exact_agreement_with_dense_brute_force(use_symmetry: bool, chunk: int, paths: str) -> None:
    """Two far-apart clusters (so some same-class pairs are unreachable), 3 classes spread over both, k = 4.
    The compiled bidirectional kernel and the scipy route; ``chunk=8`` makes the scipy route take its bounded
    path (pilot, radius-limited chunks, redo)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((30, 3)), rng.standard_normal((28, 3)) + 40.0])
    y = rng.integers(0, 3, len(x))
    res = graph_convexity(x, y, n_neighbors=4, processes=1, use_symmetry=use_symmetry, chunk=chunk, paths=paths)
    assert res.paths_method == paths
    if paths == "scipy":
        assert (res.n_trees > res.n_sources) == (chunk == 8)  # the bounded route redid some sources
    else:  # one search per reachable pair; all ordered pairs are sampled, so (u, v) and (v, u) share one
        reachable = round(res.n_pairs * (1 - res.unreachable_fraction))
        assert res.n_trees * (2 if use_symmetry else 1) == reachable
    expected = brute_force_scores(x, y, 4, res.pairs)
    np.testing.assert_array_equal(res.pair_scores, expected)
    sizes = np.bincount(y)
    assert res.n_pairs == int((sizes * (sizes - 1)).sum())  # all ordered pairs
    assert (expected == 0).any() and (expected == 1).any() and ((expected > 0) & (expected < 1)).any()
    assert res.unreachable_fraction > 0
    per_pair_mean = np.mean(expected) * 100
    assert res.score == pytest.approx(per_pair_mean, abs=1e-10)


# ----------------------------------------------------------------------------------------- sampling, determinism


def test_pair_sampling_is_uniform_ordered_and_without_replacement() -> None:
    members = np.array([3, 8, 11, 20])
    everything = sample_pairs(members, 100, np.random.default_rng(0))
    assert everything.tolist() == [list(p) for p in itertools.permutations(members.tolist(), 2)]
    big = np.arange(3000) * 2  # 8 997 000 ordered pairs: drawn by index, never listed
    drawn = sample_pairs(big, 5000, np.random.default_rng(0))
    assert drawn.shape == (5000, 2) and (drawn[:, 0] != drawn[:, 1]).all()
    assert len({tuple(p) for p in drawn.tolist()}) == 5000 and np.isin(drawn, big).all()
    counts = np.bincount(drawn[:, 0] // 2, minlength=3000)  # each first endpoint ≈ 5000/3000 times
    assert counts.max() <= 10


def test_deterministic_for_a_seed_and_independent_of_processes() -> None:
    x, y = latent_768(6, 100, seed=1)  # 9 900 ordered pairs per class > 500: sampling matters
    kw = dict(max_pairs_per_class=500, seed=7)
    one = graph_convexity(x, y, processes=1, **kw)
    two = graph_convexity(x, y, processes=2, chunk=40, progress=True, **kw)
    again = graph_convexity(x, y, processes=2, chunk=64, **kw)
    for other in (two, again):
        np.testing.assert_array_equal(one.pairs, other.pairs)
        np.testing.assert_array_equal(one.pair_scores, other.pair_scores)
        assert other.score == one.score and other.per_class == one.per_class
    reseeded = graph_convexity(x, y, processes=1, max_pairs_per_class=500, seed=8)
    assert not np.array_equal(reseeded.pairs, one.pairs)
    assert abs(reseeded.score - one.score) < 5.0


def test_symmetry_needs_fewer_trees_and_gives_the_same_scores() -> None:
    x, y = latent_768(5, 60, seed=2)
    plain = graph_convexity(x, y, processes=1, use_symmetry=False)
    sym = graph_convexity(x, y, processes=1, use_symmetry=True)
    assert sym.n_sources < plain.n_sources == 300
    np.testing.assert_allclose(sym.pair_scores, plain.pair_scores, atol=0, rtol=0)  # no ties in real-valued data


def test_bounded_search_gives_the_same_scores_as_whole_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    import speechprune.analysis.convexity as conv

    x, y = latent_768(6, 100, seed=5)
    bounded = graph_convexity(x, y, max_pairs_per_class=500, processes=1, chunk=32, paths="scipy")
    assert bounded.n_trees > bounded.n_sources > 64  # pilot + limited chunks + whole trees for the overshoots
    monkeypatch.setattr(conv, "LIMIT_QUANTILE", None)
    whole = graph_convexity(x, y, max_pairs_per_class=500, processes=1, chunk=32, paths="scipy")
    assert whole.n_trees == whole.n_sources == bounded.n_sources
    np.testing.assert_array_equal(bounded.pairs, whole.pairs)
    np.testing.assert_array_equal(bounded.pair_scores, whole.pair_scores)


def test_falls_back_to_one_process_without_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    import speechprune.analysis.convexity as conv

    x, y = latent_768(4, 80, seed=4)
    forked = graph_convexity(x, y, processes=2, chunk=32)
    monkeypatch.setattr(conv.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    serial = graph_convexity(x, y, processes=2, chunk=32)
    np.testing.assert_array_equal(forked.pair_scores, serial.pair_scores)


# ------------------------------------------------------------------------------------------------ bad input


def test_single_example_class_is_skipped_with_a_warning() -> None:
    x, y = blobs(3, 20, 5, spread=3.0, seed=5)
    labels = y.astype(str).astype(object)
    labels[7] = "lonely"
    with pytest.warns(ConvexityWarning, match="lonely"):
        res = graph_convexity(x, labels, processes=1)
    assert res.skipped_classes == ["lonely"] and "lonely" not in res.per_class
    assert res.class_sizes["lonely"] == 1 and res.pair_counts["0"] == 19 * 18


def test_bad_input_raises_clear_errors() -> None:
    x, y = blobs(2, 10, 4, spread=3.0, seed=6)
    with pytest.raises(SpeechpruneError, match="at least one class with ≥ 2 examples"):
        graph_convexity(x, np.arange(20), processes=1)
    with pytest.raises(SpeechpruneError, match="needs more than 10 points"):
        graph_convexity(x[:10], y[:10], processes=1)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(SpeechpruneError, match="NaN or inf.*row 3"):
        graph_convexity(bad, y, processes=1)
    bad[3, 1] = np.inf
    with pytest.raises(SpeechpruneError, match="NaN or inf"):
        graph_convexity(bad, y, processes=1)
    with pytest.raises(SpeechpruneError, match="one label per row"):
        graph_convexity(x, y[:-1], processes=1)
    with pytest.raises(SpeechpruneError, match="n_neighbors must be a positive integer"):
        graph_convexity(x, y, n_neighbors=0)
    with pytest.raises(TypeError, match="unknown graph_convexity option"):
        permutation_baseline(x, y, n_neighbours=5)


def test_labels_need_not_be_0_to_c_minus_1() -> None:
    """The reference's ``labels == position in set(labels)`` pitfall: any label values must give the same scores."""
    x, y = blobs(3, 25, 6, spread=0.8, seed=9)
    as_int = graph_convexity(x, y, processes=1)
    as_str = graph_convexity(x, np.array(["zero", "one", "two"])[y], processes=1)
    as_big = graph_convexity(x, (y + 1) * 1000, processes=1)
    assert as_str.score == as_int.score == as_big.score
    assert as_str.per_class["one"] == as_int.per_class[1] == as_big.per_class[2000]


def test_convexity_by_layer_rows_and_errors() -> None:
    x0, y = blobs(3, 30, 8, spread=0.6, seed=10)
    x1, _ = blobs(3, 30, 8, spread=50.0, seed=10)
    feats = LayerFeatures(
        states=np.stack([x0, x1]).astype(np.float32), layers=[0, 1], item_index=np.arange(90),
        labels={"cls": [f"c{v}" for v in y]}, groups=[None] * 90, pooling="mean",
    )
    rows = convexity_by_layer(feats, "cls", n_permutations=2, processes=1)
    assert [r["state"] for r in rows] == [0, 1]
    assert rows[1]["score"] == 100.0 and rows[0]["score"] < 100.0
    assert set(rows[0]["per_class"]) == {"c0", "c1", "c2"} and rows[0]["n_pairs"] == 3 * 30 * 29
    assert rows[1]["chance"] < 60.0 and rows[1]["chance_std"] >= 0.0
    assert {"std_error", "pair_counts", "unreachable_fraction", "skipped_classes"} <= set(rows[0])
    with pytest.raises(LayerIndexError):
        convexity_by_layer(feats, "cls", layers=[5], processes=1)
    with pytest.raises(SpeechpruneError, match="no label column 'word'"):
        convexity_by_layer(feats, "word")


# ---------------------------------------------------------------------------------------- agreement with nnconvexity


def reference(x: np.ndarray, codes: np.ndarray, k: int = 10) -> tuple[float, dict[int, float]]:
    """nnconvexity 0.1.1 (labels must be 0..C−1 there). Classes are small enough that it scores every ordered pair,
    as we do, so its unseeded pair draw does not matter."""
    graph = pytest.importorskip("nnconvexity.graph", reason="nnconvexity (dev extra) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # igraph warns for every unreachable pair
        score, per_class = graph.compute_graph_convexity(x, codes, n_neighbors=k, max_n_paths=5000)
    return float(score), {int(c): float(v) for c, v in per_class.items()}


def assert_agrees(x: np.ndarray, labels: np.ndarray, tol: float = 0.5) -> float:
    classes, codes = np.unique(labels, return_inverse=True)
    assert (np.bincount(codes) * (np.bincount(codes) - 1) <= 5000).all()
    ref_score, ref_per_class = reference(x, codes)
    res = graph_convexity(x, labels, processes=2)
    assert abs(res.score - ref_score) <= tol, (res.score, ref_score)
    for c, name in enumerate(classes.tolist()):
        assert abs(res.per_class[name] - ref_per_class[c]) <= tol, (name, res.per_class[name], ref_per_class[c])
    return res.score - ref_score


def test_agrees_with_nnconvexity_on_overlapping_blobs() -> None:
    x, y = blobs(4, 30, 20, spread=0.4, seed=0)
    assert abs(assert_agrees(x, y)) <= 0.006  # measured: identical up to the reference's rounding to 0.01


def test_agrees_with_nnconvexity_on_a_6d_latent_in_768d() -> None:
    x, y = latent_768(5, 40, seed=3)
    assert abs(assert_agrees(x, np.array(list("vwxyz"))[y])) <= 0.006


@pytest.mark.real_weights
@pytest.mark.shared_data
def test_agrees_with_nnconvexity_on_whisper_tiny_fsdd(whisper_tiny_dir, shared_data, tmp_path) -> None:
    """Real features: Whisper tiny.en (3 s window, mean pooling) on takes 0–2 of FSDD's official test split
    (180 clips: 18 per word, 30 per speaker, so both implementations score every ordered pair); the last state and
    a middle state. (Extraction dominates the cost; all 300 test clips measured the same agreement, ≤ 0.005.)"""
    from speechprune.data.sources import load_audiofolder
    from speechprune.features import extract_features
    from speechprune.models import load_encoder

    ds = load_audiofolder(shared_data / "fsdd", label_columns=["word", "speaker"], group_column="speaker")
    keep = [i for i, it in enumerate(ds.items) if it.labels["split"] == "test" and int(it.labels["take"]) < 3]
    ds = ds.subset(keep, name="fsdd-test-takes0-2")
    assert len(ds) == 180
    enc = load_encoder(str(whisper_tiny_dir), window_seconds=3.0)
    last = enc.num_states - 1
    feats = extract_features(enc, ds, pooling="mean", layers=[last // 2, last], batch_size=8,
                             cache_dir=tmp_path, progress=False)
    for state in (last // 2, last):
        x = feats.layer(state)
        for column in ("word", "speaker"):
            assert abs(assert_agrees(x, np.array(feats.labels[column]))) <= 0.5
    rows = convexity_by_layer(feats, "word", n_permutations=1)
    assert rows[-1]["score"] > rows[-1]["chance"] + 20  # words form convex regions in Whisper's top layer


def test_convexity_row_cap_scores_the_seeded_subset_and_records_it() -> None:
    """``max_rows`` scores exactly the rows of the seeded subset (same result as passing that subset alone), the
    same rows for every state and label, and each result row says how many rows were used."""
    from speechprune.analysis.convexity import convexity_by_labels, subset_rows
    from speechprune.features.store import LayerFeatures

    rng = np.random.default_rng(5)
    n = 400
    word = rng.integers(0, 3, n)
    spk = rng.integers(0, 4, n)
    states = np.stack([(np.eye(3)[word] @ rng.standard_normal((3, 16)) * 3 + rng.standard_normal((n, 16)))
                       for _ in range(2)]).astype(np.float32)
    labels = {"word": [f"w{v}" for v in word], "spk": [f"s{v}" for v in spk]}
    feats = LayerFeatures(states=states, layers=[0, 1], item_index=np.arange(n), labels=labels,
                          groups=[None] * n, pooling="mean")
    capped = convexity_by_labels(feats, ["word", "spk"], max_rows=150, seed=3, max_pairs_per_class=200,
                                 processes=1)
    rows = subset_rows(n, 150, 3)
    assert rows is not None and len(rows) == 150 and len(set(rows.tolist())) == 150
    sub = LayerFeatures(states=states[:, rows], layers=[0, 1], item_index=np.arange(150),
                        labels={k: [v[i] for i in rows] for k, v in labels.items()}, groups=[None] * 150,
                        pooling="mean")
    alone = convexity_by_labels(sub, ["word", "spk"], seed=3, max_pairs_per_class=200, processes=1)
    for lab in ("word", "spk"):
        assert [r["score"] for r in capped[lab]] == [r["score"] for r in alone[lab]]
        assert all(r["rows"] == 150 for r in capped[lab]) and all(r["rows"] == 150 for r in alone[lab])
    full = convexity_by_labels(feats, ["word"], max_rows=10_000, seed=3, max_pairs_per_class=200, processes=1)
    assert subset_rows(n, 10_000, 3) is None and all(r["rows"] == n for r in full["word"])
    with pytest.raises(SpeechpruneError, match="max_rows must be at least 2"):
        convexity_by_labels(feats, ["word"], max_rows=1)


def test_non_contiguous_features_give_the_same_graph() -> None:
    """A column-fancy-indexed or Fortran-ordered array (what ``states[:, rows]`` gives) once failed to compile in
    the finite check; it must give the same kNN graph as its C-ordered copy."""
    from speechprune.analysis.convexity import knn_graph

    x = np.random.default_rng(0).standard_normal((120, 9)).astype(np.float32)
    ref = knn_graph(np.ascontiguousarray(x), 5)
    for view in (np.asfortranarray(x), np.stack([x, x])[:, np.arange(120)][0], x[:, ::1].T.copy().T):
        got = knn_graph(view, 5)
        assert (got != ref).nnz == 0


def test_chance_pairs_bound_the_baseline_pairs_and_keep_its_expectation() -> None:
    """``chance_pairs_per_class`` changes only the permutation baselines: the real score is untouched, the rows
    record the pairs used (never more than max_pairs_per_class), and the chance level stays near the full one."""
    from speechprune.analysis.convexity import convexity_by_labels
    from speechprune.features.store import LayerFeatures

    rng = np.random.default_rng(8)
    n = 300
    word = rng.integers(0, 3, n)
    x = (np.eye(3)[word] @ rng.standard_normal((3, 12)) * 3 + rng.standard_normal((n, 12))).astype(np.float32)
    feats = LayerFeatures(states=x[None], layers=[0], item_index=np.arange(n), labels={"w": list(word)},
                          groups=[None] * n, pooling="mean")
    kw = dict(n_permutations=4, max_pairs_per_class=400, seed=1, processes=1)
    full = convexity_by_labels(feats, ["w"], **kw)["w"][0]
    fewer = convexity_by_labels(feats, ["w"], chance_pairs_per_class=100, **kw)["w"][0]
    capped = convexity_by_labels(feats, ["w"], chance_pairs_per_class=10_000, **kw)["w"][0]
    assert fewer["score"] == full["score"] and capped["chance"] == full["chance"]
    assert (full["chance_pairs_per_class"], fewer["chance_pairs_per_class"], capped["chance_pairs_per_class"]) == (
        400, 100, 400)
    assert fewer["chance"] != full["chance"]
    assert abs(fewer["chance"] - full["chance"]) < 4 * (fewer["chance_std"] + full["chance_std"]) + 1.0
    with pytest.raises(SpeechpruneError, match="max_pairs_per_class must be a positive integer"):
        convexity_by_labels(feats, ["w"], chance_pairs_per_class=0, **kw)
