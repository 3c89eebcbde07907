"""Linear probes: separable data is decoded, shuffled labels fall to chance, folds respect groups."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.analysis.probes import linear_probe, probes_by_layer
from speechprune.data.splits import cv_folds
from speechprune.errors import SpeechpruneError
from speechprune.features.store import LayerFeatures


def blobs(n_per: int = 30, n_cls: int = 4, d: int = 8, sep: float = 6.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_cls, d)) * sep
    y = np.repeat(np.arange(n_cls), n_per)
    return centres[y] + rng.standard_normal((len(y), d)), y.astype(str)


def test_separable_classes_are_decoded_and_permutation_gives_chance() -> None:
    x, y = blobs()
    splits = cv_folds(y, n_splits=5, seed=0)
    assert linear_probe(x, y, splits).accuracy > 0.97
    chance = np.mean([linear_probe(x, y, splits, permute_seed=s).accuracy for s in range(5)])
    assert 0.05 < chance < 0.45  # 4 balanced classes: chance 0.25


def test_group_aware_folds_never_share_a_group() -> None:
    x, y = blobs(n_per=40)
    groups = np.tile(np.arange(8), 20).astype(str)
    splits = cv_folds(y, groups=groups, n_splits=4, seed=1)
    assert len(splits) == 4
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
    covered = np.sort(np.concatenate([te for _, te in splits]))
    np.testing.assert_array_equal(covered, np.arange(len(y)))


def test_probe_errors() -> None:
    x, y = blobs(n_per=3)
    with pytest.raises(SpeechpruneError, match="fewer than 5 examples"):
        cv_folds(y, n_splits=5)
    with pytest.raises(SpeechpruneError, match="at least 4 groups"):
        cv_folds(y, groups=["a", "b"] * 6, n_splits=4)
    tr, te = np.arange(6), np.arange(6, 12)
    with pytest.raises(SpeechpruneError, match="never in the training rows"):
        cv_folds(y, split=(tr, te))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(SpeechpruneError, match="NaN"):
        linear_probe(bad, y, cv_folds(y, n_splits=3))


def test_probes_by_layer_rows_and_baselines() -> None:
    x_good, y = blobs()
    rng = np.random.default_rng(3)
    x_noise = rng.standard_normal(x_good.shape)
    feats = LayerFeatures(
        states=np.stack([x_noise, x_good]).astype(np.float32), layers=[0, 1], item_index=np.arange(len(y)),
        labels={"c": list(y)}, groups=[None] * len(y), pooling="mean",
    )
    rows = probes_by_layer(feats, "c", n_splits=4, n_permutations=2)
    assert [r["state"] for r in rows] == [0, 1]
    assert rows[1]["accuracy"] > 0.95 > 0.5 > rows[0]["accuracy"]
    assert all(abs(r["chance_accuracy"] - 0.25) < 0.2 and r["majority_accuracy"] <= 0.3 for r in rows)
    with pytest.raises(SpeechpruneError, match="no label column 'nope'"):
        probes_by_layer(feats, "nope")


def test_lbfgs_probe_matches_scikit_learn_logistic_regression() -> None:
    """The fast torch fit minimises scikit-learn's objective: same weights (to optimiser tolerance) and the same
    predictions on held-out rows."""
    from sklearn.linear_model import LogisticRegression

    from speechprune.analysis.probes import fit_logistic_regression

    x, y = blobs(n_per=40, n_cls=5, d=20, sep=1.5, seed=4)  # overlapping classes: a non-trivial optimum
    x = (x - x.mean(0)) / x.std(0)
    classes, codes = np.unique(y, return_inverse=True)
    tr, te = np.arange(0, 200, 2), np.arange(1, 200, 2)
    ref = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(x[tr], codes[tr])
    w, b = fit_logistic_regression(x[tr], codes[tr], len(classes), c=0.5)
    # multinomial weights are defined up to a per-feature constant shift across classes: compare centred
    np.testing.assert_allclose(w.T - w.T.mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-4)
    pred = np.argmax(x[te] @ w + b, axis=1)
    assert (pred == ref.predict(x[te])).mean() == 1.0
