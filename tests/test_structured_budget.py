"""Budgets, target schedule, Lagrangian, and the gates reaching a budget by λ ascent alone."""

from __future__ import annotations

import pytest
import torch

from speechprune.compress.structured import (
    Budget,
    BudgetError,
    BudgetLagrangian,
    TargetSchedule,
    attach_gates,
    check_reachable,
    lagrangian,
    parse_budget,
)
from speechprune.models.tiny import build_model, tiny_config

torch.set_num_threads(1)


def test_parse_budget_forms() -> None:
    assert parse_budget("macs=0.5") == [Budget("macs", "total", 0.5)]
    assert parse_budget("size=0.3") == [Budget("params", "total", 0.3)]
    assert parse_budget("frontend-macs=0.6, transformer-macs=0.4") == [
        Budget("macs", "frontend", 0.6), Budget("macs", "transformer", 0.4)]
    assert parse_budget("macs=0.25")[0].target_sparsity == pytest.approx(0.75)


@pytest.mark.parametrize("text", ["macs=0", "macs=1", "macs=1.5", "size=-0.1", "macs=abc", "flops=0.5", "macs",
                                  "middle-macs=0.5", "", "macs=0.5,macs=0.4"])
def test_bad_budgets(text: str) -> None:
    with pytest.raises(BudgetError):
        parse_budget(text)


def test_unreachable_budgets_are_refused() -> None:
    model = build_model(tiny_config("wav2vec2"))
    no_conv = attach_gates(model, ("head", "interm"))
    with pytest.raises(BudgetError, match="frontend"):
        check_reachable(parse_budget("frontend-macs=0.6"), no_conv)
    no_conv.detach()
    gated = attach_gates(model)
    with pytest.raises(BudgetError, match="cannot be reached"):
        check_reachable(parse_budget("macs=0.01"), gated)
    check_reachable(parse_budget("frontend-macs=0.6,transformer-macs=0.4"), gated)


def test_schedule_and_lagrangian_formula() -> None:
    s = TargetSchedule(0.6, warmup_steps=10)
    assert [s(0), s(5), s(10), s(100)] == pytest.approx([0.0, 0.3, 0.6, 0.6])
    assert TargetSchedule(0.6, 0)(0) == 0.6
    expected, l1, l2 = torch.tensor(40.0), torch.tensor(2.0), torch.tensor(3.0)
    # s_hat = 1 - 40/100 = 0.6, t = 0.5: 2*0.1 + 3*0.01
    assert float(lagrangian(expected, 100.0, 0.5, l1, l2)) == pytest.approx(0.23)


@pytest.mark.parametrize("spec", ["macs=0.5", "size=0.6", "frontend-macs=0.6,transformer-macs=0.4"])
def test_lagrangian_alone_drives_expected_cost_to_budget(spec: str) -> None:
    torch.manual_seed(0)
    gated = attach_gates(build_model(tiny_config("wav2vec2")))
    budgets = parse_budget(spec)
    check_reachable(budgets, gated)
    reg = BudgetLagrangian(budgets, warmup_steps=130)
    opt = torch.optim.AdamW([
        {"params": list(gated.gate_parameters()), "lr": 0.1, "weight_decay": 0.0},
        {"params": list(reg.parameters()), "lr": -0.1, "weight_decay": 0.0},  # gradient ascent on λ
    ])
    for step in range(400):
        opt.zero_grad()
        reg(gated, step).backward()
        opt.step()
    for b in budgets:
        target = b.keep * gated.full_cost(b.kind, b.part)
        got = float(gated.expected_cost(b.kind, b.part).detach())
        assert abs(got - target) <= 0.02 * target, (b, got / gated.full_cost(b.kind, b.part))
        # the pruned model lands near the budget too (eval masks round E[L0] per gate)
        assert abs(gated.final_cost(b.kind, b.part) - target) <= 0.1 * target
