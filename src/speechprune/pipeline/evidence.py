"""The ``evaluate`` stage of ``speechprune run``: every final candidate evaluated once on validation and once on
test, per-clip predictions saved, and the uncertainty that the report prints.

Three-way discipline: every *choice* of the run (best epoch, convexity depth, removal depth, which candidate to
recommend, whether to recommend at all) reads training and validation clips only (with a too-small validation
split the removal depth and the chance guard use the ``crossval`` stage's cross-validation over those clips;
``selection`` in the result records what each choice was made on); test clips are predicted here,
once per final candidate, and only reported. ``tests/test_pipeline_discipline.py`` shuffles the test labels and
checks that no choice changes.

Written: ``OUT/predictions/<candidate>.csv`` (one row per validation and test clip: split, item key, group, true
and predicted class, correct) and the stage result (per candidate and split: accuracy, macro-F1, per-class F1,
confusion matrix; on test also the 95 % interval and, against the baseline, the paired bootstrap of the
difference with its verdict; the validation-size check and the chance guard).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.data.splits import validation_check
from speechprune.utils.io import atomic_path
from speechprune.utils.stats import above_chance, accuracy_interval, loss_verdict, paired_difference

def _metrics(y_true: list[str], y_pred: list[str], classes: list[str]) -> dict[str, Any]:
    from speechprune.train.evaluate import classification_metrics

    index = {c: k for k, c in enumerate(classes)}
    extra = sorted(set(y_true) - set(index))
    for c in extra:  # a class the model never learned (cannot happen with checked splits; kept for safety)
        index[c] = len(index)
    names = list(index)
    return classification_metrics(np.array([index[v] for v in y_true], dtype=np.int64),
                                  np.array([index[v] for v in y_pred], dtype=np.int64), names)


def evaluate_candidates(run: Any, candidates: list[Any]) -> dict[str, Any]:
    """Predict every candidate (:class:`~speechprune.compress.base.Candidate`; loaded and run the way its method
    says) on the validation and test clips (see the module doc); returns the stage result."""
    from speechprune.compress.base import BASELINE, compression_for
    from speechprune.data.splits import _natural

    c = run.cfg
    ds = run.dataset
    parts = run.task().parts()
    labels = ds.labels(c.label)
    groups = ds.groups()
    grouped = bool(ds.group_column) and all(g is not None for g in groups)
    train_classes = sorted({labels[i] for i in parts["train"]})
    folder = run.out / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    per: dict[str, Any] = {}
    correct: dict[str, dict[str, np.ndarray]] = {}
    preds: dict[str, dict[str, list[str]]] = {}
    for cand in candidates:
        method = compression_for(cand.method)
        model = method.load(cand)
        classes = sorted(set(train_classes), key=_natural)  # the models' class order
        rows, res = [], {}
        name = cand.name
        preds[name], correct[name] = {}, {}
        for split in ("validation", "test"):
            idx = parts[split]
            y_pred = method.predict(model, ds, idx, batch_size=c.batch_size)
            y_true = [labels[i] for i in idx]
            ok = np.array([a == b for a, b in zip(y_true, y_pred)], dtype=bool)
            preds[name][split], correct[name][split] = y_pred, ok
            if len(idx):
                res[split] = _metrics(y_true, y_pred, classes)
            for i, t, p, k in zip(idx, y_true, y_pred, ok):
                rows.append({"split": split, "index": int(i), "key": ds.items[int(i)].key,
                             "group": groups[int(i)] if groups[int(i)] is not None else "", "true": t,
                             "predicted": p, "correct": int(k)})
        with atomic_path(folder / f"{name}.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["split", "index", "key", "group", "true", "predicted", "correct"])
            w.writeheader()
            w.writerows(rows)
        test_groups = [groups[i] for i in parts["test"]] if grouped else None
        if len(parts["test"]):
            res["test"]["interval"] = accuracy_interval(correct[name]["test"], test_groups, seed=c.seed)
        res["predictions"] = str(folder / f"{name}.csv")
        per[name] = res
        del model
    base = next((k.name for k in candidates if k.method == BASELINE), None)
    margin = 1.0 - c.recommend_min_retained
    if base in correct and len(parts["test"]):
        test_groups = [groups[i] for i in parts["test"]] if grouped else None
        base_acc = float(correct[base]["test"].mean())
        for name, res in per.items():
            if name == base:
                continue
            d = paired_difference(correct[name]["test"], correct[base]["test"], test_groups, seed=c.seed)
            d["margin"] = margin * base_acc
            d["verdict"] = loss_verdict(d["difference_low"], d["difference_high"], d["margin"])
            res["test"]["paired"] = d
    guard = None
    cv = run.results.get("crossval") or {}
    if cv.get("applied") and base in preds:  # validation too small: the fold baselines' out-of-fold predictions
        guard = dict(cv["chance_guard"])
        if not guard["above_chance"]:
            guard["message"] = (
                f"the unpruned model is not above chance in cross-validation over the training pool (fold baselines "
                f"fine-tuned like it; the validation split is too small to tell): "
                f"out-of-fold accuracy {guard['accuracy']:.3f} on {guard['n']} clips ({cv['folds']} folds) against a "
                f"chance level of {guard['chance']['level']:.3f} (one-sided binomial p = {guard['p_value']:.3g} ≥ "
                f"{guard['alpha']}). Nothing it learned can be compressed, so no model is recommended: train longer, "
                "with more data, or check the labels.")
    elif base in preds and len(parts["validation"]):
        y_val = [labels[i] for i in parts["validation"]]
        guard = above_chance(y_val, preds[base]["validation"], [labels[i] for i in parts["train"]])
        guard["split"] = "validation"
        if not guard["above_chance"]:
            guard["message"] = (
                f"the unpruned model is not above chance on the validation split with confidence: accuracy "
                f"{guard['accuracy']:.3f} on {guard['n']} clips against a chance level of "
                f"{guard['chance']['level']:.3f} (majority {guard['chance']['majority']:.3f}, permutation "
                f"{guard['chance'].get('permutation', float('nan')):.3f}; one-sided binomial p = "
                f"{guard['p_value']:.3g} ≥ {guard['alpha']}). Nothing it learned can be compressed, so no model is "
                "recommended: train longer, with more data, or check the labels.")
    from speechprune.pipeline.crossval import selection_record

    check = validation_check(labels, parts["validation"], train_classes)
    if not check["ok"]:
        check["note"] += (
            f" Fallback: group-aware cross-validation over the training pool ({cv['folds']} folds, n = {cv['n']}) "
            "chose the removal depth and ran the chance guard; the best epoch and the recommendation stay on "
            "validation (they would need every candidate re-fine-tuned per fold)." if cv.get("applied") else
            f" Cross-validation fallback not applied: {cv.get('reason', 'the crossval stage did not run')}.")
    n_pool = int(len(parts["train"]) + len(parts["validation"]))
    return {"candidates": per, "validation": check,
            "selection": selection_record(cv or None, int(len(parts["validation"])), n_pool,
                                          [m.cv_choice for m in _enabled(c) if m.cv_choice],
                                          [m.pool_choice for m in _enabled(c) if m.pool_choice]),
            "crossval": {k: cv.get(k) for k in ("applied", "reason", "folds", "grouped", "grouped_by", "plan_note", "n",
                                                "epochs", "accuracy", "fold_sizes") if k in cv} or None,
            "chance_guard": guard, "n": {k: int(len(v)) for k, v in parts.items()}, "grouped_by": ds.group_column
            if grouped else None, "margin": margin, "folder": str(folder)}


def _enabled(cfg: Any) -> list[Any]:
    """The enabled compressions (their ``cv_choice`` / ``pool_choice`` name the choices they make)."""
    from speechprune.compress.base import methods

    return [m for m in methods() if cfg.compress[m.name].enabled]
