"""Issue 18's kernels against independent references: the exact kNN (dense and symmetric schemes) vs float64
brute force, the compiled bidirectional shortest paths vs scipy's Dijkstra, fp32 CKA vs float64 and the Gram
form, the multi-label convexity entry point, and the ``device=`` parameter (run on the CPU here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial.distance import cdist

from speechprune.analysis import knn as knn_module
from speechprune.analysis import paths
from speechprune.analysis.convexity import (
    convexity_by_labels,
    convexity_by_layer,
    knn_graph,
)
from speechprune.analysis.knn import block_rows, knn
from speechprune.analysis.knn_kernels import list_hits
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


def _ref_ip(x: np.ndarray, k: int, normalize: bool) -> np.ndarray:
    """float64 inner-product neighbours, ties by index. On integer data every dot product is exact and the
    normalised scores are formed as the float64 check forms them (dot · 1/‖x_q‖ · 1/‖x_c‖), so exact ties stay
    exact ties here and there."""
    s = x @ x.T
    if normalize:
        inv = 1.0 / np.maximum(np.sqrt((x * x).sum(axis=1)), 1e-12)
        s = s * inv[:, None] * inv[None, :]
    s = -s
    np.fill_diagonal(s, np.inf)
    return np.argsort(s, axis=1, kind="stable")[:, :k]


def _tied_data(n: int, d: int, seed: int) -> np.ndarray:
    """Small integers (exact float64 products, many exact ties) with duplicated rows and a scaled copy (a cosine
    tie with a different norm); the second half is the first negated, so the column means are exactly 0 and the
    Euclidean search's centring keeps every tie exact (with a mean such as 0.37 the centred float64 differences
    of tied integer points can differ in the last bit, and cdist's tie order is not the search's)."""
    rng = np.random.default_rng(seed)
    half = rng.integers(-2, 3, size=(n // 2, d)).astype(np.float64)
    half[1::7] = half[0]  # exact duplicates of row 0
    half[3] = 2 * half[5]  # same direction as row 5
    return np.concatenate([half, -half])


@pytest.mark.parametrize("n", [40, 300, 2100])  # 2 100: above ONE_BLOCK_MAX_ROWS, the default splits into blocks
def test_knn_block_size_never_changes_the_lists(n: int) -> None:
    """The small-N (one full product) and large-N (blocks on and above the diagonal) paths give identical lists,
    equal to float64 brute force with the index tie rule: exact ties, duplicate rows, k up to N − 1."""
    d = 6
    x = _tied_data(n, d, seed=n)
    blocks = sorted({block_rows(n), n, max(1, n // 3)} | ({13} if n < 100 else set()))
    ks = [1, 10, n - 1] if n <= 300 else [10]
    for metric, normalize in (("ip", True), ("ip", False), ("euclidean", False)):
        for k in ks:
            ref = _ref_ip(x, k, normalize) if metric == "ip" else _ref_euclidean(x, k)
            for block in blocks:
                got = knn(x, k, metric=metric, normalize=normalize, distances=False, block=block).indices
                np.testing.assert_array_equal(got, ref, err_msg=f"{metric} normalize={normalize} k={k} b={block}")
                sets = knn(x, k, metric=metric, normalize=normalize, distances=False, exact_order=False,
                           block=block).indices
                np.testing.assert_array_equal(np.sort(sets, axis=1), np.sort(ref, axis=1))


def test_knn_block_size_never_changes_continuous_float32_lists() -> None:
    """float32 features with near ties (rows nearly duplicated) and exact duplicates: every block size gives the
    lists of a float64 brute force."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    x[100:110] = x[99] + np.float32(1e-6) * rng.standard_normal((10, 32)).astype(np.float32)
    x[200] = x[201]
    x64 = x.astype(np.float64)
    ref = _ref_ip(x64, 12, normalize=True)
    for block in (block_rows(500), 500, 123, 17):
        got = knn(x, 12, metric="ip", normalize=True, distances=False, block=block).indices
        np.testing.assert_array_equal(got, ref, err_msg=f"block={block}")


def test_block_rows_choice() -> None:
    assert block_rows(1000) == 1000  # small N: one block, the dense form's single product
    assert block_rows(knn_module.ONE_BLOCK_MAX_ROWS) == knn_module.ONE_BLOCK_MAX_ROWS
    assert block_rows(5000) == 1000  # middle: ≈ 1 024-row blocks
    assert block_rows(20000) == knn_module.DEFAULT_BLOCK
    for n in (1, 2, 2049, 5000, 8192, 8193, 50000):
        b = block_rows(n)
        assert 1 <= b <= max(n, 1) and -(-n // b) * b >= n


def test_mutual_knn_independent_of_block_choice(monkeypatch) -> None:
    """mutual_knn_matrix and neighbour_lists do not depend on the block size the search picks for N."""
    rng = np.random.default_rng(3)
    states = [_tied_data(150, 5, seed=s) for s in range(2)] + [rng.standard_normal((150, 5)).astype(np.float32)]
    want = mutual_knn_matrix(states, k=6)
    lists = neighbour_lists(states, 6)
    for block in (7, 64, 149):
        monkeypatch.setattr(knn_module, "block_rows", lambda n, b=block: b)
        np.testing.assert_array_equal(mutual_knn_matrix(states, k=6), want)
        for a, b in zip(neighbour_lists(states, 6), lists, strict=True):
            np.testing.assert_array_equal(a, b)
    for x, got in zip(states, lists, strict=True):
        np.testing.assert_array_equal(got, _ref_ip(np.asarray(x, dtype=np.float64), 6, normalize=True))


def test_list_hits_equals_set_intersections() -> None:
    rng = np.random.default_rng(5)
    a = np.stack([rng.permutation(50)[:8] for _ in range(300)])
    b = np.stack([rng.permutation(50)[:8] for _ in range(300)])
    want = sum(len(set(p) & set(q)) for p, q in zip(a, b, strict=True))
    assert list_hits(a, b) == want
    assert list_hits(a.astype(np.int32), b.astype(np.int32)) == want
    assert list_hits(a[:, :5], b[:, :5]) == sum(len(set(p[:5]) & set(q[:5])) for p, q in zip(a, b, strict=True))
    assert list_hits(a, b.astype(np.int32)) == want  # mixed dtypes: the numpy fallback


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
