"""Differentiable parameter and MAC cost of a gated model, from (expected) kept counts.

Why this shape: the profiler (:mod:`speechprune.profile`) is the reference count. The cost here is

    cost(counts) = fixed + Σ dependent_terms(counts)

where ``dependent_terms`` are the parts that change with a gate (conv channels, heads, FFN units, layer gates),
written with the profiler's own per-term formulas (``conv1d_macs``, ``attention_macs``, ``ffn_macs``,
``gated_rel_pos_macs``, ``linear_macs``), and ``fixed`` is the profiler's full count minus the dependent terms at
full size. So at full size the cost *is* the profiler's count by construction (positional conv, norms, heads,
Whisper's window arithmetic are never re-derived), and after pruning it matches ``count_params`` /
``count_macs`` of the physically pruned model exactly (tested).

Parts: ``frontend`` is the convolutional front end (profiler part ``front_end``: the wav2vec2 CNN, Whisper's two
convs); ``transformer`` is everything else (feature projection, positional conv, layers, norms, task head);
``total`` is their sum. A ``counts`` entry is a gate's kept count (``E[L0]`` while training: a tensor with
gradient; the number of non-zero eval-mask entries after training); a missing entry means "not gated, full size".
Costs are float64 tensors so that multi-GMAC totals are exact for integer counts.

Per-term formulas (g = layer gate, 1 when absent; docs/methods.md §3):
    conv l:  params k·C_{l-1}·C_l + bias·C_l + norm 2·C_l;   MACs T_l·k·C_{l-1}·C_l
    MHA:     params g·(h·d_h·(3D + #qkv biases) + h·d_h·D + D·[out bias] + h·[WavLM const])
             MACs g·(4·T·D·h·d_h + 2·T²·h·d_h + [WavLM] T·h·d_h·8)
    FFN:     params g·(F·(D+1) + F·D + D);   MACs g·2·T·D·F
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechprune.compress.structured.sites import ModelSites
from speechprune.errors import SpeechpruneError
from speechprune.profile.macs import (
    attention_macs,
    conv1d_macs,
    ffn_macs,
    gated_rel_pos_macs,
    linear_macs,
    mac_breakdown,
)
from speechprune.profile.params import count_params

KINDS = ("macs", "params")
PARTS = ("total", "frontend", "transformer")
Counts = dict[str, Any]


def gate_name(structure: str, index: int) -> str:
    """Gate key: ``conv_<i>`` (0-based conv index), ``head_<l>``/``interm_<l>``/``attlayer_<l>``/``ffnlayer_<l>``
    (layer number 1..L)."""
    return f"{structure}_{index}"


def _f64(x: Any) -> torch.Tensor:
    return x.to(torch.float64) if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


def _norm_params(norm: nn.Module | None, channels: Any) -> Any:
    if norm is None:
        return 0
    affine = getattr(norm, "elementwise_affine", getattr(norm, "affine", False))
    n = (norm.weight is not None) + (getattr(norm, "bias", None) is not None) if affine else 0
    return n * channels


def _bias(m: nn.Module) -> int:
    return int(getattr(m, "bias", None) is not None)


class CostModel:
    """Cost of one model's gated structures. Built once from the unpruned model; cheap to evaluate."""

    def __init__(self, sites: ModelSites) -> None:
        self.sites = sites
        self.root = sites.parts.root
        p = count_params(sites.parts.model)
        self._full_params = {"frontend": p["parts"]["front_end"], "transformer": p["total"] - p["parts"]["front_end"]}
        self._macs_cache: dict[int, tuple[dict[str, int], dict[str, Any]]] = {}
        self._fixed: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}

    # --- public ---------------------------------------------------------------------------------------------
    def full(self, kind: str = "macs", part: str = "total", num_samples: int = 16_000) -> int:
        """The profiler's count of the unpruned model (``count_macs`` / ``count_params`` split into parts)."""
        _check(kind, part)
        parts = self._full_params if kind == "params" else self._macs(num_samples)[0]
        return int(sum(parts.values())) if part == "total" else int(parts[part])

    def cost(self, counts: Counts, kind: str = "macs", part: str = "total", num_samples: int = 16_000) -> torch.Tensor:
        """Cost for kept ``counts`` (float64 scalar tensor, differentiable through tensor counts)."""
        _check(kind, part)
        key = (kind, None if kind == "params" else num_samples)
        if key not in self._fixed:
            full_dep = self._dependent({}, kind, num_samples)
            full = {q: self.full(kind, q, num_samples) for q in ("frontend", "transformer")}
            self._fixed[key] = {q: _f64(full[q]) - full_dep[q].detach() for q in full}
        dep = self._dependent(counts, kind, num_samples)
        vals = {q: self._fixed[key][q] + dep[q] for q in ("frontend", "transformer")}
        return vals["frontend"] + vals["transformer"] if part == "total" else vals[part]

    def minimum(self, kind: str = "macs", part: str = "total", num_samples: int = 16_000,
                gates: Counts | None = None) -> float:
        """The lowest cost the given gates can reach (every gated count at its floor: 1 conv channel, 0 heads,
        0 FFN units, 0 layer gates). ``gates`` maps gate name → floor; ``None``: nothing gated (= full cost)."""
        return float(self.cost(dict(gates or {}), kind, part, num_samples))

    # --- internals ------------------------------------------------------------------------------------------
    def _macs(self, num_samples: int) -> tuple[dict[str, int], dict[str, Any]]:
        if num_samples not in self._macs_cache:
            b = mac_breakdown(self.sites.parts.model, num_samples)
            parts = {"frontend": b["parts"]["front_end"], "transformer": b["total"] - b["parts"]["front_end"]}
            info = {"t_out": [r["t_out"] for r in b["front_end_layers"]], "T": b["frames"], "w": b["windows"] or 1}
            self._macs_cache[num_samples] = (parts, info)
        return self._macs_cache[num_samples]

    def _dependent(self, counts: Counts, kind: str, num_samples: int) -> dict[str, torch.Tensor]:
        s = self.sites
        info = self._macs(num_samples)[1] if kind == "macs" else {"t_out": [0] * len(s.convs), "T": 0, "w": 1}
        macs = kind == "macs"
        chans = [counts.get(gate_name("conv", c.index), c.channels) for c in s.convs]
        front: Any = 0
        trans: Any = 0
        for i, c in enumerate(s.convs):
            c_in = int(c.conv.in_channels) if i == 0 else chans[i - 1]
            c_out = chans[i]
            k = int(c.conv.kernel_size[0])
            if macs:
                front = front + conv1d_macs(info["t_out"][i], k, c_in, c_out, int(c.conv.groups))
            else:
                front = front + k * c_in * c_out + _bias(c.conv) * c_out + _norm_params(c.norm, c_out)
        T, w = info["T"], info["w"]
        if s.projection is not None:  # wav2vec2 family: the last conv's channels feed the feature projection
            c_last, d = chans[-1], int(s.projection.out_features)
            if macs:
                trans = trans + linear_macs(T, c_last, d)
            else:
                trans = trans + _norm_params(s.proj_norm, c_last) + c_last * d + _bias(s.projection) * d
        for site in s.layers:
            trans = trans + self._layer(site, counts, macs, T)
        return {"frontend": _f64(front) * w if macs else _f64(front), "transformer": _f64(trans) * w if macs
                else _f64(trans)}

    @staticmethod
    def _layer(site: Any, counts: Counts, macs: bool, T: int) -> Any:
        n = site.number
        h = counts.get(gate_name("head", n), site.num_heads)
        ga = counts.get(gate_name("attlayer", n), 1)
        f = counts.get(gate_name("interm", n), site.ffn_dim)
        gf = counts.get(gate_name("ffnlayer", n), 1)
        d, dh, attn = site.d_model, site.head_dim, site.attn
        if macs:
            a = attention_macs(T, d, h, dh)
            gru = getattr(attn, "gru_rel_pos_linear", None)
            if site.wavlm and gru is not None:
                a = a + gated_rel_pos_macs(T, h, int(gru.in_features), int(gru.out_features))
            return ga * a + gf * ffn_macs(T, d, f)
        nb = _bias(attn.q_proj) + _bias(attn.k_proj) + _bias(attn.v_proj)
        a = h * dh * (3 * d + nb) + h * dh * d + _bias(attn.out_proj) * d
        if site.wavlm:
            a = a + h  # gru_rel_pos_const: one value per head
        ffn = f * (d + _bias(site.fc1)) + f * d + _bias(site.fc2) * d
        return ga * a + gf * ffn


def _check(kind: str, part: str) -> None:
    if kind not in KINDS:
        raise SpeechpruneError(f"cost kind must be one of {KINDS}, got {kind!r}")
    if part not in PARTS:
        raise SpeechpruneError(f"cost part must be one of {PARTS}, got {part!r}")
