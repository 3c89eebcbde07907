"""Where the prunable structures live inside a stock transformers model, one reader for all five families.

Why a separate reader: gating (hooks), cost and physical pruning must agree on *which* module is which conv,
head block or FFN. Everything here comes from the family's module map (:meth:`speechprune.models.family.Family.
module_map`, which the profiler reads too), so the three stages and the profiler see the same parts.

Numbering: conv ``i`` is ``feature_extractor.conv_layers[i]`` (0-based, as in the module path; Whisper: conv 0 is
``conv1``); transformer layers are numbered 1..L like everywhere in speechprune (layer ``l`` is
``layers[l - 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from speechprune.errors import SpeechpruneError, UnsupportedModelError
from speechprune.models.family import ConvPart, LayerPart, ModelParts, ModuleMap
from speechprune.models.registry import family_of

#: The structures a gate can be put on (docs/methods.md §3; DPHuBERT's default set is conv, head, interm).
STRUCTURES = ("conv", "head", "interm", "attlayer", "ffnlayer")
DEFAULT_STRUCTURES = ("conv", "head", "interm")

#: One front-end convolution (``block``: the module whose output is the activated conv output, if any).
ConvSite = ConvPart


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
    part: LayerPart | None = None

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
    sinusoidal positions are added, so its channels cannot go without changing ``d_model``). A conv's pruned
    channels are removed from the input of its consumer (:meth:`ModuleMap.conv_consumer`: the next conv, or the
    feature projection after the last one)."""

    parts: ModelParts
    convs: list[ConvSite]
    gatable_convs: list[int]
    proj_norm: nn.Module | None
    projection: nn.Linear | None
    layers: list[LayerSite] = field(default_factory=list)
    modules: ModuleMap | None = None

    @property
    def family(self) -> str:
        return self.parts.family

    @property
    def base(self) -> nn.Module:
        return self.parts.base


def find_sites(model: nn.Module) -> ModelSites:
    """Locate convs, attention and FFN modules of ``model`` (any class of a supported family)."""
    fam = family_of(model)  # raises UnsupportedModelError for other families
    parts = fam.resolve(model)
    mm = fam.module_map(parts.base)
    fused = fam.fused_attention(parts.family)
    layers = [_layer_site(p, fused) for p in mm.layers]
    return ModelSites(parts, mm.convs, mm.gatable_convs, mm.projection_norm, mm.projection, layers, mm)


def _layer_site(part: LayerPart, fused: bool) -> LayerSite:
    attn, fc1, fc2 = part.attn, part.fc1, part.fc2
    if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
        raise UnsupportedModelError(f"layer {part.number}: expected Linear FFN modules, found {type(fc1).__name__}")
    head_dim = int(attn.head_dim)
    heads = int(attn.q_proj.out_features) // head_dim
    return LayerSite(part.number, part.layer, part.attn_attr, heads, head_dim, int(attn.q_proj.in_features), fc1,
                     fc2, fused, part)


def check_structures(structures: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a structure list (``conv``, ``head``, ``interm``, ``attlayer``, ``ffnlayer``)."""
    bad = [s for s in structures if s not in STRUCTURES]
    if bad or not structures:
        raise SpeechpruneError(
            f"unknown structure(s) {bad or list(structures)}; choose from: {', '.join(STRUCTURES)}"
        )
    return tuple(dict.fromkeys(structures))
