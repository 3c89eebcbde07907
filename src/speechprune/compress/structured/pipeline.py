"""The ``structured`` stage of ``speechprune run``: HJ-Pruning of the fine-tuned baseline to each configured budget.

Every budget in ``compress.structured.budgets`` (e.g. ``macs=0.5``, ``size=0.5``,
``frontend-macs=0.5,transformer-macs=0.5``) becomes one candidate ``structured-<budget>`` in
``<out>/models/``. Pruned folders load with :func:`speechprune.models.load_encoder` (stock or not), so the profile
stage needs no special loader.
"""

from __future__ import annotations

import re
from typing import Any


def candidate_name(budget: str) -> str:
    """``"frontend-macs=0.5,transformer-macs=0.4"`` → ``"structured-frontend-macs0.5-transformer-macs0.4"``."""
    return "structured-" + re.sub(r"[^A-Za-z0-9.]+", "-", budget.replace("=", "")).strip("-")


def run_structured_stage(run: Any) -> dict[str, Any]:
    from speechprune.compress.structured.train import prune_structured
    from speechprune.models import load_encoder
    from speechprune.train.finetune import work_dir_for

    c = run.cfg
    section = c.compress.structured
    teacher = load_encoder(run.results["baseline"]["candidates"][0]["model_dir"])
    candidates = []
    for budget in section.budgets:
        name = candidate_name(budget)
        out = run.out / "models" / name
        resume = work_dir_for(out).exists()
        res = prune_structured(teacher, run.dataset, c.label, out, budget, run.train_config(epochs=section.epochs),
                               run.split_spec(), resume=resume, overwrite=not resume, progress=run.progress,
                               latency_repeats=0, p0_keep=section.p0_keep, gate_lr=section.gate_lr,
                               reg_lr=section.reg_lr, target_warmup=section.target_warmup,
                               finetune_epochs=section.finetune_epochs)
        if "test" not in res:
            continue  # another process of a multi-process run: the main process evaluates and saves
        test = res["test"]
        candidates.append({
            "name": name, "kind": f"structured pruning (HJ-Pruning, {budget})", "model_dir": str(out),
            "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "num_layers": teacher.num_layers,
            "kept_layers": getattr(teacher, "kept_layers", None), "train_seconds": res["training"]["train_seconds"],
            "budget": budget, "budget_met": res["budget_met"], "max_abs_budget_error": res["max_abs_budget_error"],
            "stock_folder": res["stock_folder"],
        })
    return {"candidates": candidates}
