"""HardConcrete gate: sampling statistics, eval mask, initialisation (methods.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from speechprune.compress.structured import HardConcrete

torch.set_num_threads(1)


def test_expected_l0_matches_sampled_nonzero_probability() -> None:
    torch.manual_seed(0)
    values = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.5, 4.0])
    reps = 40_000
    g = HardConcrete(len(values) * reps, init_mean=0.5)  # one gate per (value, draw): all draws in one call
    with torch.no_grad():
        g.log_alpha.copy_(values.repeat_interleave(reps))
    g.train()
    freq = (g().detach() != 0).float().view(len(values), reps).mean(1)
    expected = g.prob_nonzero().detach().view(len(values), reps)[:, 0]
    assert torch.allclose(freq, expected, atol=0.01)
    # E[L0] of a 6-gate module is the sum of those probabilities
    small = HardConcrete(len(values))
    with torch.no_grad():
        small.log_alpha.copy_(values)
    assert small.l0_norm().item() == pytest.approx(float(freq.sum()), abs=0.03)


def test_training_samples_in_unit_interval_and_hit_both_ends() -> None:
    torch.manual_seed(1)
    g = HardConcrete(1000, init_mean=0.5)
    g.train()
    z = g()
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    assert int((z == 0).sum()) > 0 and int((z == 1).sum()) > 0
    assert int(((z > 0) & (z < 1)).sum()) > 0
    z.sum().backward()  # differentiable w.r.t. log_alpha
    assert g.log_alpha.grad is not None and float(g.log_alpha.grad.abs().sum()) > 0


def test_large_log_alpha_gives_all_ones() -> None:
    g = HardConcrete(50)
    with torch.no_grad():
        g.log_alpha.fill_(20.0)
    g.train()
    assert torch.equal(g(), torch.ones(50))
    g.eval()
    assert torch.allclose(g(), torch.ones(50), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eval_mask_zeroes_round_n_minus_expected_l0(seed: int) -> None:
    torch.manual_seed(seed)
    g = HardConcrete(37)
    with torch.no_grad():
        g.log_alpha.normal_(0.0, 3.0)
    g.eval()
    m = g()
    n0 = round(37 - float(g.l0_norm()))
    assert int((m == 0).sum()) == n0
    soft = torch.sigmoid(0.8 * g.log_alpha.detach() / g.beta)
    kept = m != 0
    assert torch.allclose(m[kept], soft[kept])  # kept entries keep their soft value
    assert float(soft[~kept].max()) <= float(soft[kept].min())  # the smallest ones are zeroed


def test_min_keep_and_init() -> None:
    g = HardConcrete(8, min_keep=1)
    with torch.no_grad():
        g.log_alpha.fill_(-30.0)
    assert int((g.eval_mask() != 0).sum()) == 1
    torch.manual_seed(0)
    h = HardConcrete(20_000, init_mean=0.01)
    mean = math.log(0.99 / 0.01)
    assert float(h.log_alpha.mean()) == pytest.approx(mean, abs=1e-3)
    assert float(h.log_alpha.std()) == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError):
        HardConcrete(0)


def test_seeded_gates_do_not_depend_on_the_global_rng() -> None:
    """Structured pruning seeds the gates' initialisation itself (issue 16): the same seed gives the same initial
    gates whatever was drawn from torch's global generator before."""
    from speechprune.compress.structured import attach_gates
    from speechprune.models import load_encoder

    def initial(global_seed: int, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        gated = attach_gates(load_encoder("tiny:wav2vec2").model, seed=seed)
        try:
            return {k: g.log_alpha.detach().clone() for k, g in gated.gates.items()}
        finally:
            gated.detach()

    a, b, other = initial(1, 0), initial(2, 0), initial(1, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)
