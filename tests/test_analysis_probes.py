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


def _shifted_blobs(n: int = 600, n_cls: int = 5, d: int = 24, seed: int = 7):
    """Overlapping classes with large offsets and one badly scaled column (what layer features look like), so that
    the Gram differences and the standardisation are exercised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_cls, d))
    y = rng.integers(0, n_cls, n)
    x = centres[y] + 1.5 * rng.standard_normal((n, d)) + 40.0
    x[:, 2] *= 300.0
    x[:, 5] = 3.0  # a constant column: its std is 0 and is replaced by 1, as in the logistic probe
    return x.astype(np.float32), np.array([f"c{v}" for v in y])


@pytest.mark.parametrize("grouped", [False, True])
def test_ridge_probe_matches_scikit_learn_ridge_classifier(grouped: bool) -> None:
    """Independent reference: StandardScaler + RidgeClassifier(alpha) fitted per fold by scikit-learn gives the same
    predictions (hence accuracy and macro-F1) as the closed-form probe built from Gram differences."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from speechprune.analysis.probes import ridge_probe

    x, y = _shifted_blobs()
    groups = np.arange(len(y)) % 12 if grouped else None
    splits = cv_folds(y, groups=groups, n_splits=4, seed=3)
    res, _ = ridge_probe(x, y, splits, alpha=2.0)
    for fold, (tr, te) in zip(res.folds, splits):
        ref = make_pipeline(StandardScaler(), RidgeClassifier(alpha=2.0)).fit(x[tr].astype(np.float64), y[tr])
        pred = ref.predict(x[te].astype(np.float64))
        assert fold["accuracy"] == pytest.approx(float(np.mean(pred == y[te])), abs=1e-12)
        assert fold["macro_f1"] == pytest.approx(f1_score(y[te], pred, average="macro"), abs=1e-12)
    assert 0.4 < res.accuracy < 0.95  # overlapping classes: neither trivial nor chance


def test_ridge_probe_permutations_match_refits_on_shuffled_labels() -> None:
    """The permutation results reuse one factorisation per fold; they equal fitting from scratch on the training
    labels shuffled exactly as the logistic probe shuffles them (seed + fold index), and sit near chance."""
    from speechprune.analysis.probes import _training_labels, ridge_probe

    x, y = _shifted_blobs(n=500)
    splits = cv_folds(y, n_splits=3, seed=0)
    _, shuffled = ridge_probe(x, y, splits, permute_seeds=[1001, 2001])
    for seed, res in zip([1001, 2001], shuffled):
        for k, (tr, te) in enumerate(splits):
            y_shuffled = y.copy()
            y_shuffled[tr] = _training_labels(y, tr, seed + k)
            # the test labels stay true: score the refit against y, not y_shuffled
            refit, _ = ridge_probe(np.concatenate([x[tr], x[te]]),
                                   np.concatenate([y_shuffled[tr], y[te]]),
                                   [(np.arange(len(tr)), np.arange(len(tr), len(tr) + len(te)))])
            assert res.folds[k]["accuracy"] == pytest.approx(refit.folds[0]["accuracy"], abs=1e-12)
    assert all(abs(r.accuracy - 0.2) < 0.12 for r in shuffled)  # 5 classes


def test_probe_choice_by_rows_and_recorded() -> None:
    from speechprune.analysis.probes import AUTO_RIDGE_ROWS, resolve_probe

    assert resolve_probe("auto", AUTO_RIDGE_ROWS) == "logistic"
    assert resolve_probe("auto", AUTO_RIDGE_ROWS + 1) == "ridge"
    assert resolve_probe("logistic", 10**6) == "logistic"
    with pytest.raises(SpeechpruneError, match="unknown probe 'svm'"):
        resolve_probe("svm", 10)
    x, y = blobs()
    feats = LayerFeatures(states=x[None].astype(np.float32), layers=[0], item_index=np.arange(len(y)),
                          labels={"c": list(y)}, groups=[None] * len(y), pooling="mean")
    ridge = probes_by_layer(feats, "c", n_splits=4, n_permutations=1, probe="ridge")
    logistic = probes_by_layer(feats, "c", n_splits=4, n_permutations=1)
    assert ridge[0]["probe"] == "ridge" and logistic[0]["probe"] == "logistic"
    assert ridge[0]["accuracy"] > 0.95 and logistic[0]["accuracy"] > 0.95


def test_probe_option_is_documented_with_the_threshold_and_checked_in_configs() -> None:
    """The CLI help states the auto threshold (the CLI does not import the probe module, so the number is written
    there: this keeps it equal to the constant), and a bad probe name is an error before any work."""
    import typer

    from speechprune.analysis.probes import AUTO_RIDGE_ROWS
    from speechprune.analysis.runner import AnalysisConfig
    from speechprune.cli.app import app

    from speechprune.pipeline.config import AnalysisSection

    analyze = typer.main.get_command(app).commands["analyze"]
    (option,) = [p for p in analyze.params if p.name == "probe"]
    assert f"ridge above {AUTO_RIDGE_ROWS:,} clips" in option.help
    # the other large-data default written in three places: the CLI flag, the API config and the run config
    for name in ("convexity_max_rows", "chance_pairs"):
        (flag,) = [p for p in analyze.params if p.name == name]
        assert flag.default == getattr(AnalysisConfig(labels=["c"]), name) == getattr(AnalysisSection(), name)
    with pytest.raises(SpeechpruneError, match="unknown probe 'lasso'"):
        AnalysisConfig(labels=["c"], probe="lasso").validate()
