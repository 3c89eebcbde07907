"""Layer removal without retraining: from the fine-tuned baseline, remove layers one at a time in each order,
evaluate after each step (retained-accuracy curves, ``removal/removal.csv`` + ``.png``), and keep per order the
model with the most layers removed that still retains ``min_retained`` of the accuracy."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
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
    figures = (("Layer removal without retraining", "removal/removal.png"),)

    def validate(self, options: RemovalOptions) -> None:
        from speechprune.compress.layers import ORDERS
        from speechprune.utils.checks import check_finite

        bad = [o for o in options.orders if o not in ORDERS]
        if bad:
            raise SpeechpruneError(f"orders: unknown {bad}; allowed: {', '.join(ORDERS)}")
        check_finite(options.min_retained, "min_retained", low=0.0, high=1.0, low_open=True)

    def run(self, teacher: Teacher, task: Task, out: Workspace, train: Any, options: RemovalOptions
            ) -> list[Candidate]:
        enc = teacher.load()
        orders = list(options.orders)
        folder = out.folder(self.name)
        rows, influence = removal_curves(enc, task, orders, folder, batch_size=out.batch_size,
                                         profile_seconds=out.profile_seconds, seed=train.seed, progress=out.progress,
                                         title="layer removal without retraining")
        candidates = []
        for order in orders:
            ok = [r for r in rows if r["order"] == order and r["retained"] >= options.min_retained and r["removed"] > 0]
            if not ok:
                continue
            best = max(ok, key=lambda r: r["removed"])
            drop = [int(x) for x in best["removed_layers"].split()]
            name = f"removal-{order}-r{best['removed']}"
            pruned = enc.drop_layers(drop)
            pruned.save_pretrained(out.model_dir(name), metadata={"removed_layers": drop, "order": order})
            candidates.append(Candidate(
                name, f"removal without retraining ({order}, {best['removed']} layers)", str(out.model_dir(name)),
                {"accuracy": best["accuracy"], "macro_f1": best["macro_f1"]},
                {"num_layers": pruned.num_layers, "kept_layers": pruned.kept_layers, "train_seconds": 0.0}, self.name))
        out.details.update({"csv": str(folder / "removal.csv"), "plot": str(folder / "removal.png"), "rows": rows,
                            "influence": influence})
        return candidates


def removal_curves(enc: Any, task: Task, orders: list[str], folder: Path, *, batch_size: int = 8,
                   profile_seconds: float = 1.0, influence_clips: int = 200, seed: int = 0, progress: bool = True,
                   title: str = "layer removal without retraining") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Remove layers of the classifier ``enc`` one at a time in each order and evaluate on ``task``'s test split
    after each step; writes ``folder/removal.csv`` and ``removal.png`` and returns the rows and the block
    influence per order (``{order: {layer: score}}``; measured on ``influence_clips`` training clips drawn with
    ``seed``, for the orders that need it)."""
    from speechprune.compress.layers import block_influence, plot_removal_curves, removal_curve, removal_order
    from speechprune.data.splits import make_splits
    from speechprune.utils.io import atomic_path

    parts = make_splits(task.dataset, task.label, task.split)
    influence = None
    if any("influence" in o for o in orders):
        rng = np.random.default_rng(seed)
        probe = np.sort(rng.choice(parts["train"], size=min(influence_clips, len(parts["train"])), replace=False))
        influence = block_influence(enc, task.dataset, probe, batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    for order in orders:
        seq = removal_order(order, enc.num_layers, (influence or {}).get(order))
        rows += removal_curve(enc, task.dataset, task.label, seq, parts["test"], batch_size=batch_size,
                              profile_seconds=profile_seconds, order_name=order, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "removal.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_removal_curves(rows, folder / "removal.png", title=title)
    return rows, {k: {str(i): v for i, v in d.items()} for k, d in (influence or {}).items()}
