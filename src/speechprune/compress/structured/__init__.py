"""Structured pruning core (HJ-Pruning, docs/methods.md §3): HardConcrete gates on conv channels, attention heads, FFN
units and whole sub-layers of stock transformers speech models; a differentiable params/MACs cost that equals the
profiler's count; physical pruning with soft mask values folded in; export; budgets and the Lagrangian.

Typical use by a training loop::

    gated = attach_gates(model, structures=("conv", "head", "interm"))
    budgets = parse_budget("macs=0.5"); check_reachable(budgets, gated)
    reg = BudgetLagrangian(budgets, warmup_steps=5000)
    opt = AdamW([{"params": gated.model_parameters(), "lr": lr},
                 {"params": gated.gate_parameters(), "lr": reg_lr},
                 {"params": reg.parameters(), "lr": -reg_lr}])          # λ ascent
    loss = task_loss(gated(**batch)) + reg(gated, step)
    ...
    pruned = gated.prune(); save_pruned(pruned, out_dir)   # load_pruned(out_dir) reloads it
"""

from speechprune.compress.structured.budget import (
    Budget,
    BudgetError,
    BudgetLagrangian,
    TargetSchedule,
    check_reachable,
    lagrangian,
    parse_budget,
)
from speechprune.compress.structured.cost import CostModel, gate_name
from speechprune.compress.structured.export import load_pruned, pruned_class, save_pruned, stock_class
from speechprune.compress.structured.gated import GatedModel, attach_gates
from speechprune.compress.structured.hardconcrete import HardConcrete
from speechprune.compress.structured.prune import STRUCTURE_KEY
from speechprune.compress.structured.sites import DEFAULT_STRUCTURES, STRUCTURES
from speechprune.models.pruned import apply_structure

__all__ = [
    "DEFAULT_STRUCTURES", "STRUCTURES", "STRUCTURE_KEY", "Budget", "BudgetError", "BudgetLagrangian", "CostModel",
    "GatedModel", "HardConcrete", "TargetSchedule", "apply_structure", "attach_gates", "check_reachable",
    "gate_name", "lagrangian", "load_pruned", "parse_budget", "pruned_class", "save_pruned", "stock_class",
]
