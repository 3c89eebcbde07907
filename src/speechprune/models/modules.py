"""The few modules and functions the stock transformers code cannot provide for a pruned model.

* :func:`masked_layer_norm` — a LayerNorm whose statistics use only the channels a gate keeps. Why: removing a
  channel physically changes the mean and variance of a LayerNorm over channels (wav2vec2's feature-projection
  LayerNorm, and the per-conv LayerNorms of ``feat_extract_norm="layer"`` models). Computing the gated model's
  statistics over the kept channels makes the pruned model *exactly* the gated model (DPHuBERT accepts a
  mismatch here); with every gate open it is the ordinary LayerNorm.
* :func:`wavlm_attention` — WavLM's attention written out, because transformers runs it through
  ``F.multi_head_attention_forward``, which gives no place to mask per-head outputs before ``out_proj``, and
  because after pruning each layer keeps its own heads: the relative position bias (computed once, for all
  original heads, by layer 1) and the gated-relative-position gate (computed from the layer input split into the
  *original* number of head-sized chunks) must be sliced to the kept heads.
* :class:`WavLMPrunedAttention` / :class:`EmptyAttention` — attention with any number of kept heads (WavLM), and
  attention with no heads left (other families): the sub-layer is skipped, only ``out_proj``'s bias (a constant)
  remains, or nothing when a layer gate removed the whole sub-layer. Parameter names stay those of the stock
  modules, so state dicts and the profiler (which reads ``q_proj``/``out_proj``/``head_dim``) keep working.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.models.wavlm.modeling_wavlm import WavLMAttention


def linear(d_in: int, d_out: int, bias: bool, like: nn.Linear | nn.Module) -> nn.Linear:
    """A new Linear on the device/dtype of ``like``'s parameters (zero-size allowed, without torch's warning)."""
    ref = next(like.parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(d_in, d_out, bias=bias, device=ref.device, dtype=ref.dtype)


def masked_layer_norm(x: torch.Tensor, norm: nn.LayerNorm, keep: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` (last dim) with mean/variance over the channels where ``keep`` is true.

    Channels outside ``keep`` get arbitrary finite values (the caller's gate zeroes them afterwards).
    """
    k = keep.to(x.dtype)
    n = k.sum().clamp(min=1.0)
    mean = (x * k).sum(-1, keepdim=True) / n
    centred = x - mean
    var = (centred.square() * k).sum(-1, keepdim=True) / n
    y = centred * torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight
    if norm.bias is not None:
        y = y + norm.bias
    return y


def wavlm_attention(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_bias: torch.Tensor | None,
    kept_heads: Sequence[int],
    full_heads: int,
    head_mask: torch.Tensor | None = None,
    layer_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None, torch.Tensor]:
    """WavLM self-attention over the ``kept_heads`` (indices among the ``full_heads`` original heads).

    ``position_bias`` is the ungated bias of *all* original heads, ``(B * full_heads, T, T)``; it is computed here
    when ``None`` (the first layer owns the bucket embedding) and returned unchanged for the next layer, exactly
    as transformers does. ``head_mask`` multiplies each kept head's output before ``out_proj``; ``layer_gate``
    multiplies the sub-layer output. Returns ``(output, None, position_bias)`` like ``WavLMAttention``.
    """
    bsz, tgt, _ = hidden_states.shape
    if position_bias is None:
        bias = attn.compute_bias(tgt, tgt)  # (full_heads, T, T) from the embedding's own width
        position_bias = bias.unsqueeze(0).repeat(bsz, 1, 1, 1).view(bsz * full_heads, tgt, tgt)
    h, dh = len(kept_heads), int(attn.head_dim)
    if h == 0:
        out = attn.out_proj(hidden_states[..., :0])
    else:
        idx = torch.as_tensor(list(kept_heads), device=hidden_states.device)
        chunks = hidden_states.view(bsz, tgt, full_heads, dh).index_select(2, idx).permute(0, 2, 1, 3)
        proj = attn.gru_rel_pos_linear(chunks).view(bsz, h, tgt, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
        gate = gate_a * (gate_b * attn.gru_rel_pos_const - 1.0) + 2.0  # (B, h, T, 1)
        bias = position_bias.view(bsz, full_heads, tgt, tgt).index_select(1, idx)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, tgt, h, dh).transpose(1, 2)

        q = heads(attn.q_proj(hidden_states)) * dh**-0.5
        k = heads(attn.k_proj(hidden_states))
        v = heads(attn.v_proj(hidden_states))
        scores = q @ k.transpose(-1, -2) + gate * bias
        if attention_mask is not None:
            pad = attention_mask.ne(1)[:, None, None, :]
            scores = scores.masked_fill(pad, float("-inf"))
        weights = nn.functional.dropout(torch.softmax(scores, dim=-1), p=attn.dropout, training=attn.training)
        ctx = (weights @ v).transpose(1, 2).reshape(bsz, tgt, h * dh)
        if head_mask is not None:
            ctx = ctx * head_mask.to(ctx.dtype).repeat_interleave(dh)
        out = attn.out_proj(ctx)
    if layer_gate is not None:
        out = out * layer_gate.to(out.dtype)
    return out, None, position_bias


class WavLMPrunedAttention(WavLMAttention):
    """WavLM attention keeping ``kept_heads`` of ``full_heads``; ``out_bias=False`` when a layer gate removed the
    sub-layer. Inherits the bucket arithmetic (``compute_bias``) of the stock class."""

    def __init__(self, like: nn.Module, kept_heads: Sequence[int], full_heads: int, out_bias: bool = True) -> None:
        nn.Module.__init__(self)
        d, dh, h = int(like.embed_dim), int(like.head_dim), len(kept_heads)
        self.embed_dim, self.head_dim, self.num_heads = d, dh, h
        self.full_heads = int(full_heads)
        self.kept_heads = [int(i) for i in kept_heads]
        self.dropout = like.dropout
        self.scaling = dh**-0.5
        self.num_buckets, self.max_distance = like.num_buckets, like.max_distance
        self.q_proj = linear(d, h * dh, True, like)
        self.k_proj = linear(d, h * dh, True, like)
        self.v_proj = linear(d, h * dh, True, like)
        self.out_proj = linear(h * dh, d, out_bias, like)
        ref = next(like.parameters())
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, h, 1, 1, device=ref.device, dtype=ref.dtype))
        self.gru_rel_pos_linear = like.gru_rel_pos_linear
        embed = getattr(like, "rel_attn_embed", None)
        if embed is not None:  # layer 1 keeps the embedding of all original heads: later layers need them
            self.rel_attn_embed = embed

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        index: int = 0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None, torch.Tensor]:
        return wavlm_attention(self, hidden_states, attention_mask, position_bias, self.kept_heads, self.full_heads)


class EmptyAttention(nn.Module):
    """Attention with no heads left (wav2vec2, HuBERT, data2vec-audio, Whisper): the output is ``out_proj``'s bias
    at every frame, or zeros when the bias was removed with the whole sub-layer. The zero-size projections keep
    the stock parameter names and let the profiler read ``num_heads = 0``."""

    def __init__(self, like: nn.Module, out_bias: bool = True) -> None:
        super().__init__()
        d, dh = int(like.q_proj.in_features), int(like.head_dim)
        self.embed_dim, self.head_dim, self.num_heads = d, dh, 0
        self.q_proj = linear(d, 0, like.q_proj.bias is not None, like)
        self.k_proj = linear(d, 0, like.k_proj.bias is not None, like)
        self.v_proj = linear(d, 0, like.v_proj.bias is not None, like)
        self.out_proj = linear(0, d, out_bias, like)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.out_proj(hidden_states[..., :0]), None
