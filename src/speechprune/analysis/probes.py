"""Per-layer linear probes: how linearly decodable a label is from each state.

Standardised multinomial logistic regression (scaler fitted on the training rows only), evaluated on a given
split or by cross-validation (folds from :func:`speechprune.data.splits.cv_folds`). When a group column is given (e.g. speaker), folds are group-aware so that no
speaker appears in both training and test data — otherwise speaker identity leaks into emotion or word scores.
A label-permutation baseline (labels shuffled within the training rows) gives the chance level next to every
score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from speechprune.data.splits import FoldPlan, Split, cv_folds, plan_folds  # noqa: F401  (re-exported)
from speechprune.errors import SpeechpruneError


@dataclass
class ProbeResult:
    """Scores of one probe (one state, one label), averaged over folds; ``folds`` keeps each fold's numbers."""

    accuracy: float
    macro_f1: float
    folds: list[dict[str, float]] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "accuracy_std": float(np.std([f["accuracy"] for f in self.folds])) if self.folds else 0.0,
            "n_folds": len(self.folds),
            "n_train": self.n_train,
            "n_test": self.n_test,
        }


def linear_probe(
    x: np.ndarray,
    labels: Sequence[str],
    splits: Sequence[Split],
    *,
    c: float = 1.0,
    max_iter: int = 1000,
    permute_seed: int | None = None,
) -> ProbeResult:
    """Fit and score a standardised logistic regression on each split.

    ``permute_seed`` shuffles the training labels (the chance baseline); test labels stay true.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise SpeechpruneError(f"features {x.shape} and {len(labels)} labels do not match")
    if not np.isfinite(x).all():
        raise SpeechpruneError("features contain NaN or inf values; cannot fit a probe")
    y = np.asarray(labels)
    folds = []
    for k, (train, test) in enumerate(splits):
        y_train = y[train]
        if len(set(y_train.tolist())) < 2:
            raise SpeechpruneError("a probe's training rows hold only one class; nothing to learn")
        if permute_seed is not None:
            y_train = np.random.default_rng(permute_seed + k).permutation(y_train)
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        classes, codes = np.unique(y_train, return_inverse=True)
        w, bias = fit_logistic_regression((x[train] - mean) / std, codes, len(classes), c=c, max_iter=max_iter)
        scores = ((x[test] - mean) / std) @ w + bias
        pred = classes[np.argmax(scores, axis=1)]
        folds.append(
            {
                "accuracy": float(accuracy_score(y[test], pred)),
                "macro_f1": float(f1_score(y[test], pred, average="macro", zero_division=0)),
            }
        )
    return ProbeResult(
        accuracy=float(np.mean([f["accuracy"] for f in folds])),
        macro_f1=float(np.mean([f["macro_f1"] for f in folds])),
        folds=folds,
        n_train=int(np.mean([len(tr) for tr, _ in splits])),
        n_test=int(np.mean([len(te) for _, te in splits])),
        classes=sorted(set(y.tolist())),
    )


def fit_logistic_regression(
    x: np.ndarray, codes: np.ndarray, n_classes: int, *, c: float = 1.0, max_iter: int = 1000, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty, full-batch L-BFGS in float64.

    Minimises ``0.5‖W‖² + C Σᵢ CE(xᵢ)`` (intercept not penalised) — the objective of scikit-learn's
    ``LogisticRegression(C=c)`` — but without its per-iteration overhead: a probe per state, label, fold and
    permutation is hundreds of fits, which took minutes in scikit-learn and takes seconds here. The tests check
    agreement with scikit-learn.
    """
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(codes, dtype=torch.long)
    n, d = xt.shape
    w = torch.zeros(d, n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")
    scale = 1.0 / (c * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 0.5 * scale * (w * w).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add sync cost, and thrash when cores are busy
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return w.detach().numpy(), b.detach().numpy()


def probes_by_layer(
    feats: Any,
    label: str,
    *,
    layers: Sequence[int] | None = None,
    splits: Sequence[Split] | None = None,
    use_groups: bool = True,
    n_splits: int = 5,
    seed: int = 0,
    n_permutations: int = 1,
    progress: Any = None,
    **probe_kw: Any,
) -> list[dict[str, Any]]:
    """One row per state: probe accuracy and macro-F1 for ``label``, plus the permutation baseline.

    ``feats`` is a :class:`~speechprune.features.LayerFeatures`; splits default to group-aware k-fold on
    ``feats.groups`` when every row has a group and ``use_groups`` is set.
    """
    if label not in feats.labels:
        raise SpeechpruneError(f"no label column {label!r} in the features; available: {', '.join(feats.labels)}")
    y = feats.labels[label]
    groups = feats.groups if use_groups and all(g is not None for g in feats.groups) else None
    if splits is None:
        splits = cv_folds(y, groups=groups, n_splits=n_splits, seed=seed)
    rows = []
    for state in layers if layers is not None else feats.layers:
        x = feats.layer(state)
        res = linear_probe(x, y, splits, **probe_kw)
        chance = [linear_probe(x, y, splits, permute_seed=seed + 1000 * (p + 1), **probe_kw).accuracy
                  for p in range(n_permutations)]
        rows.append(
            {
                "state": state,
                "label": label,
                **res.to_dict(),
                "chance_accuracy": float(np.mean(chance)) if chance else None,
                "chance_accuracy_std": float(np.std(chance)) if chance else None,
                "majority_accuracy": _majority(y, splits),
            }
        )
        if progress is not None:
            progress()
    return rows


def _majority(labels: Sequence[str], splits: Sequence[Split]) -> float:
    """Accuracy of always predicting the training majority class (another chance reference)."""
    y = np.asarray(labels)
    scores = []
    for train, test in splits:
        values, counts = np.unique(y[train], return_counts=True)
        scores.append(float(np.mean(y[test] == values[np.argmax(counts)])))
    return float(np.mean(scores))
