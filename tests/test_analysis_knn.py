"""The exact blocked kNN against a dense float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from speechprune.analysis.knn import knn
from speechprune.errors import SpeechpruneError


@pytest.mark.parametrize("block", [7, 2048])
def test_matches_dense_cdist(block: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)) * 50 + 1000  # large offset: the centring + float64 refinement matter
    nb = knn(x, 10, block=block)
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    ref = np.argsort(d, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(nb.indices, ref)
    np.testing.assert_allclose(nb.distances, np.take_along_axis(d, ref, 1), rtol=1e-10)


def test_inner_product_metric() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 8))
    nb = knn(x, 5, metric="ip", block=50)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(nb.indices, ref)


def test_duplicates_are_skipped_when_asked() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((40, 4))
    x = np.concatenate([base, base[:5], base[:5]])  # points 0-4 appear three times
    nb = knn(x, 3, exclude_duplicates=True, margin=0)  # margin 0 forces the duplicate fallback path
    assert (nb.distances > 0).all()
    with_dups = knn(x, 3)
    assert (with_dups.distances[:5, :2] == 0).all()


def test_errors() -> None:
    with pytest.raises(SpeechpruneError, match="only 4 other points"):
        knn(np.zeros((5, 2)), 10)
    bad = np.ones((10, 2))
    bad[3, 1] = np.nan
    with pytest.raises(SpeechpruneError, match="NaN"):
        knn(bad, 2)
