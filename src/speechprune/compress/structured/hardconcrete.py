"""The HardConcrete gate (Louizos et al. 2018), with DPHuBERT's semantics (docs/methods.md §3).

Why this distribution: a HardConcrete sample is exactly 0 or exactly 1 with positive probability and continuous in
between, so a mask sampled from it can switch units off during training while the expected number of non-zero
gates (:meth:`HardConcrete.l0_norm`) stays a smooth function of ``log_alpha``. That expectation is what the
differentiable cost (:mod:`.cost`) is built from.

Semantics follow DPHuBERT's ``wav2vec2/hardconcrete.py`` (itself from FLOP):

* training sample: ``u ~ U(eps, 1 - eps)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
  ``z = clamp(s * (r - l) + l, 0, 1)``;
* expected L0: ``sum(sigmoid(log_alpha - beta * log(-l / r)))``;
* eval mask: ``n0 = round(n - E[L0])`` entries with the smallest ``soft = sigmoid(0.8 * log_alpha / beta)`` are
  set to 0; the others **keep their soft value** (pruning multiplies it into the weights);
* init: ``log_alpha ~ N(log((1 - p0) / p0), 0.01^2)`` where ``p0`` is the initial drop rate.

One addition: ``min_keep`` (default 0). A conv layer with no channel left would cut the network in two, so the
conv gates use ``min_keep=1`` and their eval mask never zeroes the last channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Initial drop rates of DPHuBERT: almost everything kept for conv channels, heads and layer gates; 0.5 for FFN units.
P0_KEEP = 0.01
P0_FFN = 0.5


class HardConcrete(nn.Module):
    """``n`` HardConcrete gates with learnable ``log_alpha``; ``forward()`` returns a mask of shape ``(n,)``.

    Training mode samples a fresh mask at every call; eval mode returns the deterministic eval mask
    (:meth:`eval_mask`). ``init_mean`` is the initial drop rate ``p0``.
    """

    def __init__(
        self,
        n: int,
        init_mean: float = P0_KEEP,
        init_std: float = 0.01,
        beta: float = 2.0 / 3.0,
        l: float = -0.1,  # noqa: E741 - the paper's name
        r: float = 1.1,
        eps: float = 1e-6,
        min_keep: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n <= 0:
            raise ValueError(f"HardConcrete needs at least one gate, got n={n}")
        if not 0.0 < init_mean < 1.0:
            raise ValueError(f"init_mean (initial drop rate) must be in (0, 1), got {init_mean}")
        self.n = int(n)
        self.init_mean = float(init_mean)
        self.init_std = float(init_std)
        self.beta = float(beta)
        self.l = float(l)
        self.r = float(r)
        self.eps = float(eps)
        self.min_keep = int(min_keep)
        #: Shift that turns log_alpha into the logit of P(gate != 0).
        self.l0_shift = -self.beta * math.log(-self.l / self.r)
        self.log_alpha = nn.Parameter(torch.empty(self.n))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw ``log_alpha`` around the initial drop rate, from ``generator`` (a CPU generator; ``None``: torch's
        global one) — a seeded generator makes the initial gates independent of what ran before."""
        mean = math.log(1.0 - self.init_mean) - math.log(self.init_mean)
        with torch.no_grad():
            self.log_alpha.normal_(mean, self.init_std, generator=generator)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z_i != 0) per gate (differentiable)."""
        return torch.sigmoid(self.log_alpha + self.l0_shift)

    def l0_norm(self) -> torch.Tensor:
        """Expected number of non-zero gates E[L0] (differentiable): what the cost model uses as the kept count."""
        return self.prob_nonzero().sum()

    def sample(self) -> torch.Tensor:
        """One training sample of the mask (differentiable w.r.t. ``log_alpha``); values in [0, 1]."""
        u = torch.empty_like(self.log_alpha).uniform_(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return torch.clamp(s * (self.r - self.l) + self.l, 0.0, 1.0)

    @torch.no_grad()
    def num_zeros(self) -> int:
        """How many entries the eval mask zeroes: ``round(n - E[L0])`` (capped so ``min_keep`` survive)."""
        n0 = round(self.n - float(self.l0_norm()))
        return max(0, min(n0, self.n - self.min_keep))

    @torch.no_grad()
    def eval_mask(self) -> torch.Tensor:
        """Deterministic mask: the ``num_zeros()`` smallest soft values set to 0, the rest keep their soft value."""
        soft = torch.sigmoid(0.8 * self.log_alpha.detach() / self.beta)
        n0 = self.num_zeros()
        if n0 > 0:
            idx = torch.topk(soft, k=n0, largest=False).indices
            soft[idx] = 0.0
        return soft

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.eval_mask()

    def extra_repr(self) -> str:
        return f"n={self.n}, init_mean={self.init_mean}, beta={self.beta:.4g}, l={self.l}, r={self.r}"
