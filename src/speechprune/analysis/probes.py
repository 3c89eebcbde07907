"""Per-layer linear probes: how linearly decodable a label is from each state.

Two probes on standardised features (scaler fitted on the training rows only), evaluated on a given split or by
cross-validation (folds from :func:`speechprune.data.splits.cv_folds`):

* ``logistic`` — multinomial logistic regression (scikit-learn's ``LogisticRegression(C=1)`` objective, fitted by
  L-BFGS). The reference probe of the layer-analysis literature, but every fold and every permutation is an
  iterative fit: at 80 000 training rows × 768 dims one fit runs to minutes, and an analysis needs
  states × labels × folds × (1 + permutations) of them.
* ``ridge`` — a one-vs-rest least-squares classifier (scikit-learn's ``RidgeClassifier(alpha=1)`` on standardised
  features), solved in closed form from the Gram matrix XᵀX: one product over the rows per state, the folds'
  training Grams by subtracting each held-out part, and the permutation baselines for free (only XᵀY changes, the
  factorised XᵀX is reused). It takes seconds where the logistic probe takes hours.

``auto`` (the default) picks ``logistic`` up to :data:`AUTO_RIDGE_ROWS` rows and ``ridge`` above; the probe used
is recorded in every result row. When a group column is given (e.g. speaker), folds are group-aware so that no
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

PROBES = ("auto", "logistic", "ridge")
AUTO_RIDGE_ROWS = 20_000
"""Above this many rows ``probe="auto"`` uses the ridge probe. One logistic fit on 16 000 × 768 rows ran to its
iteration limit in 220 s on the 2-core machine (benchmarks/results/analysis_scale.md), and an analysis runs
states × labels × folds × (1 + permutations) fits — 520 for 13 states, 2 labels, 5 folds and 3 permutations —
whereas below a few thousand rows every fit takes about a second."""
RIDGE_ALPHA = 1.0
"""The ridge penalty on standardised features, scikit-learn's ``RidgeClassifier`` default: with features scaled
to unit variance the Gram's diagonal is the number of training rows, so at the row counts where the ridge probe
is used this is a small, scale-free regularisation that only keeps the solve well posed."""


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


def resolve_probe(probe: str, n_rows: int) -> str:
    """``auto`` → ``logistic`` up to :data:`AUTO_RIDGE_ROWS` rows, ``ridge`` above; other names are checked."""
    if probe not in PROBES:
        raise SpeechpruneError(f"unknown probe {probe!r}; choose from {', '.join(PROBES)}")
    if probe == "auto":
        return "ridge" if n_rows > AUTO_RIDGE_ROWS else "logistic"
    return probe


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
    x = _checked(x, labels, dtype=np.float64)
    y = np.asarray(labels)
    folds = []
    for k, (train, test) in enumerate(splits):
        y_train = _training_labels(y, train, None if permute_seed is None else permute_seed + k)
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        classes, codes = np.unique(y_train, return_inverse=True)
        w, bias = fit_logistic_regression((x[train] - mean) / std, codes, len(classes), c=c, max_iter=max_iter)
        scores = ((x[test] - mean) / std) @ w + bias
        folds.append(_fold_scores(y[test], classes[np.argmax(scores, axis=1)]))
    return _result(folds, y, splits)


def ridge_probe(
    x: np.ndarray,
    labels: Sequence[str],
    splits: Sequence[Split],
    *,
    alpha: float = RIDGE_ALPHA,
    permute_seeds: Sequence[int] = (),
    device: str | torch.device | None = None,
) -> tuple[ProbeResult, list[ProbeResult]]:
    """The ridge probe on each split, and with the training labels shuffled once per ``permute_seeds`` entry.

    Returns the true result and one result per permutation (the same shuffles as :func:`linear_probe`'s
    ``permute_seed``: seed + fold index). Per split it solves ``(ZᵀZ + αI) W = ZᵀY`` for the standardised training
    rows Z and ±1 one-vs-rest targets Y with their means as intercepts — exactly scikit-learn's
    ``RidgeClassifier(alpha)`` after a ``StandardScaler`` — in float64 on ``device``. The Gram of the whole state
    is the sum of the Grams of the rows each split leaves out when those tile the rows (cross-validation: one pass
    in all), else one extra pass; a split's training Gram is the whole minus what it leaves out, and every
    permutation reuses the split's Cholesky factor.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    xs = _checked(x, labels, dtype=None)
    y = np.asarray(labels)
    xt = torch.as_tensor(xs, device=dev, dtype=torch.float64)
    xt = xt - xt.mean(0)  # centring by a constant changes no solution, and keeps the Gram differences exact
    n_all = xt.shape[0]
    left_outs = [np.setdiff1d(np.arange(n_all), np.asarray(train)) for train, _ in splits]
    out_grams, out_sums = [], []
    for rows in left_outs:  # one left-out part in memory at a time (the data are already 4 GB at 100k × 13 × 768)
        part = xt[torch.as_tensor(rows, device=dev)]
        out_grams.append(part.T @ part)
        out_sums.append(part.sum(0))
        del part
    covered = np.concatenate(left_outs)
    if len(covered) == n_all and len(np.unique(covered)) == n_all:
        gram = torch.stack(out_grams).sum(0)  # cross-validation folds: the held-out parts tile the rows
    else:
        gram = xt.T @ xt
    total = xt.sum(0)
    true_folds: list[dict[str, float]] = []
    perm_folds: list[list[dict[str, float]]] = [[] for _ in permute_seeds]
    for k, (train, test) in enumerate(splits):
        n = len(train)
        mean = (total - out_sums[k]) / n
        cov = (gram - out_grams[k]) - n * torch.outer(mean, mean)  # centred training Gram
        std = torch.sqrt(torch.clamp(torch.diagonal(cov) / n, min=0))
        std[std == 0] = 1.0
        a = cov / torch.outer(std, std)
        a.diagonal().add_(alpha)
        factor = torch.linalg.cholesky(a)
        z_test = (xt[torch.as_tensor(np.asarray(test), device=dev, dtype=torch.long)] - mean) / std
        shuffles = [None, *[seed + k for seed in permute_seeds]]
        for j, shuffle in enumerate(shuffles):
            y_train = _training_labels(y, train, shuffle)
            classes, codes = np.unique(y_train, return_inverse=True)
            # per-class sums of the training rows without copying them: the other rows go to a dropped class
            row_class = np.full(n_all, len(classes), dtype=np.int64)
            row_class[np.asarray(train)] = codes
            codes_t = torch.as_tensor(row_class, device=dev)
            counts = torch.bincount(codes_t, minlength=len(classes) + 1)[:-1].to(torch.float64)
            class_sums = torch.zeros(len(classes) + 1, xt.shape[1], dtype=torch.float64, device=dev)
            class_sums.index_add_(0, codes_t, xt)
            class_sums = class_sums[:-1]
            # Zᵀ(2·onehot − 1) = 2·Zᵀonehot, as Z's columns sum to zero
            rhs = (2.0 * (class_sums - counts[:, None] * mean) / std).T
            w = torch.cholesky_solve(rhs, factor)
            intercept = 2.0 * counts / n - 1.0
            pred = classes[torch.argmax(z_test @ w + intercept, dim=1).cpu().numpy()]
            scores = _fold_scores(y[test], pred)
            (true_folds if j == 0 else perm_folds[j - 1]).append(scores)
    return _result(true_folds, y, splits), [_result(f, y, splits) for f in perm_folds]


def _checked(x: np.ndarray, labels: Sequence[str], dtype: Any) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise SpeechpruneError(f"features {x.shape} and {len(labels)} labels do not match")
    if not np.isfinite(x).all():
        raise SpeechpruneError("features contain NaN or inf values; cannot fit a probe")
    return x


def _training_labels(y: np.ndarray, train: np.ndarray, shuffle_seed: int | None) -> np.ndarray:
    """The training rows' labels, shuffled with ``shuffle_seed`` for the chance baseline (test labels stay)."""
    y_train = y[train]
    if len(set(y_train.tolist())) < 2:
        raise SpeechpruneError("a probe's training rows hold only one class; nothing to learn")
    if shuffle_seed is not None:
        y_train = np.random.default_rng(shuffle_seed).permutation(y_train)
    return y_train


def _fold_scores(y_test: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(y_test, pred)),
            "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0))}


def _result(folds: list[dict[str, float]], y: np.ndarray, splits: Sequence[Split]) -> ProbeResult:
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
    probe: str = "auto",
    device: str | torch.device | None = None,
    **probe_kw: Any,
) -> list[dict[str, Any]]:
    """One row per state: probe accuracy and macro-F1 for ``label``, plus the permutation baseline.

    ``feats`` is a :class:`~speechprune.features.LayerFeatures`; splits default to group-aware k-fold on
    ``feats.groups`` when every row has a group and ``use_groups`` is set. ``probe``: ``logistic``, ``ridge`` or
    ``auto`` (:func:`resolve_probe`, by the number of rows); each row records the probe in ``probe``. ``device``
    runs the ridge probe's products there (the logistic probe runs on the CPU). ``probe_kw`` go to the probe
    (``c``, ``max_iter`` for logistic; ``alpha`` for ridge).
    """
    if label not in feats.labels:
        raise SpeechpruneError(f"no label column {label!r} in the features; available: {', '.join(feats.labels)}")
    y = feats.labels[label]
    probe = resolve_probe(probe, len(y))
    groups = feats.groups if use_groups and all(g is not None for g in feats.groups) else None
    if splits is None:
        splits = cv_folds(y, groups=groups, n_splits=n_splits, seed=seed)
    seeds = [seed + 1000 * (p + 1) for p in range(n_permutations)]
    rows = []
    for state in layers if layers is not None else feats.layers:
        x = feats.layer(state)
        if probe == "ridge":
            res, shuffled = ridge_probe(x, y, splits, permute_seeds=seeds, device=device, **probe_kw)
        else:
            res = linear_probe(x, y, splits, **probe_kw)
            shuffled = [linear_probe(x, y, splits, permute_seed=s, **probe_kw) for s in seeds]
        chance = [r.accuracy for r in shuffled]
        rows.append(
            {
                "state": state,
                "label": label,
                **res.to_dict(),
                "chance_accuracy": float(np.mean(chance)) if chance else None,
                "chance_accuracy_std": float(np.std(chance)) if chance else None,
                "majority_accuracy": _majority(y, splits),
                "probe": probe,
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
