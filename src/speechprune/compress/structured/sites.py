"""Where the prunable structures live inside a stock transformers model, one reader for all five families.

Why a separate reader: gating (hooks), cost and physical pruning must agree on *which* module is which conv,
head block or FFN. Everything here is found from the module tree (via :func:`speechprune.profile.arch.
resolve_modules`, the profiler's own resolver), so the three stages and the profiler see the same parts.

Numbering: conv ``i`` is ``feature_extractor.conv_layers[i]`` (0-based, as in the module path; Whisper: conv 0 is
``conv1``); transformer layers are numbered 1..L like everywhere in speechprune (layer ``l`` is
``layers[l - 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from speechprune.errors import SpeechpruneError, UnsupportedModelError
from speechprune.profile.arch import ModelParts, resolve_modules

#: The structures a gate can be put on (methods.md §3; DPHuBERT's default set is conv, head, interm).
STRUCTURES = ("conv", "head", "interm", "attlayer", "ffnlayer")
DEFAULT_STRUCTURES = ("conv", "head", "interm")


@dataclass
class ConvSite:
    """One front-end convolution. ``block`` is the wav2vec2 conv layer (conv + norm + GELU), ``norm`` its norm."""

    index: int
    conv: nn.Conv1d
    block: nn.Module | None
    norm: nn.Module | None

    @property
    def channels(self) -> int:
        return int(self.conv.out_channels)


@dataclass
class LayerSite:
    """One transformer layer's attention and FFN modules (``attn_attr`` is the attribute name on ``layer``)."""

    number: int
    layer: nn.Module
    attn_attr: str
    num_heads: int
    head_dim: int
    d_model: int
    fc1: nn.Linear
    fc2: nn.Linear
    wavlm: bool

    @property
    def attn(self) -> nn.Module:
        return getattr(self.layer, self.attn_attr)

    @property
    def ffn_dim(self) -> int:
        return int(self.fc1.out_features)


@dataclass
class ModelSites:
    """All prunable places of one model. ``gatable_convs`` are the conv indices whose output channels may be
    pruned: all 7 wav2vec2-family convs, but only Whisper's ``conv1`` (``conv2`` outputs ``d_model``, to which the
    sinusoidal positions are added, so its channels cannot go without changing ``d_model``)."""

    parts: ModelParts
    convs: list[ConvSite]
    gatable_convs: list[int]
    proj_norm: nn.Module | None
    projection: nn.Linear | None
    layers: list[LayerSite] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.parts.family

    @property
    def base(self) -> nn.Module:
        return self.parts.base


def find_sites(model: nn.Module) -> ModelSites:
    """Locate convs, attention and FFN modules of ``model`` (any class :func:`resolve_modules` accepts)."""
    parts = resolve_modules(model)  # raises UnsupportedModelError for other families
    base = parts.base
    if parts.family == "whisper":
        convs = [ConvSite(0, base.conv1, None, None), ConvSite(1, base.conv2, None, None)]
        layers = [_layer_site(i + 1, layer, "self_attn", layer.fc1, layer.fc2, False) for i, layer in
                  enumerate(base.layers)]
        return ModelSites(parts, convs, [0], None, None, layers)
    convs = [ConvSite(i, block.conv, block, getattr(block, "layer_norm", None))
             for i, block in enumerate(base.feature_extractor.conv_layers)]
    fp = base.feature_projection
    wavlm = parts.family == "wavlm"
    layers = []
    for i, layer in enumerate(base.encoder.layers):
        ff = layer.feed_forward
        layers.append(_layer_site(i + 1, layer, "attention", ff.intermediate_dense, ff.output_dense, wavlm))
    return ModelSites(parts, convs, list(range(len(convs))), getattr(fp, "layer_norm", None), fp.projection, layers)


def _layer_site(number: int, layer: nn.Module, attr: str, fc1: nn.Module, fc2: nn.Module, wavlm: bool) -> LayerSite:
    attn = getattr(layer, attr)
    if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
        raise UnsupportedModelError(f"layer {number}: expected Linear FFN modules, found {type(fc1).__name__}")
    head_dim = int(attn.head_dim)
    heads = int(attn.q_proj.out_features) // head_dim
    return LayerSite(number, layer, attr, heads, head_dim, int(attn.q_proj.in_features), fc1, fc2, wavlm)


def check_structures(structures: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a structure list (``conv``, ``head``, ``interm``, ``attlayer``, ``ffnlayer``)."""
    bad = [s for s in structures if s not in STRUCTURES]
    if bad or not structures:
        raise SpeechpruneError(
            f"unknown structure(s) {bad or list(structures)}; choose from: {', '.join(STRUCTURES)}"
        )
    return tuple(dict.fromkeys(structures))
