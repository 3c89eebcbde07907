"""The ``crossval`` stage of ``speechprune run``: group-aware cross-validation over the training pool for the choices
that a too-small validation split cannot make (issue 14: "< 30 clips or < 2 per class → fall back").

When ``selection.cv`` is ``auto`` (the default) and the validation split is too small (:func:`speechprune.data.splits.
validation_check`), or when it is ``always``, the training + validation clips (never the test clips) are cut into
folds (:func:`speechprune.data.splits.pool_folds`: whole groups per fold when the data have a group column —
leave-one-group-out with few groups —, stratified otherwise; as many folds as the data allow, at most
``selection.folds``). For each fold a *fold baseline* is fine-tuned from the pretrained model exactly as the
baseline was (same options, for the baseline's best epoch; its per-epoch check reads its own training clips, never
the held-out fold) and evaluated on its held-out clips:

* **the choices of compressions that cross-validate** (:meth:`speechprune.compress.base.Compression.cross_validate`;
  built in: the removal depth per order): each enabled one scores the fold baseline on its held-out clips (layer
  removal: its removal curve per order, the order of each fold model its own — backward and forward are the same
  everywhere, influence orders are probed on the fold's training clips). Correct counts are pooled over folds; the
  method then chooses on the pooled curve (removal: the most layers removed with ≥ ``min_retained`` of the pooled
  unpruned accuracy) and applies that to the run's baseline.
* **chance guard**: the out-of-fold predictions of the fold baselines (n = the whole pool) instead of the few
  validation clips. This tests the recipe (the baseline's training on this much data), not the one saved model.

Not cross-validated (they stay on the validation split, and the result's ``selection`` says so): the best epoch
and the recommendation among fine-tuned candidates, distilled students and structured recipes — each would need
every candidate re-fine-tuned per fold (k times the run's training). The convexity depth needs no held-out clips
(convexity of the pretrained model's features on the whole pool; no model is fitted to these labels).

The stage is not resumable inside (a crash refits every fold) and does not run in a multi-process launch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.data.splits import _natural, pool_folds, validation_check


def skipped(run: Any) -> dict[str, Any] | None:
    """``None`` when the ``crossval`` stage has work to do; else its result (``applied`` false, the reason), so that
    a run with a large enough validation split (or ``selection.cv: never``) has no such stage at all."""
    from speechprune.utils import distributed

    c = run.cfg
    base = _unapplied(run)
    if c.selection.cv == "never":
        return {**base, "reason": "selection.cv is never"}
    if c.selection.cv == "auto" and base["validation"]["ok"]:
        return {**base, "reason": "the validation split is large enough"}
    if distributed.is_distributed():
        return {**base, "reason": "cross-validation is not run in a multi-process launch"}
    return None


def crossval(run: Any) -> dict[str, Any]:
    """The stage result: ``applied`` and, when applied, the folds, the fold baselines' out-of-fold predictions and
    accuracy, the chance guard on them and, per compression that cross-validates a choice
    (:meth:`~speechprune.compress.base.Compression.cross_validate`), its pooled rows (module doc)."""
    from speechprune.compress.base import methods
    from speechprune.utils.stats import above_chance

    c = run.cfg
    ds = run.dataset
    task = run.task()
    parts = task.parts()
    labels = ds.labels(c.label)
    base = _unapplied(run)
    groups = ds.groups()
    grouped = bool(ds.group_column) and all(g is not None for g in groups)
    pool = np.sort(np.concatenate([parts["train"], parts["validation"]]))
    plan, folds = pool_folds(labels, groups if grouped else None, pool, c.selection.folds, seed=c.seed)
    if not folds:
        return {**base, "reason": f"the training pool cannot be cross-validated: {plan.note}"}
    for k, (train, _held) in enumerate(folds):
        if len({labels[i] for i in train}) < 2:
            return {**base, "reason": f"fold {k + 1}'s training part has a single class of {c.label!r}: no classifier "
                                      "can be fine-tuned on it"}
    epochs = _baseline_best_epoch(run) or c.train.epochs
    tcfg = run.train_config(epochs=epochs, patience=None)
    active = [m for m in methods() if c.compress[m.name].enabled]
    work = run.out / "crossval"
    space = run.workspace()
    predicted: dict[int, str] = {}
    fold_of: dict[int, int] = {}
    sums: dict[str, dict[tuple, list[int]]] = {}
    for k, (train, held) in enumerate(folds):
        run.log(f"stage crossval: fold {k + 1}/{len(folds)} ({len(train)} training, {len(held)} held-out clips)")
        model = _fit_fold(run.encoder, ds, c.label, train, tcfg, work / f"fold-{k + 1}", run.progress)
        for i, p in zip(held, _predict(model, ds, held, c.batch_size)):
            predicted[int(i)], fold_of[int(i)] = p, k + 1
        for m in active:
            rows = m.cross_validate(model, task, train, held, space, c.seed, c.compress[m.name])
            for r in rows or []:
                step = tuple((key, r[key]) for key in r if key not in ("correct", "n"))
                acc = sums.setdefault(m.name, {}).setdefault(step, [0, 0])
                acc[0] += int(r["correct"])
                acc[1] += int(r["n"])
        del model
    shutil.rmtree(work, ignore_errors=True)
    held_all = sorted(predicted)
    y_true = [labels[i] for i in held_all]
    y_pred = [predicted[i] for i in held_all]
    guard = above_chance(y_true, y_pred, [labels[i] for i in pool])
    guard["split"] = f"cross-validation ({len(folds)} folds over the training pool)"
    per_method = {name: {"choice": next(m.cv_choice for m in active if m.name == name),
                         "rows": [{**dict(step), "cv_accuracy": cnt[0] / cnt[1] if cnt[1] else float("nan"),
                                   "n_cv": cnt[1]} for step, cnt in steps.items()]}
                  for name, steps in sums.items()}
    return {**base, "applied": True, "n": int(len(pool)), "folds": len(folds), "grouped": plan.grouped,
            "plan_note": plan.note, "grouped_by": ds.group_column if plan.grouped else None, "epochs": int(epochs),
            "fold_sizes": [[int(len(a)), int(len(b))] for a, b in folds],
            "accuracy": float(np.mean([a == b for a, b in zip(y_true, y_pred)])),
            "predictions": [{"index": i, "key": ds.items[i].key, "fold": fold_of[i], "true": labels[i],
                             "predicted": predicted[i]} for i in held_all],
            "chance_guard": guard, "methods": per_method}


def _unapplied(run: Any) -> dict[str, Any]:
    """The stage result before anything is decided: the mode and the validation split's check (classes = those of
    the training split, which the classifier learns)."""
    parts = run.task().parts()
    labels = run.dataset.labels(run.cfg.label)
    classes = sorted({labels[i] for i in parts["train"]}, key=_natural)
    return {"mode": run.cfg.selection.cv, "validation": validation_check(labels, parts["validation"], classes),
            "applied": False}


def _baseline_best_epoch(run: Any) -> int | None:
    cands = (run.results.get("baseline") or {}).get("candidates") or []
    if not cands:
        return None
    path = Path(cands[0]["model_dir"]) / "training.json"
    if not path.exists():
        return None
    best = json.loads(path.read_text()).get("training", {}).get("best_epoch")
    return int(best) if best else None


def _fit_fold(encoder: Any, ds: Any, label: str, train: np.ndarray, cfg: Any, work: Path, progress: bool) -> Any:
    """A fold baseline: the pretrained ``encoder`` with a fresh head (seed = the run's), trained on ``train`` only."""
    from speechprune.models.classifier import add_classification_head
    from speechprune.train.data import ClassifierCollate, ClipDataset
    from speechprune.train.loop import Trainer

    values = ds.labels(label)
    classes = sorted({values[i] for i in train}, key=_natural)
    enc = add_classification_head(encoder, classes, seed=cfg.seed)
    shutil.rmtree(work, ignore_errors=True)
    clips = ClipDataset(ds, train, label, classes, max_seconds=cfg.max_seconds, preload=cfg.preload)
    # the per-epoch check reads the fold's own training clips: nothing of the held-out fold steers the fold model
    trainer = Trainer(enc.model, clips, clips, ClassifierCollate(enc), cfg, work, progress=progress,
                      description=f"cross-validation fold ({len(train)} clips)")
    trainer.fit()
    enc.model = trainer.model.eval()
    return enc


def _predict(model: Any, ds: Any, idx: np.ndarray, batch_size: int) -> list[str]:
    from speechprune.models.classifier import class_names
    from speechprune.train.evaluate import predict_logits

    classes = class_names(model)
    return [classes[k] for k in predict_logits(model, ds, [int(i) for i in idx], batch_size=batch_size).argmax(1)]


#: How each choice of a run is made, for the record of the ``evaluate`` stage (``selection``).
NOT_CROSS_VALIDATED = (
    "each candidate would have to be re-fine-tuned on every fold (k times the run's training); it stays on the "
    "validation split")


def selection_record(cv: dict[str, Any] | None, n_validation: int, n_pool: int,
                     choices: list[str] | None = None, pool_choices: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per choice of the run: what it was made on (``validation``, ``cross-validation`` or the pool),
    with n, and why a choice was not cross-validated when the fallback is active. ``choices``: the
    :attr:`~speechprune.compress.base.Compression.cv_choice` of the enabled methods that could cross-validate;
    ``pool_choices``: their ``pool_choice`` ("what: why no held-out clips are needed")."""
    applied = bool(cv and cv.get("applied"))
    small = bool(cv) and not (cv.get("validation") or {}).get("ok", True)
    cv_on = (f"cross-validation ({cv['folds']} folds, {'group-aware' if cv.get('grouped') else 'stratified'}, over "
             f"the training + validation clips)") if applied else ""
    why = NOT_CROSS_VALIDATED if applied or small else ""
    reason = (cv or {}).get("reason", "") if small else ""
    val = {"chosen_on": "validation", "n": n_validation}
    cv_methods = {v["choice"] for v in ((cv or {}).get("methods") or {}).values()} if applied else set()
    out = [{"choice": "best epoch (every fine-tuned model)", **val, "note": why}]
    for text in pool_choices or []:
        choice, _, note = text.partition(": ")
        out.append({"choice": choice, "chosen_on": "training + validation clips", "n": n_pool, "note": note})
    for choice in choices or []:
        out.append({"choice": choice, "chosen_on": cv_on, "n": cv["n"], "note": ""} if choice in cv_methods else
                   {"choice": choice, **val, "note": reason})
    out.append({"choice": "chance guard (recommend at all?)", "chosen_on": cv_on, "n": cv["n"], "note": ""}
               if applied else {"choice": "chance guard (recommend at all?)", **val, "note": reason})
    out.append({"choice": "recommended candidate (among fine-tuned, distilled, structured and removal candidates)",
                **val, "note": why})
    return out
