"""Structured pruning (HJ-Pruning) of the fine-tuned baseline to each configured budget.

Every budget in ``budgets`` (e.g. ``macs=0.5``, ``size=0.5``, ``frontend-macs=0.5,transformer-macs=0.5``)
becomes one candidate ``structured-<budget>``. Pruned folders load with
:func:`speechprune.models.load_encoder` (stock or not), so the default loading and cost serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from speechprune.compress.base import Candidate, Compression, Task, Teacher, Workspace, metrics_of, resumable
from speechprune.errors import SpeechpruneError


@dataclass
class StructuredOptions:
    """``compress.structured`` of ``speechprune run``: the budgets, the epochs with gates and the HJ-Pruning
    options of :class:`speechprune.compress.structured.train.PruneOptions` that a run may set.

    Defaults = DPHuBERT's initialisation, plus 2 epochs of fine-tuning after pruning, which helped in every
    benchmark run. For runs of ~10^2 updates p0_keep=0.1, gate_lr=0.5, reg_lr=0.5, target_warmup=0.3 reached the
    budget far better (benchmarks/results/structured_whisper-base).
    """

    enabled: bool = False
    budgets: list[str] = field(default_factory=lambda: ["macs=0.5"])
    epochs: int = 4
    p0_keep: float = 0.01
    gate_lr: float = 0.2
    reg_lr: float = 0.2
    target_warmup: float = 0.5
    finetune_epochs: int = 2  # fine-tuning after pruning; 0 = pure HJ-Pruning (see the structured benchmark)


def candidate_name(budget: str) -> str:
    """``"frontend-macs=0.5,transformer-macs=0.4"`` → ``"structured-frontend-macs0.5-transformer-macs0.4"``."""
    return "structured-" + re.sub(r"[^A-Za-z0-9.]+", "-", budget.replace("=", "")).strip("-")


class Structured(Compression):
    name = "structured"
    options = StructuredOptions
    inputs = ("baseline", "train")
    trains = True

    def validate(self, options: StructuredOptions) -> None:
        from speechprune.compress.structured.budget import parse_budget

        from speechprune.compress.structured.train import PruneOptions

        if not options.budgets:
            raise SpeechpruneError("budgets: none given (e.g. macs=0.5)")
        if options.epochs < 1:
            raise SpeechpruneError(f"epochs must be >= 1, got {options.epochs}")
        for budget in options.budgets:
            parse_budget(budget)
            PruneOptions(budgets=budget, p0_keep=options.p0_keep, gate_lr=options.gate_lr, reg_lr=options.reg_lr,
                         target_warmup=options.target_warmup, finetune_epochs=options.finetune_epochs).validate()

    def run(self, teacher: Teacher, task: Task, out: Workspace, train: Any, options: StructuredOptions
            ) -> list[Candidate]:
        import dataclasses

        from speechprune.compress.structured.train import prune_structured

        enc = teacher.load()
        cfg = dataclasses.replace(train, epochs=options.epochs).validate()
        hj = {k: getattr(options, k) for k in ("p0_keep", "gate_lr", "reg_lr", "target_warmup", "finetune_epochs")}
        candidates = []
        for budget in options.budgets:
            path = out.model_dir(name := candidate_name(budget))
            res = prune_structured(enc, task.dataset, task.label, path, budget, cfg, task.split, **resumable(path),
                                   progress=out.progress, latency_repeats=0, **hj)
            if "test" not in res:
                continue  # another process of a multi-process run: the main process evaluates and saves
            provenance = {"num_layers": enc.num_layers, "kept_layers": getattr(enc, "kept_layers", None),
                          "train_seconds": res["training"]["train_seconds"], "budget": budget,
                          **{k: res[k] for k in ("budget_met", "max_abs_budget_error", "stock_folder")}}
            candidates.append(Candidate(name, f"structured pruning (HJ-Pruning, {budget})", str(path),
                                        metrics_of(res["test"]), provenance, self.name))
        return candidates
