"""Uncertainty for the numbers speechprune reports: 95 % intervals on accuracies, paired differences against the
baseline on the same clips, and a test of whether a model is above chance at all.

Conventions (every function returns plain floats/dicts, JSON-ready):

* **One accuracy** — with no group column (or too few groups), the Wilson score interval of the binomial
  ``k / n``; it is near-exact even at small ``n`` and never leaves [0, 1] (80 / 100 → 0.711–0.867). With a group
  column (e.g. speaker) and at least :data:`MIN_GROUPS` groups among the clips, a cluster bootstrap: whole groups are
  resampled, because clips of one speaker are not independent and a clip-level interval would be too narrow. With
  fewer groups a cluster bootstrap is itself unreliable; we then fall back to Wilson and say so in ``note``.
* **Candidate against baseline** — the paired bootstrap of (candidate − baseline) accuracy on the *same* clips (or
  groups), and of the ratio "retained" = candidate ÷ baseline. A "no loss" claim is a non-inferiority claim: it is
  made only when the lower end of the difference interval is above ``-margin`` (see :func:`loss_verdict`).
* **Chance** — the accuracy a classifier reaches without information is the larger of the majority-class rate and
  the permutation level ``Σ_c p_true(c) · p_pred(c)`` (what the same predictions score on shuffled labels). A model
  is "above chance with confidence" when a one-sided exact binomial test against that level gives p < alpha.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A cluster bootstrap with fewer groups than this is not trusted (its interval is too narrow).
MIN_GROUPS = 5
Z95 = 1.959963984540054


def _z(alpha: float) -> float:
    if abs(alpha - 0.05) < 1e-12:
        return Z95
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (two-sided, level ``1 - alpha``)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = _z(alpha)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return float(lo), float(hi)


def exact_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper–Pearson ("exact") interval: guaranteed coverage, a little wider than Wilson."""
    from scipy.stats import beta

    if n <= 0:
        return float("nan"), float("nan")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _group_index(groups: Sequence[Any] | None, n: int) -> tuple[np.ndarray, int] | None:
    if groups is None:
        return None
    g = np.asarray([str(x) for x in groups])
    if len(g) != n:
        raise ValueError(f"{len(g)} groups for {n} clips")
    _, inv = np.unique(g, return_inverse=True)
    return inv, int(inv.max()) + 1 if len(inv) else 0


def _resample_sums(values: list[np.ndarray], groups: Sequence[Any] | None, n_boot: int, seed: int
                   ) -> tuple[list[np.ndarray], np.ndarray]:
    """Bootstrap sums of each array in ``values`` (same clips) and the bootstrap clip counts, resampling clips or
    whole groups. Returns (sums per array: n_boot each, counts: n_boot)."""
    n = len(values[0])
    rng = np.random.default_rng(seed)
    gi = _group_index(groups, n)
    if gi is None:
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # clip weights per replicate
        return [w @ v for v in values], np.full(n_boot, float(n))
    inv, n_groups = gi
    per_group = [np.bincount(inv, weights=v, minlength=n_groups) for v in values]
    sizes = np.bincount(inv, minlength=n_groups).astype(float)
    w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(float)
    return [w @ s for s in per_group], w @ sizes


def _n_groups(groups: Sequence[Any] | None) -> int:
    return 0 if groups is None else len({str(g) for g in groups})


def accuracy_interval(correct: Sequence[bool] | np.ndarray, groups: Sequence[Any] | None = None, *,
                      alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of per-clip ``correct`` flags with its ``1 - alpha`` interval (see the module doc for the method)."""
    c = np.asarray(correct, dtype=float)
    n, k = len(c), int(c.sum())
    out: dict[str, Any] = {"accuracy": float(k / n) if n else float("nan"), "n": n, "correct": k, "alpha": alpha}
    n_groups = _n_groups(groups)
    if groups is not None and n_groups >= MIN_GROUPS:
        sums, counts = _resample_sums([c], groups, n_boot, seed)
        acc = sums[0] / np.maximum(counts, 1)
        lo, hi = np.quantile(acc, [alpha / 2, 1 - alpha / 2])
        out.update(low=float(lo), high=float(hi), method=f"cluster bootstrap over {n_groups} groups ({n_boot})",
                   n_groups=n_groups)
        return out
    lo, hi = wilson_interval(k, n, alpha)
    out.update(low=lo, high=hi, method="Wilson score interval (clips)")
    if groups is not None:
        out["n_groups"] = n_groups
        out["note"] = (f"only {n_groups} group(s) among the clips: the interval treats clips as independent and is "
                       "too narrow if the groups (e.g. speakers) differ")
    return out


def paired_difference(cand_correct: Sequence[bool] | np.ndarray, base_correct: Sequence[bool] | np.ndarray,
                      groups: Sequence[Any] | None = None, *, alpha: float = 0.05, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of candidate − baseline accuracy and of candidate ÷ baseline ("retained") on the same clips.

    Clips (or whole groups when there are at least :data:`MIN_GROUPS`) are resampled together for both models, so
    the interval reflects only where the two disagree. The percentile interval is widened, where narrower, to the
    Wilson bounds of the discordance rates, so that zero disagreements on a handful of clips never reads as proof.
    """
    a = np.asarray(cand_correct, dtype=float)
    b = np.asarray(base_correct, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"candidate and baseline were evaluated on different clips ({a.shape} vs {b.shape})")
    n = len(a)
    use_groups = groups if (groups is not None and _n_groups(groups) >= MIN_GROUPS) else None
    (sa, sb), counts = _resample_sums([a, b], use_groups, n_boot, seed)
    diff = (sa - sb) / np.maximum(counts, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sb > 0, sa / np.where(sb > 0, sb, 1), np.nan)
    q = [alpha / 2, 1 - alpha / 2]
    d_lo, d_hi = np.quantile(diff, q)
    finite = ratio[np.isfinite(ratio)]
    r_lo, r_hi = np.quantile(finite, q) if len(finite) else (float("nan"), float("nan"))
    base_acc = float(b.mean()) if n else float("nan")
    # With few disagreements the bootstrap degenerates (no discordant clip → [0, 0], i.e. "proof" of no loss on 9
    # clips). Widen it to cover the Wilson bounds of the two discordance rates: the candidate loses at most
    # hi(wrong-where-baseline-right) and gains at most hi(right-where-baseline-wrong).
    gain, loss = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    if n:
        d_lo = min(d_lo, gain / n - wilson_interval(loss, n, alpha)[1])
        d_hi = max(d_hi, wilson_interval(gain, n, alpha)[1] - loss / n)
        if base_acc:
            r_lo, r_hi = min(r_lo, 1 + d_lo / base_acc), max(r_hi, 1 + d_hi / base_acc)
    return {
        "difference": float(a.mean() - b.mean()) if n else float("nan"),
        "difference_low": float(d_lo), "difference_high": float(d_hi),
        "retained": float(a.mean() / base_acc) if base_acc else float("nan"),
        "retained_low": float(r_lo), "retained_high": float(r_hi),
        "n": n, "discordant": int((a != b).sum()), "alpha": alpha,
        "method": ("paired cluster bootstrap over groups" if use_groups is not None else "paired bootstrap over clips")
        + f" ({n_boot})",
    }


def loss_verdict(diff_low: float, diff_high: float, margin: float = 0.0) -> str:
    """What the difference interval allows one to say.

    ``"no loss"`` only when the whole interval lies above ``-margin`` (non-inferiority at that margin; with
    ``margin = 0`` the candidate is then significantly not worse); ``"loss"`` when the whole interval is below 0;
    otherwise ``"inconclusive"`` — the data cannot tell a loss from none.
    """
    if not (np.isfinite(diff_low) and np.isfinite(diff_high)):
        return "inconclusive"
    if diff_low >= -margin:
        return "no loss"
    if diff_high < 0:
        return "loss"
    return "inconclusive"


def chance_level(y_true: Sequence[Any], y_pred: Sequence[Any] | None = None,
                 train_labels: Sequence[Any] | None = None) -> dict[str, float]:
    """Chance accuracies: majority (always the most frequent *training* class, else the most frequent true class)
    and permutation (``Σ_c p_true(c) p_pred(c)``: the expected accuracy of these predictions on shuffled labels)."""
    yt = np.asarray([str(v) for v in y_true])
    ref = np.asarray([str(v) for v in (train_labels if train_labels is not None else y_true)])
    values, counts = np.unique(ref, return_counts=True)
    majority_class = values[np.argmax(counts)]
    out = {"majority": float(np.mean(yt == majority_class)) if len(yt) else float("nan"),
           "uniform": 1.0 / max(len(set(yt.tolist()) | set(ref.tolist())), 1)}
    if y_pred is not None:
        yp = np.asarray([str(v) for v in y_pred])
        classes = sorted(set(yt.tolist()) | set(yp.tolist()))
        pt = np.array([np.mean(yt == c) for c in classes])
        pp = np.array([np.mean(yp == c) for c in classes])
        out["permutation"] = float(pt @ pp)
    out["level"] = max(v for k, v in out.items() if k != "uniform")
    return out


def above_chance(y_true: Sequence[Any], y_pred: Sequence[Any], train_labels: Sequence[Any] | None = None, *,
                 alpha: float = 0.05) -> dict[str, Any]:
    """Is the accuracy of ``y_pred`` above chance with confidence? One-sided exact binomial test of the number
    correct against the chance level of :func:`chance_level` (the larger of majority and permutation)."""
    from scipy.stats import binomtest

    yt = np.asarray([str(v) for v in y_true])
    yp = np.asarray([str(v) for v in y_pred])
    n, k = len(yt), int((yt == yp).sum())
    chance = chance_level(yt, yp, train_labels)
    p0 = min(max(chance["level"], 1e-12), 1 - 1e-12)
    p = float(binomtest(k, n, p0, alternative="greater").pvalue) if n else 1.0
    return {"accuracy": k / n if n else float("nan"), "n": n, "chance": chance, "p_value": p, "alpha": alpha,
            "above_chance": bool(p < alpha)}
