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

import torch
from torch import nn

# The modules a pruned model is built from live in the standalone custom-code file that pruned folders carry (so
# speechprune and plain transformers run the same code); re-exported here for the gating code.
from speechprune.portable.modeling_speechprune_pruned import (  # noqa: F401
    EmptyAttention,
    WavLMPrunedAttention,
    linear,
    wavlm_attention,
)


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
