"""Issue 18's kernels against independent references: the exact kNN (dense and symmetric schemes) vs float64
brute force, the compiled bidirectional shortest paths vs scipy's Dijkstra, fp32 CKA vs float64 and the Gram
form, the multi-label convexity entry point, and the ``device=`` parameter (run on the CPU here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial.distance import cdist

from speechprune.analysis import paths
from speechprune.analysis.convexity import (
    convexity_by_labels,
    convexity_by_layer,
    knn_graph,
)
from speechprune.analysis.knn import knn
from speechprune.analysis.similarity import (
    StreamingCKA,
    cka_gram,
    cka_matrices,
    mutual_knn_matrix,
    neighbour_lists,
)
from speechprune.features import LayerFeatures

# ----------------------------------------------------------------------------------------------------- kNN


def _ref_euclidean(x: np.ndarray, k: int) -> np.ndarray:
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]  # ties: smaller index first


@pytest.mark.parametrize("symmetric", [None, False, True])  # None: the compiled CPU merges
@pytest.mark.parametrize("block", [64, 1000])
def test_knn_schemes_equal_float64_brute_force(symmetric: bool, block: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24)) * 30 + 500  # offset: centring and the float64 check matter
    x[10] = x[11]  # an exact duplicate: a tie at distance 0
    nb = knn(x, 7, symmetric=symmetric, block=block)
    ref = _ref_euclidean(x, 7)
    np.testing.assert_array_equal(nb.indices, ref)
    np.testing.assert_allclose(nb.distances, np.take_along_axis(cdist(x, x), ref, 1), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("symmetric", [None, False, True])  # None: the compiled CPU merges
def test_knn_inner_product_normalised_and_set_only(symmetric: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    f = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :9]
    ordered = knn(x, 9, metric="ip", normalize=True, distances=False, symmetric=symmetric, block=100).indices
    np.testing.assert_array_equal(ordered, ref)
    sets = knn(x, 9, metric="ip", normalize=True, distances=False, exact_order=False, symmetric=symmetric,
               block=100).indices
    np.testing.assert_array_equal(np.sort(sets, axis=1), np.sort(ref, axis=1))


def test_knn_exact_ties_are_broken_by_index() -> None:
    """Integer grid points: many neighbours at exactly equal distances, on both schemes."""
    g = np.stack(np.meshgrid(np.arange(12), np.arange(12)), -1).reshape(-1, 2).astype(np.float64)
    for symmetric in (None, False, True):
        nb = knn(g, 4, symmetric=symmetric, block=50)
        np.testing.assert_array_equal(nb.indices, _ref_euclidean(g, 4))


def test_knn_device_argument_on_cpu() -> None:
    x = np.random.default_rng(2).standard_normal((200, 8))
    a = knn(x, 5)
    b = knn(x, 5, device="cpu")
    np.testing.assert_array_equal(a.indices, b.indices)
    lists = neighbour_lists([x, x], 5, device="cpu")
    np.testing.assert_array_equal(lists[0], lists[1])
    assert mutual_knn_matrix([x, x[::-1].copy()], 5, device="cpu")[0, 0] == 1.0


# ----------------------------------------------------------------------------------------------- paths


def _random_graph(n: int, seed: int) -> sparse.csr_matrix:
    x = np.random.default_rng(seed).standard_normal((n, 3))
    return knn_graph(x, 4)


@pytest.mark.skipif(not paths.HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("threads", [1, 2])
def test_bidirectional_paths_equal_scipy_dijkstra(threads: int) -> None:
    g = _random_graph(300, 3)
    rng = np.random.default_rng(4)
    us, vs = rng.integers(0, 300, 400), rng.integers(0, 300, 400)
    codes = rng.integers(0, 3, 300)
    cls = codes[us]
    score, interior, length, settled = paths.pair_paths(g.indptr, g.indices, g.data, codes, us, vs, cls,
                                                        threads=threads)
    dist, pred = dijkstra(g, directed=False, indices=us, return_predecessors=True)
    expect_len = dist[np.arange(len(us)), vs]
    np.testing.assert_allclose(length, expect_len, rtol=1e-12)
    assert settled > 0
    for i, (u, v) in enumerate(zip(us.tolist(), vs.tolist(), strict=True)):
        if not np.isfinite(expect_len[i]):
            assert interior[i] == -1 and score[i] == 0.0
            continue
        path = [v]
        while path[-1] != u:
            path.append(pred[i, path[-1]])
        inner = path[1:-1]
        assert interior[i] == len(inner)  # real-valued weights: the shortest path is unique
        want = 1.0 if not inner else sum(codes[j] == cls[i] for j in inner) / len(inner)
        assert score[i] == pytest.approx(want, abs=0)


@pytest.mark.skipif(not paths.HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("dim", [3, 40])
def test_astar_paths_equal_plain_dijkstra_with_fewer_settled_vertices(dim: int) -> None:
    """The A* bound from the principal projection changes only how much is searched, never the answer (lengths
    and scores equal the unguided search), also when the projection keeps only part of the variance (dim 40)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((600, dim)) * np.linspace(3.0, 0.2, dim)
    g = knn_graph(x, 5)
    us, vs = rng.integers(0, 600, 500), rng.integers(0, 600, 500)
    codes = rng.integers(0, 3, 600)
    coords = paths.projection(x, rank=min(dim, 8))
    assert coords.shape[0] == 600 and 1 <= coords.shape[1] <= min(dim, 8)  # fewer axes if they hold 99.5 %
    d = cdist(coords[:50], coords[:50])
    assert (d <= cdist(x[:50], x[:50]) + 1e-12).all()  # a lower bound on every straight line
    plain = paths.pair_paths(g.indptr, g.indices, g.data, codes, us, vs, codes[us])
    guided = paths.pair_paths(g.indptr, g.indices, g.data, codes, us, vs, codes[us], coords=coords, threads=2)
    np.testing.assert_allclose(guided[2], plain[2], rtol=1e-12)
    np.testing.assert_array_equal(guided[0], plain[0])
    np.testing.assert_array_equal(guided[1], plain[1])
    assert guided[3] < plain[3]


@pytest.mark.skipif(not paths.HAVE_NUMBA, reason="numba not installed")
def test_paths_are_symmetric_and_independent_of_threads() -> None:
    g = _random_graph(250, 5)
    rng = np.random.default_rng(6)
    us, vs = rng.integers(0, 250, 300), rng.integers(0, 250, 300)
    codes = rng.integers(0, 2, 250)
    one = paths.pair_paths(g.indptr, g.indices, g.data, codes, us, vs, codes[us], threads=1)
    two = paths.pair_paths(g.indptr, g.indices, g.data, codes, us, vs, codes[us], threads=2, pieces_per_thread=7)
    back = paths.pair_paths(g.indptr, g.indices, g.data, codes, vs, us, codes[us], threads=1)
    for a, b in zip(one[:3], two[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one[1], back[1])  # same number of interior vertices both ways
    np.testing.assert_allclose(one[2], back[2], rtol=1e-12)


def test_convexity_by_labels_builds_each_graph_once_and_matches_per_label(monkeypatch) -> None:
    import speechprune.analysis.convexity as conv

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 90, 6)).astype(np.float32)
    feats = LayerFeatures(states=x, layers=[0, 1], item_index=np.arange(90),
                          labels={"a": [f"a{v}" for v in rng.integers(0, 3, 90)],
                                  "b": [f"b{v}" for v in rng.integers(0, 2, 90)]},
                          groups=[None] * 90, pooling="mean")
    calls = []
    real = conv.knn_graph
    monkeypatch.setattr(conv, "knn_graph", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    both = convexity_by_labels(feats, ["a", "b"], n_permutations=1, processes=1)
    assert len(calls) == 2  # one graph per state, shared by the two labels
    for label in ("a", "b"):
        single = convexity_by_layer(feats, label, n_permutations=1, processes=1)
        assert [r["score"] for r in single] == [r["score"] for r in both[label]]
        assert [r["chance"] for r in single] == [r["chance"] for r in both[label]]


# ------------------------------------------------------------------------------------------------- CKA


def _states(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 20))
    out = [base]
    for _ in range(3):
        out.append(out[-1] @ (np.eye(20) + 0.5 * rng.standard_normal((20, 20))) + 0.5 * rng.standard_normal((n, 20)))
    return (np.stack(out) + 50.0).astype(np.float32)  # an offset: centring must be exact


def test_fp32_cka_within_1e6_of_float64_and_gram() -> None:
    st = _states(3000, 8)
    fast = cka_matrices(st, precision="float32")
    exact = cka_matrices(st, precision="float64")
    for deb in (False, True):
        assert np.max(np.abs(fast[deb] - exact[deb])) <= 1e-6
        assert exact[deb][1, 3] == pytest.approx(cka_gram(st[1], st[3], debiased=deb), abs=1e-9)


def test_cka_independent_of_batching_and_chunks() -> None:
    st = _states(1500, 9)
    a = cka_matrices(st, batch_rows=4096)
    b = cka_matrices(st, batch_rows=97)
    for deb in (False, True):
        np.testing.assert_array_equal(a[deb], b[deb])  # fixed chunks from row 0, exact means: bit-identical
    small = StreamingCKA(4, precision="float32", chunk_rows=256, shift=[s.mean(0) for s in st])
    small.update(list(st))
    np.testing.assert_allclose(small.matrix(debiased=True), a[True], atol=1e-6)


def test_cka_device_argument_on_cpu() -> None:
    st = _states(500, 10)
    a = cka_matrices(st)
    b = cka_matrices(st, device="cpu")
    for deb in (False, True):
        np.testing.assert_array_equal(a[deb], b[deb])
