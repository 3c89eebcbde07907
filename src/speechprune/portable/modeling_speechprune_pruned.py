"""Structured-pruned speech models in Hugging Face custom-code form — this file needs only torch and transformers.

speechprune copies this file into every pruned model folder whose shape a stock config cannot describe (pruned
attention heads, per-layer FFN sizes, removed sub-layers, fewer Whisper ``conv1`` channels) and points
``config.json``'s ``auto_map`` at it, so that plain transformers loads the folder::

    from transformers import AutoModelForAudioClassification, pipeline
    model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)
    clf = pipeline("audio-classification", model=folder, trust_remote_code=True)

The config keeps the stock ``model_type`` (``whisper``, ``wav2vec2``, ...) and carries the per-layer shapes in
``speechprune_structure``: ``conv_channels`` (Whisper: ``conv1``'s kept channels) and, per transformer layer, the
kept heads (indices among the ``full_heads`` original heads), whether the attention output bias survives, the FFN
width and whether the FFN output bias survives. Each class below is the stock class of the same name whose
``__init__`` builds the stock model and then reshapes its layers to that structure; weights then load by their
stock names. speechprune itself uses these same classes (``speechprune.compress.structured.pruned_class``).

Why custom code and not transformers' own ``per_layer_config`` (``HeterogeneousConfigMixin``, transformers 5.x):
that mixin only stores per-layer overrides; the speech models' modeling code does not read them (and raises on the
global ``encoder_ffn_dim``/``intermediate_size`` once they are per-layer), it has no notion of *which* heads were
kept (WavLM's relative position bias needs the original head indices), and no conv-channel pruning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from torch import nn
from transformers.models.wavlm.modeling_wavlm import WavLMAttention
from transformers.models.whisper import modeling_whisper

#: Config attribute holding the per-layer shapes.
STRUCTURE_KEY = "speechprune_structure"


def linear(d_in: int, d_out: int, bias: bool, like: nn.Module) -> nn.Linear:
    """A new Linear on the device/dtype of ``like``'s parameters (zero-size allowed, without torch's warning)."""
    ref = next(like.parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(d_in, d_out, bias=bias, device=ref.device, dtype=ref.dtype)


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
    the stock parameter names and let a profiler read ``num_heads = 0``."""

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


# ---------------------------------------------------------------------------------------------------------------
# reshaping a freshly built stock model


def _layers(model: nn.Module) -> tuple[str, nn.Module, list[tuple[nn.Module, str, nn.Module, tuple[str, str]]]]:
    """(family, encoder base, [(layer, attention attribute, FFN owner, (fc1 name, fc2 name))])."""
    family = model.config.model_type
    if family == "whisper":
        enc = next(m for m in model.modules() if isinstance(m, modeling_whisper.WhisperEncoder))
        return family, enc, [(layer, "self_attn", layer, ("fc1", "fc2")) for layer in enc.layers]
    base = model.base_model
    return family, base, [(layer, "attention", layer.feed_forward, ("intermediate_dense", "output_dense"))
                          for layer in base.encoder.layers]


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built stock ``model`` in place to ``structure`` (weights are left for loading)."""
    family, base, layers = _layers(model)
    if family == "whisper":
        c1 = int(structure["conv_channels"][0])
        if c1 != base.conv1.out_channels:
            ref = base.conv1.weight
            kw = {"device": ref.device, "dtype": ref.dtype}
            base.conv1 = nn.Conv1d(base.conv1.in_channels, c1, 3, padding=1, **kw)
            base.conv2 = nn.Conv1d(c1, base.conv2.out_channels, 3, stride=2, padding=1, **kw)
    for lay, (layer, attr, owner, (n1, n2)) in zip(structure["layers"], layers):
        _shape_attention(layer, attr, lay, family == "wavlm")
        _shape_ffn(owner, n1, n2, lay)
    return model


def _shape_attention(layer: nn.Module, attr: str, lay: dict[str, Any], wavlm: bool) -> None:
    setattr(layer, attr, shaped_attention(getattr(layer, attr), lay, wavlm))


def shaped_attention(attn: nn.Module, lay: dict[str, Any], fused: bool) -> nn.Module:
    """The module that replaces the stock attention ``attn`` of a layer whose structure entry is ``lay`` (kept
    ``heads`` among ``full_heads``, ``attention_bias``): ``attn`` itself, reshaped in place, or a
    :class:`WavLMPrunedAttention` (``fused``: WavLM's attention) / :class:`EmptyAttention` (no heads left).
    speechprune's own loader (``speechprune.models.pruned``) calls it too."""
    heads, bias, full = list(lay["heads"]), bool(lay["attention_bias"]), int(lay["full_heads"])
    if fused:
        return WavLMPrunedAttention(attn, heads, full, bias)
    dh, d = int(attn.head_dim), int(attn.q_proj.in_features)
    if heads == list(range(attn.q_proj.out_features // dh)) and bias:
        return attn
    if not heads:
        return EmptyAttention(attn, bias)
    h = len(heads)
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attn, name, linear(d, h * dh, getattr(attn, name).bias is not None, attn))
    attn.out_proj = linear(h * dh, d, bias, attn)
    attn.num_heads = h
    return attn


def _shape_ffn(owner: nn.Module, n1: str, n2: str, lay: dict[str, Any]) -> None:
    shaped = shaped_ffn(getattr(owner, n1), getattr(owner, n2), lay)
    if shaped is not None:
        setattr(owner, n1, shaped[0])
        setattr(owner, n2, shaped[1])


def shaped_ffn(fc1: nn.Linear, fc2: nn.Linear, lay: dict[str, Any]) -> tuple[nn.Linear, nn.Linear] | None:
    """The two FFN Linears of a layer whose structure entry is ``lay`` (``intermediate_size``, ``ffn_bias``), new
    and unloaded; ``None`` when the stock ones already have that shape."""
    f, bias = int(lay["intermediate_size"]), bool(lay["ffn_bias"])
    if f == fc1.out_features and bias == (fc2.bias is not None):
        return None
    return (linear(fc1.in_features, f, fc1.bias is not None, fc1), linear(f, fc2.out_features, bias, fc2))


# ---------------------------------------------------------------------------------------------------------------
# the pruned classes: one per supported stock class, with the stock class's name

SUPPORTED_CLASSES: tuple[str, ...] = tuple(
    f"{fam}{suffix}"
    for fam in ("Wav2Vec2", "Hubert", "WavLM", "Data2VecAudio")
    for suffix in ("Model", "ForSequenceClassification", "ForCTC", "ForAudioFrameClassification")
) + ("WhisperEncoder", "WhisperModel", "WhisperForConditionalGeneration", "WhisperForAudioClassification")


def stock_by_name(name: str) -> type | None:
    """A supported stock class by name (``WhisperEncoder`` is not exported at the top level of transformers)."""
    if name not in SUPPORTED_CLASSES:
        return None
    return getattr(transformers, name, None) or getattr(modeling_whisper, name, None)


def _pruned(stock: type) -> type:
    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        stock.__init__(self, config, *args, **kwargs)
        structure = getattr(config, STRUCTURE_KEY, None)
        if structure:
            apply_structure(self, structure)

    return type(stock.__name__, (stock,), {"__init__": __init__, "_speechprune_stock": stock,
                                          "__module__": __name__, "__doc__": f"Pruned {stock.__name__}."})


for _name in SUPPORTED_CLASSES:
    if stock_by_name(_name) is not None:  # e.g. HubertForAudioFrameClassification is absent from some versions
        globals()[_name] = _pruned(stock_by_name(_name))
del _name
