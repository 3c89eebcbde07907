"""Budgets and the Lagrangian that drives the expected cost to them (docs/methods.md §3, DPHuBERT ``lightning.py``).

A budget is the **fraction of the full cost to keep**: ``macs=0.5`` keeps half the MACs (target sparsity
``t = 0.5``). Three forms, one per HJ-Pruning variant:

* ``size=0.5`` — total parameters (HJ-Pruning-Size);
* ``macs=0.5`` — total MACs (HJ-Pruning-MAC);
* ``frontend-macs=0.6,transformer-macs=0.4`` — separate MAC budgets for the CNN front end and the rest
  (HJ-Pruning-SepMAC; two Lagrangian terms). Any ``<part>-<kind>`` pair is accepted
  (``part`` in total/frontend/transformer, ``kind`` in macs/size).

For each term: ``ŝ = 1 − E[cost]/cost_full``, ``L = λ1(ŝ − t) + λ2(ŝ − t)²``, ``t`` ramped linearly from 0 to
the target over the warm-up steps (:class:`TargetSchedule`). The λ are *maximised*: put them in an optimizer
group with a negative learning rate (``lr = -reg_lr``), as DPHuBERT does, and the gates minimise ``L``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from speechprune.errors import SpeechpruneError

if TYPE_CHECKING:
    from speechprune.compress.structured.gated import GatedModel

_KIND_ALIASES = {"macs": "macs", "size": "params", "params": "params"}
_PARTS = ("total", "frontend", "transformer")


class BudgetError(SpeechpruneError):
    """A budget that cannot be parsed or cannot be reached with the chosen structures."""


@dataclass(frozen=True)
class Budget:
    """Keep ``keep`` (0 < keep < 1) of the ``kind`` (``macs``/``params``) cost of ``part``."""

    kind: str
    part: str
    keep: float

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.keep

    @property
    def name(self) -> str:
        return f"{self.part}-{self.kind}"


def parse_budget(text: str) -> list[Budget]:
    """Parse ``"macs=0.5"``, ``"size=0.5"``, ``"frontend-macs=0.6,transformer-macs=0.4"``."""
    budgets: list[Budget] = []
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise BudgetError(f"budget item {item!r} is not of the form name=value (e.g. macs=0.5)")
        part, _, kind = key.strip().lower().rpartition("-")
        part = part or "total"
        if kind not in _KIND_ALIASES or part not in _PARTS:
            raise BudgetError(
                f"unknown budget {key!r}: use macs, size, or <part>-<macs|size> with part in {', '.join(_PARTS)}"
            )
        try:
            keep = float(value)
        except ValueError as exc:
            raise BudgetError(f"budget {key!r} value {value!r} is not a number") from exc
        if not 0.0 < keep < 1.0:
            raise BudgetError(f"budget {key}={value}: the fraction to keep must be in (0, 1)")
        b = Budget(_KIND_ALIASES[kind], part, keep)
        if any(x.name == b.name for x in budgets):
            raise BudgetError(f"budget {key!r} given twice")
        budgets.append(b)
    if not budgets:
        raise BudgetError("empty budget: give e.g. macs=0.5")
    return budgets


def check_reachable(budgets: list[Budget], gated: GatedModel, num_samples: int = 16_000, margin: float = 0.01) -> None:
    """Raise :class:`BudgetError` when a budget lies below what the gated structures can reach (with every gate
    at its floor), e.g. a front-end budget without conv gates. ``gated`` is a :class:`~.gated.GatedModel`."""
    for b in budgets:
        full = gated.full_cost(b.kind, b.part, num_samples)
        floor = gated.min_cost(b.kind, b.part, num_samples) / full
        if b.keep < floor + margin:
            raise BudgetError(
                f"budget {b.name}={b.keep:g} cannot be reached with structures {list(gated.structures)}: "
                f"removing everything they can still keeps {floor:.3f} of the {b.part} {b.kind}"
            )


def lagrangian(
    expected: torch.Tensor, full: float, target: float, lambda1: torch.Tensor, lambda2: torch.Tensor
) -> torch.Tensor:
    """``λ1(ŝ − t) + λ2(ŝ − t)²`` with ``ŝ = 1 − expected/full`` (``target`` = t, a sparsity)."""
    diff = (1.0 - expected / full) - target
    return lambda1 * diff + lambda2 * diff * diff


class TargetSchedule:
    """Target sparsity ramped linearly from 0 to ``target`` over ``warmup_steps`` (then constant)."""

    def __init__(self, target: float, warmup_steps: int) -> None:
        if not 0.0 <= target < 1.0:
            raise BudgetError(f"target sparsity must be in [0, 1), got {target}")
        self.target = float(target)
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.target
        return self.target * min(1.0, max(0, step) / self.warmup_steps)


class BudgetLagrangian(nn.Module):
    """One Lagrangian term per budget, with its own λ1, λ2 (``nn.Parameter``; train them with ``lr = -reg_lr``).

    ``forward(gated, step)`` returns the summed term as a float64 scalar; ``last`` holds per-budget diagnostics
    (expected fraction kept, target) of the latest call for logging.
    """

    def __init__(self, budgets: list[Budget], warmup_steps: int, num_samples: int = 16_000) -> None:
        super().__init__()
        self.budgets = list(budgets)
        self.num_samples = int(num_samples)
        self.schedules = [TargetSchedule(b.target_sparsity, warmup_steps) for b in self.budgets]
        self.lambda1 = nn.Parameter(torch.zeros(len(self.budgets), dtype=torch.float64))
        self.lambda2 = nn.Parameter(torch.zeros(len(self.budgets), dtype=torch.float64))
        self.last: dict[str, dict[str, float]] = {}

    def forward(self, gated: GatedModel, step: int) -> torch.Tensor:
        total = self.lambda1.new_zeros(())  # on the multipliers' device
        for i, (b, sched) in enumerate(zip(self.budgets, self.schedules)):
            expected = gated.expected_cost(b.kind, b.part, self.num_samples)
            full = float(gated.full_cost(b.kind, b.part, self.num_samples))
            t = sched(step)
            total = total + lagrangian(expected, full, t, self.lambda1[i], self.lambda2[i])
            self.last[b.name] = {"expected_keep": float(expected.detach()) / full, "target_keep": 1.0 - t}
        return total
