"""Layer pruning: pick a depth by convexity and truncate, or remove layers one at a time without retraining.

Layers are numbered 1..L (layer i produces state i). Two compressions of the papers live here:

* **Convexity-guided truncation** (Dorszewski et al. 2024): the pretrained model's per-layer graph convexity for
  the task's labels picks the depth. Rule (:func:`choose_depth`): the layer with the highest convexity among
  states 1..L; with a tolerance ``t`` (points), the *shallowest* layer whose convexity is within ``t`` of that
  maximum, which prefers a smaller model when the curve has a plateau. State 0 is never chosen (a model keeps at
  least one layer).
* **Removal without post-training** (Dorszewski et al. 2025): from a fine-tuned classifier, delete layers one at
  a time in an order and evaluate after each removal, giving a retained-capacity curve (accuracy ÷ full
  accuracy) against removed layers and MACs. Orders (:data:`ORDERS`):

  - ``backward``: last layer first (L, L−1, …, 2);
  - ``forward``: layer 2, 3, …, L (layer 1 stays, as in the reference code);
  - ``block-influence`` (ShortGPT): BI_i = 1 − cos(h_{i−1}, h_i), the cosine between the flattened input and
    output of layer i over its valid frames, averaged over clips; lowest BI (the layer that changes its input
    least) first;
  - ``knn-block-influence``: BI_i = 1 − mutual-kNN alignment of the mean-pooled states i−1 and i, averaged over
    k ∈ {2, 4, 8, 16, 32, 64} (those below N); lowest first.

  Layer 1 is never removed in any order: WavLM computes its relative position bias there, and one layer must
  remain. The influence scores are measured once, on the unpruned model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from speechprune.data.batching import iter_batches
from speechprune.data.types import AudioDataset
from speechprune.errors import LayerIndexError, SpeechpruneError
from speechprune.models.adapter import SpeechEncoder

ORDERS = ("backward", "forward", "block-influence", "knn-block-influence")
KNN_KS = (2, 4, 8, 16, 32, 64)


@dataclass
class DepthChoice:
    depth: int
    best_layer: int
    best_score: float
    tolerance: float
    scores: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "best_layer": self.best_layer, "best_score": self.best_score,
                "tolerance": self.tolerance, "scores": {str(k): v for k, v in self.scores.items()}}


def choose_depth(scores: dict[int, float] | Sequence[float], tolerance: float = 0.0) -> DepthChoice:
    """The depth to keep from per-state convexity scores (``scores[i]`` for state i; state 0 is ignored)."""
    if tolerance < 0:
        raise SpeechpruneError(f"tolerance must be >= 0 points, got {tolerance}")
    by_state = dict(enumerate(scores)) if not isinstance(scores, dict) else {int(k): float(v) for k, v in scores.items()}
    layers = {k: float(v) for k, v in by_state.items() if k >= 1 and np.isfinite(v)}
    if not layers:
        raise SpeechpruneError("no finite convexity score for any layer (states 1..L)")
    best_layer = max(layers, key=lambda k: (layers[k], -k))
    best = layers[best_layer]
    depth = min(k for k, v in layers.items() if v >= best - tolerance)
    return DepthChoice(depth, best_layer, best, tolerance, dict(sorted(by_state.items())))


def removal_order(order: str, num_layers: int, influence: dict[int, float] | None = None) -> list[int]:
    """Layers (1-based, original numbering) in the order they are removed; layer 1 is never listed."""
    if order not in ORDERS:
        raise SpeechpruneError(f"unknown removal order {order!r}; choose from {', '.join(ORDERS)}")
    if num_layers < 2:
        raise LayerIndexError("a model with one layer has nothing to remove")
    candidates = list(range(2, num_layers + 1))
    if order == "backward":
        return candidates[::-1]
    if order == "forward":
        return candidates
    if influence is None:
        raise SpeechpruneError(f"order {order!r} needs influence scores (see block_influence)")
    return sorted(candidates, key=lambda i: (influence[i], i))


@torch.no_grad()
def block_influence(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    knn_ks: Sequence[int] = KNN_KS,
) -> dict[str, dict[int, float]]:
    """Both influence scores for every layer 1..L, from one pass over the data.

    Returns ``{"block-influence": {i: BI_i}, "knn-block-influence": {i: kBI_i}}``.
    """
    from speechprune.analysis.similarity import mutual_knn_sweep
    from speechprune.features.pooling import valid_frame_mask

    L = encoder.num_layers
    cos_sum = np.zeros(L + 1)
    pooled: list[list[np.ndarray]] = [[] for _ in range(L + 1)]
    n = 0
    for _, wavs in iter_batches(dataset, batch_size, indices):
        prepared = encoder.prepare(wavs)
        states = encoder.hidden_states(prepared)
        mask = valid_frame_mask(prepared.frame_lengths.to(states[0].device), states[0].shape[1]).unsqueeze(-1).float()
        flat = [(s * mask).flatten(1) for s in states]
        for i in range(1, L + 1):
            cos_sum[i] += torch.nn.functional.cosine_similarity(flat[i - 1], flat[i], dim=1).sum().item()
        counts = mask.sum(1).clamp(min=1)
        for i, s in enumerate(states):
            pooled[i].append(((s * mask).sum(1) / counts).cpu().numpy())
        n += len(wavs)
    bi = {i: float(1.0 - cos_sum[i] / n) for i in range(1, L + 1)}
    feats = [np.concatenate(p) for p in pooled]
    ks = [k for k in knn_ks if k < n - 1] or [max(1, n - 2)]
    knn = np.zeros((L + 1,))
    for m in mutual_knn_sweep(feats, ks).values():
        for i in range(1, L + 1):
            knn[i] += m[i - 1, i]
    kbi = {i: float(1.0 - knn[i] / len(ks)) for i in range(1, L + 1)}
    return {"block-influence": bi, "knn-block-influence": kbi}


def removal_curve(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    label: str,
    order: Sequence[int],
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    max_seconds: float | None = None,
    profile_seconds: float = 1.0,
    order_name: str = "",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate the classifier after removing 0, 1, …, len(order) layers of ``order`` (no retraining).

    Each row: removed layers, kept layers, accuracy, macro-F1, retained capacity (accuracy ÷ the unpruned
    accuracy) and analytic MACs for a ``profile_seconds`` clip.
    """
    from speechprune.profile.macs import count_macs
    from speechprune.train.evaluate import evaluate_classifier

    rows: list[dict[str, Any]] = []
    full_macs = count_macs(encoder.model, round(profile_seconds * 16_000))
    steps = range(len(order) + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"removal {order_name}".strip(), unit="step")
    base_acc = None
    for r in steps:
        pruned = encoder if r == 0 else encoder.drop_layers(order[:r])
        res = evaluate_classifier(pruned, dataset, label, indices, batch_size=batch_size, max_seconds=max_seconds,
                                  profile=False)
        macs = count_macs(pruned.model, round(profile_seconds * 16_000))
        if base_acc is None:
            base_acc = res["accuracy"]
        rows.append({
            "order": order_name, "removed": r, "removed_layers": " ".join(map(str, order[:r])),
            "kept_layers": " ".join(map(str, pruned.kept_layers or range(1, pruned.num_layers + 1))),
            "accuracy": res["accuracy"], "macro_f1": res["macro_f1"],
            "retained": res["accuracy"] / base_acc if base_acc else float("nan"),
            "macs": macs, "macs_fraction": macs / full_macs,
        })
    return rows


def split_removal_curve(
    encoder: SpeechEncoder,
    dataset: AudioDataset,
    label: str,
    order: Sequence[int],
    parts: dict[str, Any],
    *,
    batch_size: int = 8,
    profile_seconds: float = 1.0,
    order_name: str = "",
    progress: bool = False,
    seed: int = 0,
    unknown_wrong: bool = False,
) -> list[dict[str, Any]]:
    """:func:`removal_curve` on the validation and the test clips of ``parts`` separately, from one forward pass per
    step: the rows of ``speechprune run``'s removal and of ``prune layers --no-retrain``.

    Each row: ``val_accuracy``/``val_macro_f1``/``val_retained`` (what a depth is chosen on) and
    ``test_accuracy``/``test_macro_f1``/``test_retained`` (reported only) with the test accuracy's 95 % interval
    (``test_accuracy_low``/``_high``: cluster bootstrap over groups when the data have ≥ 5 test groups, else Wilson;
    :func:`speechprune.utils.stats.accuracy_interval`), ``n_validation`` and ``n_test``. A clip of a class the model
    does not know is an error, or with ``unknown_wrong`` (cross-validation folds) simply never correct.
    """
    from speechprune.models.classifier import class_names
    from speechprune.profile.macs import count_macs
    from speechprune.train.evaluate import classification_metrics, predict_logits
    from speechprune.utils.stats import accuracy_interval

    classes = class_names(encoder)
    index = {c: k for k, c in enumerate(classes)}
    values = dataset.labels(label)
    val = [int(i) for i in parts["validation"]]
    test = [int(i) for i in parts["test"]]
    unknown = sorted({values[i] for i in val + test} - set(index))
    if unknown and not unknown_wrong:
        raise SpeechpruneError(f"{dataset.name}: label value(s) {unknown} of {label!r} are not classes of this model "
                               f"({', '.join(classes)})")
    if unknown:
        classes = [*classes, *unknown]  # never predicted: those clips count as wrong
        index = {c: k for k, c in enumerate(classes)}
    groups = dataset.groups()
    test_groups = [groups[i] for i in test] if dataset.group_column and all(groups[i] is not None for i in test) \
        else None
    y = {"validation": np.array([index[values[i]] for i in val], dtype=np.int64),
         "test": np.array([index[values[i]] for i in test], dtype=np.int64)}
    full_macs = count_macs(encoder.model, round(profile_seconds * 16_000))
    steps = range(len(order) + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"removal {order_name}".strip(), unit="step")
    base: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for r in steps:
        pruned = encoder if r == 0 else encoder.drop_layers(order[:r])
        pred = predict_logits(pruned, dataset, val + test, batch_size=batch_size).argmax(1) if val + test else \
            np.zeros(0, dtype=np.int64)
        preds = {"validation": pred[:len(val)], "test": pred[len(val):]}
        macs = count_macs(pruned.model, round(profile_seconds * 16_000))
        row: dict[str, Any] = {
            "order": order_name, "removed": r, "removed_layers": " ".join(map(str, order[:r])),
            "kept_layers": " ".join(map(str, pruned.kept_layers or range(1, pruned.num_layers + 1))),
            "macs": macs, "macs_fraction": macs / full_macs}
        for split, tag in (("validation", "val"), ("test", "test")):
            if len(y[split]):
                m = classification_metrics(y[split], preds[split], classes)
                acc, f1 = m["accuracy"], m["macro_f1"]
            else:
                acc = f1 = float("nan")
            base.setdefault(split, acc)
            row.update({f"{tag}_accuracy": acc, f"{tag}_macro_f1": f1,
                        f"{tag}_retained": acc / base[split] if base[split] else float("nan")})
        if test:
            ci = accuracy_interval(preds["test"] == y["test"], test_groups, seed=seed)
            row.update(test_accuracy_low=ci["low"], test_accuracy_high=ci["high"])
        else:
            row.update(test_accuracy_low=float("nan"), test_accuracy_high=float("nan"))
        row.update(n_validation=len(val), n_test=len(test))
        rows.append(row)
    return rows


MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def coinciding(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[str, str]]:
    """Pairs of orders whose curves of ``key`` against removed layers are identical (one would hide the other)."""
    orders = list(dict.fromkeys(r["order"] for r in rows))
    curve = {o: [(r["removed"], round(float(r[key]), 9)) for r in rows if r["order"] == o] for o in orders}
    return [(a, b) for i, a in enumerate(orders) for b in orders[i + 1:] if curve[a] == curve[b]]


def plot_removal_curves(rows: Sequence[dict[str, Any]], path: Any, title: str = "") -> Any:
    """Retained capacity against removed layers, one line per order (distinct markers, small horizontal offsets so
    that identical curves stay visible, and a note naming the curves that coincide).

    Rows with ``val_retained`` / ``test_retained`` (``speechprune run``) give two panels: validation — what the
    depth is chosen on — and test, reported only; with ``cv_retained`` too (a too-small validation split) a first
    panel shows the cross-validated curve that chooses instead. Rows with ``retained`` alone give retained capacity against
    removed layers and against MACs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechprune.analysis.plots import _save

    orders = list(dict.fromkeys(r["order"] for r in rows))
    split = "val_retained" in rows[0]
    panels = ([("val_retained", "removed", "validation (the depth is chosen here)"),
               ("test_retained", "removed", "test (reported only)")] if split else
              [("retained", "removed", ""), ("retained", "macs_fraction", "")])
    if split and "cv_retained" in rows[0]:  # validation too small: cross-validation over the training pool chooses
        panels = [("cv_retained", "removed", f"cross-validation, n = {rows[0].get('n_cv')} (chooses)"),
                  ("val_retained", "removed", f"validation, n = {rows[0].get('n_validation')} (too small)"),
                  ("test_retained", "removed", "test (reported only)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.3), sharey=True)
    width = 0.08 * (len(orders) - 1)
    notes = []
    for ax, (key, xkey, sub) in zip(axes, panels):
        for j, name in enumerate(orders):
            rs = [r for r in rows if r["order"] == name]
            dx = (j * 0.08 - width / 2) if xkey == "removed" else 0.0
            ax.plot([r[xkey] + dx for r in rs], [r[key] for r in rs], marker=MARKERS[j % len(MARKERS)],
                    ms=5, lw=1.2, alpha=0.85, label=name)
        if sub:
            ax.set_title(sub, fontsize=10)
        same = coinciding(rows, key)
        if same:
            notes.append(f"{sub.split(' ')[0].rstrip(',') if sub else key}: " + "; ".join(f"{a} = {b}" for a, b in same))
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.set_xlabel("layers removed (no retraining; orders offset slightly)" if xkey == "removed"
                      else "MACs (fraction of the unpruned model)")
    if not split:
        axes[1].invert_xaxis()
    axes[0].set_ylabel("retained capacity (accuracy ÷ unpruned accuracy)")
    axes[0].legend(fontsize=8)
    if notes:
        fig.text(0.01, 0.01, "identical curves: " + " | ".join(notes), fontsize=7, color="#444")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 if notes else 0, 1, 1))
    return _save(fig, path, 120)


def check_removal_inputs(encoder: SpeechEncoder, orders: Sequence[str]) -> None:
    """Fail before any work: the model needs a classification head, and every order name must be known."""
    from speechprune.models.classifier import class_names

    class_names(encoder)
    for o in orders:
        removal_order(o, max(encoder.num_layers, 2), {i: 0.0 for i in range(1, encoder.num_layers + 1)})


def remove_without_retraining(encoder: SpeechEncoder, dataset: AudioDataset, label: str, spec: Any,
                              orders: Sequence[str], out: Any, *, batch_size: int, profile_seconds: float,
                              influence_clips: int, progress: bool = True, min_retained: float = 0.95
                              ) -> dict[str, Any]:
    """``prune layers --no-retrain`` (and :func:`speechprune.api.prune_layers`): the removal curve of every order on
    the split's validation and test clips separately (:func:`split_removal_curve`), written to ``out`` as
    ``removal.csv`` (atomically), ``removal.png`` (two panels: validation, test) and ``removal.json``; the block
    influences are probed on up to ``influence_clips`` training clips (seed 0).

    How many layers each order can remove (``chosen``: at least ``min_retained`` of the unpruned accuracy) is read
    from the *validation* curve only; the test accuracy at that depth, with its 95 % interval and n, is reported
    beside it and never read to choose. Returns the ``removal.json`` summary, whose ``rows`` are the curves."""
    import csv
    import os
    from pathlib import Path

    from speechprune.data.splits import make_splits, validation_check
    from speechprune.utils.io import write_json_atomic

    orders = list(orders)
    parts = make_splits(dataset, label, spec)
    influence = None
    if any("influence" in o for o in orders):
        rng = np.random.default_rng(0)
        probe = np.sort(rng.choice(parts["train"], size=min(influence_clips, len(parts["train"])), replace=False))
        influence = block_influence(encoder, dataset, probe, batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    for o in orders:
        seq = removal_order(o, encoder.num_layers, (influence or {}).get(o))
        rows += split_removal_curve(encoder, dataset, label, seq, parts, batch_size=batch_size,
                                    profile_seconds=profile_seconds, order_name=o, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".removal.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "removal.csv")
    plot_removal_curves(rows, out / "removal.png", title="removal without retraining")
    labels = dataset.labels(label)
    check = validation_check(labels, parts["validation"], sorted({labels[i] for i in parts["train"]}))
    summary = {"orders": orders, "split_spec": spec.to_dict(), "min_retained": min_retained,
               "n": {k: int(len(v)) for k, v in parts.items()},
               "chosen": {o: chosen_removal(rows, o, min_retained) for o in orders},
               "chosen_on": "validation", "validation": check, "rows": rows,
               "influence": {k: {str(i): v for i, v in d.items()} for k, d in (influence or {}).items()}}
    write_json_atomic(out / "removal.json", summary)
    return summary


def removable_at_95(rows: Sequence[dict[str, Any]], order: str, min_retained: float = 0.95) -> int:
    """How many layers ``order`` removes while keeping at least 95 % (``min_retained``) of the unpruned accuracy —
    on *validation* when the rows have it (``val_retained``; test is reported only), else on ``retained``."""
    key = "val_retained" if any("val_retained" in r for r in rows) else "retained"
    return max((r["removed"] for r in rows if r["order"] == order and r[key] >= min_retained), default=0)


def chosen_removal(rows: Sequence[dict[str, Any]], order: str, min_retained: float = 0.95) -> dict[str, Any]:
    """The depth :func:`removable_at_95` chooses on validation, with that row's test numbers beside it (reported
    only): ``removed``, validation accuracy/retained and n, test accuracy with its 95 % interval, retained and n."""
    k = removable_at_95(rows, order, min_retained)
    row = next(r for r in rows if r["order"] == order and r["removed"] == k)
    return {"removed": k, "removed_layers": row["removed_layers"], **{key: row.get(key) for key in (
        "val_accuracy", "val_retained", "n_validation", "test_accuracy", "test_accuracy_low", "test_accuracy_high",
        "test_retained", "n_test")}}


def removal_lines(summary: dict[str, Any], num_layers: int) -> list[str]:
    """What ``prune layers --no-retrain`` prints: per order the depth chosen on validation and, beside it, the test
    accuracy at that depth (reported only), each with its n; then the validation-size warning when there is one."""
    lines = []
    for o, ch in summary["chosen"].items():
        test = (f"test accuracy there {ch['test_accuracy']:.3f} [95 % CI {ch['test_accuracy_low']:.3f}–"
                f"{ch['test_accuracy_high']:.3f}], {100 * ch['test_retained']:.1f} % retained (n = {ch['n_test']}, "
                "reported only)" if ch.get("n_test") else "no test clips")
        lines.append(f"{o}: up to {ch['removed']} of {num_layers} layers removed with ≥ "
                     f"{100 * summary['min_retained']:.0f} % retained on validation (n = {ch['n_validation']}); {test}")
    note = (summary.get("validation") or {}).get("note")
    if note:
        lines.append("warning: " + note)
    return lines
