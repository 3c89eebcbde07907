"""Layer removal without retraining: from the fine-tuned baseline, remove layers one at a time in each order,
evaluate after each step on validation and on test (retained-accuracy curves, ``removal/removal.csv`` + ``.png``),
and keep per order the model with the most layers removed that still retains ``min_retained`` of the *validation*
accuracy (test is recorded and reported, never read to choose)."""

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
    inputs = ("baseline",)
    figures = (("Layer removal without retraining: validation (chooses) and test (reported)", "removal/removal.png"),)

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
        folder = out.folder(self.name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "removal.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        plot_removal_curves(rows, folder / "removal.png", title="layer removal without retraining")
        candidates = []
        for order in orders:
            ok = [r for r in rows if r["order"] == order and r["val_retained"] >= options.min_retained
                  and r["removed"] > 0]
            if not ok:
                continue
            best = max(ok, key=lambda r: r["removed"])  # chosen on validation
            drop = [int(x) for x in best["removed_layers"].split()]
            name = f"removal-{order}-r{best['removed']}"
            pruned = enc.drop_layers(drop)
            pruned.save_pretrained(out.model_dir(name), metadata={"removed_layers": drop, "order": order})
            candidates.append(Candidate(
                name, f"removal without retraining ({order}, {best['removed']} layers)", str(out.model_dir(name)),
                {"accuracy": best["test_accuracy"], "macro_f1": best["test_macro_f1"]},
                {"num_layers": pruned.num_layers, "kept_layers": pruned.kept_layers, "train_seconds": 0.0,
                 "val_accuracy": best["val_accuracy"]}, self.name))
        out.details.update({
            "csv": str(folder / "removal.csv"), "plot": str(folder / "removal.png"), "rows": rows,
            "influence": {k: {str(i): v for i, v in d.items()} for k, d in (influence or {}).items()}})
        return candidates
