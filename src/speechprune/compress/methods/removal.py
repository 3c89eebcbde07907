"""Layer removal without retraining: from the fine-tuned baseline, remove layers one at a time in each order,
evaluate after each step on validation and on test (retained-accuracy curves, ``removal/removal.csv`` + ``.png``),
and keep per order the model with the most layers removed that still retains ``min_retained`` of the *validation*
accuracy (test is recorded and reported, never read to choose). When the validation split is too small, the
``crossval`` stage's pooled held-out curves of fold baselines (``cv_retained``) choose instead."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from speechprune.compress.base import Candidate, Compression, Task, Teacher, Workspace
from speechprune.errors import SpeechpruneError


@dataclass
class RemovalOptions:
    """``compress.removal`` of ``speechprune run``."""

    enabled: bool = True
    #: Removal orders (:data:`speechprune.compress.layers.ORDERS`; a test keeps this list equal to it: spelled out
    #: here so that reading a run config does not import torch).
    orders: list[str] = field(default_factory=lambda: ["backward", "forward", "block-influence", "knn-block-influence"])
    #: A candidate must keep at least this share of the baseline's accuracy.
    min_retained: float = 0.95


class Removal(Compression):
    name = "removal"
    options = RemovalOptions
    inputs = ("baseline", "crossval")
    figures = (("Layer removal without retraining: validation (chooses) and test (reported)", "removal/removal.png"),)

    cv_choice = "removal depth per order"

    def cross_validate(self, fold_model: Any, task: Task, train: Any, held: Any, out: Workspace, seed: int,
                       options: RemovalOptions) -> list[dict[str, Any]]:
        """The fold baseline's removal curve per order on its held-out clips (its own order: backward and forward
        are the same for every model, the influence orders are probed on the fold's training clips)."""
        from speechprune.compress.layers import block_influence, removal_order, split_removal_curve

        influence = None
        if any("influence" in o for o in options.orders):
            rng = np.random.default_rng(seed)
            probe = np.sort(rng.choice(train, size=min(200, len(train)), replace=False))
            influence = block_influence(fold_model, task.dataset, probe, batch_size=out.batch_size)
        rows = []
        for order in options.orders:
            seq = removal_order(order, fold_model.num_layers, (influence or {}).get(order))
            for r in split_removal_curve(fold_model, task.dataset, task.label, seq,
                                         {"validation": held, "test": np.array([], dtype=np.int64)},
                                         batch_size=out.batch_size, profile_seconds=out.profile_seconds,
                                         order_name=order, unknown_wrong=True):
                rows.append({"order": order, "removed": r["removed"],
                             "correct": int(round(r["val_accuracy"] * r["n_validation"])), "n": r["n_validation"]})
        return rows

    def validate(self, options: RemovalOptions) -> None:
        from speechprune.compress.layers import ORDERS
        from speechprune.utils.checks import check_finite

        bad = [o for o in options.orders if o not in ORDERS]
        if bad:
            raise SpeechpruneError(f"orders: unknown {bad}; allowed: {', '.join(ORDERS)}")
        check_finite(options.min_retained, "min_retained", low=0.0, high=1.0, low_open=True)

    def run(self, teacher: Teacher, task: Task, out: Workspace, train: Any, options: RemovalOptions
            ) -> list[Candidate]:
        from speechprune.compress.layers import block_influence, plot_removal_curves, removal_order, split_removal_curve
        from speechprune.data.splits import make_splits

        enc = teacher.load()
        enc.model.to(out.torch_device())
        parts = make_splits(task.dataset, task.label, task.split)
        orders = list(options.orders)
        influence = None
        if any("influence" in o for o in orders):
            rng = np.random.default_rng(train.seed)
            probe = np.sort(rng.choice(parts["train"], size=min(200, len(parts["train"])), replace=False))
            influence = block_influence(enc, task.dataset, probe, batch_size=out.batch_size)
        rows: list[dict[str, Any]] = []
        for order in orders:
            seq = removal_order(order, enc.num_layers, (influence or {}).get(order))
            rows += split_removal_curve(enc, task.dataset, task.label, seq, parts, batch_size=out.batch_size,
                                        profile_seconds=out.profile_seconds, order_name=order,
                                        progress=out.progress, seed=train.seed)
        cv = teacher.crossval or {}
        cv_rows = {(r["order"], r["removed"]): r for r in ((cv.get("methods") or {}).get(self.name) or {}).get(
            "rows", [])} if cv.get("applied") else {}
        use_cv = bool(cv_rows) and all((r["order"], r["removed"]) in cv_rows for r in rows)
        key = "cv_retained" if use_cv else "val_retained"
        if use_cv:  # validation too small: the depth is chosen on the pooled held-out folds of the training pool
            for r in rows:
                c, c0 = cv_rows[(r["order"], r["removed"])], cv_rows[(r["order"], 0)]
                r.update(cv_accuracy=c["cv_accuracy"], n_cv=c["n_cv"], cv_retained=c["cv_accuracy"] /
                         c0["cv_accuracy"] if c0["cv_accuracy"] else float("nan"))
        folder = out.folder(self.name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "removal.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        plot_removal_curves(rows, folder / "removal.png", title="layer removal without retraining")
        chosen_on = (f"cross-validation ({cv['folds']} folds over the training pool, n = {cv['n']})" if use_cv
                     else f"validation (n = {len(parts['validation'])})")
        candidates = []
        for order in orders:
            ok = [r for r in rows if r["order"] == order and r[key] >= options.min_retained and r["removed"] > 0]
            if not ok:
                continue
            best = max(ok, key=lambda r: r["removed"])  # chosen on validation (or its cross-validated fallback)
            drop = [int(x) for x in best["removed_layers"].split()]
            name = f"removal-{order}-r{best['removed']}"
            pruned = enc.drop_layers(drop)
            pruned.save_pretrained(out.model_dir(name), metadata={"removed_layers": drop, "order": order})
            candidates.append(Candidate(
                name, f"removal without retraining ({order}, {best['removed']} layers)", str(out.model_dir(name)),
                {"accuracy": best["test_accuracy"], "macro_f1": best["test_macro_f1"]},
                {"num_layers": pruned.num_layers, "kept_layers": pruned.kept_layers, "train_seconds": 0.0,
                 "val_accuracy": best["val_accuracy"], "depth_chosen_on": chosen_on}, self.name))
        out.details.update({
            "chosen_on": chosen_on, "csv": str(folder / "removal.csv"), "plot": str(folder / "removal.png"), "rows": rows,
            "influence": {k: {str(i): v for i, v in d.items()} for k, d in (influence or {}).items()}})
        return candidates
