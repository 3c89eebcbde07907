"""Layer similarity: cosine, linear CKA (streaming feature-space form vs the Gram reference), mutual kNN,
shuffled-pairing baselines, labelled outputs and input errors."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.analysis.similarity import (
    SimilarityMatrix,
    SimilarityWarning,
    StreamingCKA,
    cka_gram,
    cka_matrices,
    cka_matrix,
    cosine_matrix,
    linear_cka,
    mutual_knn_matrix,
    mutual_knn_sweep,
    neighbour_lists,
    save_matrices,
    shuffled_pairing_baseline,
    similarity_matrices,
)
from speechprune.errors import SpeechpruneError
from speechprune.features.store import LayerFeatures


def related(n: int, d: int, seed: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """X and a noisy linear image of it: clearly related representations."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, x @ rng.standard_normal((d, d)) + noise * rng.standard_normal((n, d))


def stack_features(n: int = 120, d: int = 16, seed: int = 0, layers: list[int] | None = None) -> LayerFeatures:
    """Five states drifting away from the first, as float32 like real cached features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    states = [x]
    for _ in range(4):
        states.append(states[-1] @ (np.eye(d) + 0.4 * rng.standard_normal((d, d))) + 0.3 * rng.standard_normal((n, d)))
    layers = layers if layers is not None else list(range(5))
    return LayerFeatures(states=np.stack(states).astype(np.float32), layers=layers,
                         item_index=np.repeat(np.arange(n // 4), 4), labels={}, groups=[None] * n, pooling="frames")


# ---------------------------------------------------------------- CKA


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one(debiased: bool) -> None:
    x, _ = related(50, 12, 0)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert cka_gram(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariant_to_rotation_and_isotropic_scaling_not_anisotropic(debiased: bool) -> None:
    x, y = related(200, 10, 1)
    ref = linear_cka(x, y, debiased=debiased)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((10, 10)))
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, 7.5 * y, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x + 3.0, y - 11.0, debiased=debiased) == pytest.approx(ref, abs=1e-10)  # centring
    aniso = x * np.array([20.0] + [1.0] * 9)  # stretch one direction
    assert abs(linear_cka(aniso, y, debiased=debiased) - ref) > 0.1


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(("n", "d", "offset"), [(200, 30, 0.0), (200, 30, 1e3), (40, 90, 0.0), (40, 90, 1e3)])
def test_feature_space_matches_gram_reference(debiased: bool, n: int, d: int, offset: float) -> None:
    x, y = related(n, d, 3)
    x, y = x + offset, y - 2 * offset
    gram = cka_gram(x - x.mean(0), y - y.mean(0), debiased=debiased)  # the reference on centred data
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(gram, abs=1e-6)
    assert cka_gram(x, y, debiased=debiased) == pytest.approx(gram, abs=1e-6)  # centring inside the reference


def test_streaming_over_batches_equals_one_shot() -> None:
    feats = stack_features(n=101)
    one = cka_matrices(feats.states, batch_rows=10_000)
    for rows in (7, 50):
        many = cka_matrices(feats.states, batch_rows=rows)
        for deb in (False, True):
            np.testing.assert_allclose(many[deb], one[deb], rtol=0, atol=1e-10)
    acc = StreamingCKA(2)  # uneven batches fed by hand
    x, y = related(90, 8, 4)
    for a, b in ((0, 1), (1, 6), (6, 7), (7, 90)):  # a 1-row first batch sets the shift
        acc.update([x[a:b] + 100.0, y[a:b]])
    assert acc.n_rows == 90
    assert acc.cka(0, 1, debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-10)


def test_float32_gemm_option_is_close() -> None:
    feats = stack_features(n=400, d=32)
    exact = cka_matrix(feats.states)
    fast = cka_matrix(feats.states, precision="float32", batch_rows=64)
    np.testing.assert_allclose(fast, exact, atol=1e-4)


def test_float32_cpu_products_over_many_chunks_and_mixed_widths_match_float64(monkeypatch) -> None:
    """The CPU fp32 path (numpy/OpenBLAS products into one reused buffer, float64 sums) over several chunks and
    states of different widths equals float64; its BLAS runs on torch's thread count."""
    import threadpoolctl
    import torch

    rng = np.random.default_rng(3)
    base = rng.standard_normal((300, 12))
    states = [base[:, :5] + 3.0, base @ rng.standard_normal((12, 20)), np.tanh(base[:, 2:11])]
    exact, fast = StreamingCKA(3), StreamingCKA(3, precision="float32", chunk_rows=64)
    seen: list[int] = []
    product = StreamingCKA._host_product

    def spy(self, left, right):
        seen.extend(p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
        return product(self, left, right)

    monkeypatch.setattr(StreamingCKA, "_host_product", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for lo in range(0, 300, 70):
            exact.update([x[lo:lo + 70] for x in states])
            fast.update([x[lo:lo + 70].astype(np.float32) for x in states])
        for deb in (False, True):
            np.testing.assert_allclose(fast.matrix(debiased=deb), exact.matrix(debiased=deb), atol=1e-6)
    finally:
        torch.set_num_threads(old)
    assert seen and set(seen) == {1}


def test_cka_matrix_is_symmetric_with_unit_diagonal_and_matches_pairs() -> None:
    feats = stack_features()
    for deb in (False, True):
        m = cka_matrix(feats.states, debiased=deb, batch_rows=33)
        np.testing.assert_array_equal(m, m.T)
        np.testing.assert_array_equal(np.diag(m), 1.0)
        assert m[1, 3] == pytest.approx(cka_gram(feats.states[1], feats.states[3], debiased=deb), abs=1e-6)


def test_constant_state_gives_nan_with_warning() -> None:
    feats = stack_features()
    states = feats.states.copy()
    states[2] = 0.3  # a dead layer
    with pytest.warns(SimilarityWarning, match="state.* 2 .*zero variance"):
        m = cka_matrix(states)
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()
    assert np.isfinite(np.delete(np.delete(m, 2, 0), 2, 1)).all()
    with pytest.warns(SimilarityWarning):
        assert np.isnan(cka_gram(states[2], states[0]))


# ---------------------------------------------------------------- cosine


def test_cosine_identical_states_is_one_and_matches_manual_mean() -> None:
    feats = stack_features()
    m = cosine_matrix(feats.states, batch_rows=17)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_array_equal(m, m.T)
    a, b = feats.states[0].astype(np.float64), feats.states[3].astype(np.float64)
    manual = np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert m[0, 3] == pytest.approx(manual, abs=1e-12)
    assert cosine_matrix([a, a.copy(), 2 * a])[0, 2] == pytest.approx(1.0, abs=1e-12)


def test_cosine_by_clip_flattens_frames() -> None:
    feats = stack_features()
    m = cosine_matrix(feats.states, groups=feats.item_index)
    a, b = feats.states[1].astype(np.float64), feats.states[4].astype(np.float64)
    per_clip = [np.dot(a[g].ravel(), b[g].ravel()) / (np.linalg.norm(a[g]) * np.linalg.norm(b[g]))
                for g in (feats.item_index == c for c in np.unique(feats.item_index))]
    assert m[1, 4] == pytest.approx(np.mean(per_clip), abs=1e-12)
    assert m[1, 4] != pytest.approx(cosine_matrix(feats.states)[1, 4], abs=1e-6)


def test_cosine_zero_rows_warn() -> None:
    x = np.random.default_rng(0).standard_normal((10, 4))
    z = x.copy()
    z[3] = 0
    with pytest.warns(SimilarityWarning, match="zero norm"):
        m = cosine_matrix([x, z])
    assert np.isnan(m[0, 1]) and m[0, 0] == pytest.approx(1.0)


# ---------------------------------------------------------------- mutual kNN


def test_mutual_knn_self_is_one_and_independent_is_chance() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((500, 8)), rng.standard_normal((500, 8))
    m = mutual_knn_matrix([x, x.copy(), y], k=10)
    assert m[0, 1] == 1.0
    np.testing.assert_array_equal(np.diag(m), 1.0)
    np.testing.assert_array_equal(m, m.T)
    assert abs(m[0, 2] - 10 / 499) < 0.01


def test_mutual_knn_matches_brute_force_platonic_definition() -> None:
    x, y = related(80, 6, 6, noise=1.0)

    def lists(f: np.ndarray, k: int) -> np.ndarray:  # platonic-rep: normalise, inner product, self excluded
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = f @ f.T
        np.fill_diagonal(s, -1e8)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    la, lb = lists(x, 5), lists(y, 5)
    expected = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(la, lb, strict=True)])
    assert mutual_knn_matrix([x, y], k=5)[0, 1] == pytest.approx(expected)
    assert 0.1 < expected < 0.9


def test_k_sweep_reuses_one_search_and_matches_single_k() -> None:
    feats = stack_features()
    sweep = mutual_knn_sweep(feats.states, ks=(2, 5, 20))
    assert sorted(sweep) == [2, 5, 20]
    np.testing.assert_array_equal(sweep[5], mutual_knn_matrix(feats.states, k=5))
    eu = mutual_knn_sweep(feats.states, ks=(4,), metric="euclidean", normalize=False)[4]
    np.testing.assert_array_equal(eu, mutual_knn_matrix(feats.states, k=4, metric="euclidean", normalize=False))


# ---------------------------------------------------------------- baselines


def test_shuffled_baseline_near_chance_while_true_value_is_high() -> None:
    x, y = related(3000, 6, 7, noise=0.3)
    states = [x, y]
    true = cka_matrix(states)[0, 1]
    base = shuffled_pairing_baseline(states, "cka", n_permutations=3, seed=1)
    assert true > 0.6
    assert np.all(np.abs(base) < 0.01)  # ≈ D/N for biased CKA
    base_deb = shuffled_pairing_baseline(states, "cka_debiased", n_permutations=3, seed=1)
    assert np.all(np.abs(base_deb) < 0.005)
    knn_base = shuffled_pairing_baseline(states, "mutual_knn", n_permutations=3, seed=1, k=10)
    assert np.all(np.abs(knn_base - 10 / 2999) < 0.003)
    assert mutual_knn_matrix(states, k=10)[0, 1] > 0.15  # ≈ 70 × chance


@pytest.mark.parametrize("metric", ["cka", "cka_debiased", "cosine", "mutual_knn"])
def test_baseline_equals_explicit_re_pairing(metric: str) -> None:
    """The relabelled neighbour lists / gathered batches give exactly what re-pairing the raw rows gives."""
    feats = stack_features(n=60, d=6)
    xs = [s.astype(np.float64) for s in feats.states[:3]]
    got = shuffled_pairing_baseline(xs, metric, n_permutations=2, seed=3, k=4, batch_rows=13, return_all=True)
    rng = np.random.default_rng(3)
    for p in range(2):
        perms = [rng.permutation(60) for _ in range(3)]
        for i in range(3):
            for j in range(i, 3):
                a, b = xs[i][perms[i]], (xs[j][perms[j]] if j != i else xs[i])
                if metric == "mutual_knn":
                    want = mutual_knn_matrix([a, b], k=4)[0, 1]
                elif metric == "cosine":
                    want = cosine_matrix([a, b])[0, 1]
                else:
                    want = cka_gram(a, b, debiased=metric == "cka_debiased")
                assert got[p, i, j] == pytest.approx(want, abs=1e-9), (p, i, j)


# ---------------------------------------------------------------- all matrices, outputs


def test_similarity_matrices_labelled_symmetric_unit_diagonal(tmp_path) -> None:
    feats = stack_features(layers=[3, 4, 5, 6, 7])
    out = similarity_matrices(feats, k=5, baseline_permutations=2, knn_max_rows=100)
    assert set(out) == {"cosine", "cka", "cka_debiased", "mutual_knn", "cosine_baseline", "cka_baseline",
                        "cka_debiased_baseline", "mutual_knn_baseline"}
    for name in ("cosine", "cka", "cka_debiased", "mutual_knn"):
        m = out[name]
        assert m.states == [3, 4, 5, 6, 7]
        np.testing.assert_array_equal(m.values, m.values.T)
        np.testing.assert_allclose(np.diag(m.values), 1.0, atol=1e-12)
        assert out[f"{name}_baseline"].values.mean() < m.values.mean()
    assert out["mutual_knn"].params["rows"] == 100 and out["cka"].params["rows"] == 120
    assert out["cka"].value(4, 6) == out["cka"].values[1, 3]

    paths = save_matrices(out, tmp_path)
    assert len(paths) == 16
    lines = (tmp_path / "cka.csv").read_text().splitlines()
    assert lines[0] == "state,3,4,5,6,7"
    assert [line.split(",")[0] for line in lines[1:]] == ["3", "4", "5", "6", "7"]
    back = SimilarityMatrix.from_csv(tmp_path / "cka.csv")
    np.testing.assert_array_equal(back.values, out["cka"].values)
    np.testing.assert_array_equal(np.load(tmp_path / "cka.npy", allow_pickle=False), out["cka"].values)


def test_neighbour_lists_computed_once_per_state(monkeypatch) -> None:
    import speechprune.analysis.similarity as sim

    calls = []
    real = sim.knn
    monkeypatch.setattr(sim, "knn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    feats = stack_features()
    mutual_knn_matrix(feats.states, k=3)
    assert len(calls) == 5  # not 5 × 5


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors() -> None:
    feats = stack_features()
    bad = feats.states.copy()
    bad[3, 17, 2] = np.nan
    with pytest.raises(SpeechpruneError, match="state 3 has NaN or inf"):
        cka_matrix(bad)
    with pytest.raises(SpeechpruneError, match="state 3 has NaN or inf"):
        cosine_matrix(bad)
    with pytest.raises(SpeechpruneError, match="state 3 has NaN or inf"):
        mutual_knn_matrix(bad, k=3)
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(SpeechpruneError, match="more than 3 rows"):
        linear_cka(x, x, debiased=True)
    with pytest.raises(SpeechpruneError, match="more than 3 rows"):
        cka_gram(x, x, debiased=True)
    with pytest.raises(SpeechpruneError, match="k=120 with N=120"):
        mutual_knn_matrix(feats.states, k=120)
    with pytest.raises(SpeechpruneError, match="same number of rows"):
        cka_matrix([x, np.zeros((4, 4))])
    with pytest.raises(SpeechpruneError, match="S × N × D"):
        cka_matrix(np.zeros((4, 4)))
    with pytest.raises(SpeechpruneError, match="unknown similarity metric"):
        similarity_matrices(feats, metrics=("cka", "svcca"))
    with pytest.raises(SpeechpruneError, match="unknown similarity metric"):
        shuffled_pairing_baseline(feats.states, "euclid")
    with pytest.raises(SpeechpruneError, match="k must|k values|1 ≤ k"):
        neighbour_lists(feats.states, 0)
    with pytest.raises(SpeechpruneError, match="more than 3 rows"):
        cka_matrix([x, x], debiased=True)
    assert cka_matrices([x, x], debiased=(False,))[False][0, 1] == pytest.approx(1.0)  # biased is fine at N=3


def test_cosine_baseline_equals_the_cosine_of_explicitly_permuted_copies() -> None:
    """The streamed cosine baseline (rows gathered a batch at a time) against the definition: permuted copies of
    every state, per-row cosines averaged, with the generator drawn in the same order."""
    from speechprune.analysis.similarity import shuffled_pairing_baseline

    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2500, 12)).astype(np.float32) + 0.3 * i for i in range(3)]
    got = shuffled_pairing_baseline(xs, "cosine", 2, seed=9, return_all=True)
    draw = np.random.default_rng(9)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    for p in range(2):
        perms = [draw.permutation(2500) for _ in xs]
        for i in range(3):
            for j in range(3):
                want = cos(xs[i][perms[i]], xs[i]) if i == j else cos(xs[i][perms[i]], xs[j][perms[j]])
                assert got[p, i, j] == pytest.approx(want, abs=1e-12)


def test_knn_baseline_reuses_given_neighbour_lists() -> None:
    """similarity_matrices searches once and passes the lists to the baseline: same values as searching again;
    lists of the wrong shape are refused."""
    from speechprune.analysis.similarity import _lists, shuffled_pairing_baseline

    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((150, 6)) for _ in range(3)]
    lists = _lists(xs, 5, "ip", True, None, None, exact_order=False)
    again = shuffled_pairing_baseline(xs, "mutual_knn", 2, 7, k=5)
    shared = shuffled_pairing_baseline(xs, "mutual_knn", 2, 7, k=5, lists=lists)
    np.testing.assert_array_equal(again, shared)
    with pytest.raises(SpeechpruneError, match="neighbour lists of shape"):
        shuffled_pairing_baseline(xs, "mutual_knn", 2, 7, k=4, lists=lists)
