"""The compute-relevant shape of a speech model, read from its **modules** rather than its config.

Why modules: a structurally pruned model keeps its original config but has fewer conv channels, fewer heads or a
smaller FFN in some layers, or fewer layers. Reading ``nn.Conv1d``/``nn.Linear`` shapes (and ``len(encoder.layers)``)
describes such a model correctly, so the analytic MAC count (:mod:`speechprune.profile.macs`) stays exact for it.

:class:`ArchSpec` is plain data (ints, strings, tuples) so it can be written to JSON and compared in tests.
:func:`resolve_modules` finds the module objects behind each part — it asks the model's family
(:mod:`speechprune.models.family`), which holds the module map — and params and FLOP counting use it too, which
keeps the three views (spec, params, FlopCounter) aligned on the same part boundaries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.errors import UnsupportedModelError
from speechprune.models.family import Family, LayerPart, ModelParts
from speechprune.models.registry import SUPPORTED_FAMILIES, family_for

__all__ = ["PARTS", "SUPPORTED_FAMILIES", "ArchSpec", "ModelParts", "dummy_inputs", "from_model", "part_modules",
           "resolve_modules", "spec_from_parts"]

SAMPLE_RATE = 16_000
#: Whisper's log-mel front end: hop 160 samples at 16 kHz = 100 frames per second.
WHISPER_MEL_FRAMES_PER_SECOND = 100

#: Part names shared by the MAC, parameter and FlopCounter breakdowns (one vocabulary for all reports).
PARTS: tuple[str, ...] = (
    "front_end",
    "feature_projection",
    "positional",
    "layers",
    "final_norms",
    "adapter",
    "head",
    "other",
)


@dataclass(frozen=True)
class ConvSpec:
    """One ``nn.Conv1d``: enough to compute its output length and MACs. ``norm`` is what follows it
    (``group``/``layer``/``batch``/``none``); norms cost no MACs but matter for params."""

    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    bias: bool
    norm: str = "none"
    weight_norm: bool = False


@dataclass(frozen=True)
class LinearSpec:
    """One ``nn.Linear`` (``name`` is its path inside the profiled module)."""

    name: str
    d_in: int
    d_out: int
    bias: bool


@dataclass(frozen=True)
class AttentionSpec:
    """Self-attention of one layer. ``num_heads * head_dim`` is read from ``q_proj.out_features`` so that a model
    with pruned heads is described by what it actually computes. ``gru_rel_pos`` is WavLM's gate linear (applied
    per head to ``head_dim`` features); ``rel_pos_bias`` marks the layer that owns WavLM's bucket embedding."""

    d_model: int
    num_heads: int
    head_dim: int
    q: LinearSpec
    k: LinearSpec
    v: LinearSpec
    out: LinearSpec
    rel_pos_bias: bool = False
    gru_rel_pos: LinearSpec | None = None


@dataclass(frozen=True)
class FFNSpec:
    """Position-wise feed-forward block: ``fc1`` d_model→d_ff, ``fc2`` d_ff→d_model."""

    d_model: int
    d_ff: int
    fc1: LinearSpec
    fc2: LinearSpec


@dataclass(frozen=True)
class LayerSpec:
    """One transformer layer. ``attention``/``ffn`` are ``None`` when a pruner removed the whole sub-block;
    ``extra_linears`` are per-frame linears outside both (the wav2vec2 attention adapter)."""

    index: int
    name: str
    attention: AttentionSpec | None
    ffn: FFNSpec | None
    extra_linears: tuple[LinearSpec, ...] = ()


@dataclass(frozen=True)
class NormSpec:
    """A norm outside the layers (encoder LayerNorm). ``position`` is ``before_layers`` (post-LN wav2vec2/HuBERT/
    WavLM/data2vec, applied after the positional conv) or ``after_layers`` (stable-layer-norm variants, Whisper)."""

    name: str
    kind: str
    dim: int
    position: str


@dataclass(frozen=True)
class AdapterSpec:
    """wav2vec2-style output adapter (``config.add_adapter``): optional down projection + strided convs (+GLU)."""

    proj: LinearSpec | None
    convs: tuple[ConvSpec, ...]


@dataclass(frozen=True)
class HeadSpec:
    """A task head. ``frame_linears`` run on every output frame, ``pooled_linears`` once per clip (after the mean)."""

    kind: str
    frame_linears: tuple[LinearSpec, ...]
    pooled_linears: tuple[LinearSpec, ...] = ()


@dataclass(frozen=True)
class WhisperWindow:
    """Whisper's fixed input window: the encoder always sees ``mel_frames`` (= ``max_source_positions`` × the two
    conv strides) log-mel frames, padded or truncated by the feature extractor, whatever the clip length."""

    num_mel_bins: int
    max_source_positions: int
    mel_frames: int
    seconds: float


@dataclass(frozen=True)
class ArchSpec:
    """The compute-relevant description of one speech encoder (+ optional head), read from its modules.

    ``input_kind`` is ``waveform`` (SSL models: 1 channel of 16 kHz samples) or ``log_mel`` (Whisper: a fixed
    window, see :class:`WhisperWindow`). ``d_model`` is the width of the residual stream after the front end.
    ``ignored_head`` names a head class whose cost is *not* described (XVector, pre-training, Whisper decoder).
    """

    family: str
    model_class: str
    input_kind: str
    d_model: int
    front_end: tuple[ConvSpec, ...]
    feature_projection: LinearSpec | None
    feature_projection_norm: bool
    positional: str
    pos_convs: tuple[ConvSpec, ...]
    layers: tuple[LayerSpec, ...]
    encoder_norms: tuple[NormSpec, ...]
    adapter: AdapterSpec | None = None
    head: HeadSpec | None = None
    ignored_head: str | None = None
    whisper_window: WhisperWindow | None = None
    sample_rate: int = SAMPLE_RATE
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_model(cls, model: nn.Module) -> ArchSpec:
        """Describe ``model`` (base model, ``For*`` variant, Whisper model/encoder); see :func:`resolve_modules`."""
        return spec_from_parts(resolve_modules(model))


def _family(model: nn.Module) -> Family:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"cannot profile {type(model).__name__} (model_type={model_type!r}); supported model types: "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    return family_for(str(model_type))


def resolve_modules(model: nn.Module) -> ModelParts:
    """Find the speech encoder and the head inside ``model`` (the family's :meth:`~speechprune.models.family.
    Family.resolve`).

    Accepts ``Wav2Vec2Model``/``HubertModel``/``WavLMModel``/``Data2VecAudioModel`` and their ``For*`` variants (base
    found via ``model.base_model``), and ``WhisperModel``/``WhisperForConditionalGeneration``/
    ``WhisperForAudioClassification``/``WhisperEncoder`` (only the encoder is profiled). Heads described: CTC
    (``lm_head``), sequence classification (``projector`` + ``classifier``), frame classification (``classifier``).
    """
    return _family(model).resolve(model)


# ---------------------------------------------------------------------------------------------------------------
# module readers


def _names(root: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in root.named_modules(remove_duplicate=False)}


def _int(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _is_weight_norm(conv: nn.Module) -> bool:
    return bool(torch.nn.utils.parametrize.is_parametrized(conv, "weight")) or hasattr(conv, "weight_g")


def _norm_kind(module: nn.Module | None) -> str:
    if module is None:
        return "none"
    if isinstance(module, nn.GroupNorm):
        return "group"
    if isinstance(module, nn.LayerNorm):
        return "layer"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch"
    return type(module).__name__


def _conv(conv: nn.Module, names: dict[int, str], norm: str = "none") -> ConvSpec:
    if not isinstance(conv, nn.Conv1d):
        raise UnsupportedModelError(f"expected nn.Conv1d at {names.get(id(conv), '?')}, found {type(conv).__name__}")
    if isinstance(conv.padding, str):
        raise UnsupportedModelError(f"conv {names.get(id(conv), '?')} uses padding={conv.padding!r}; not supported")
    return ConvSpec(
        name=names.get(id(conv), ""),
        c_in=int(conv.in_channels),
        c_out=int(conv.out_channels),
        kernel=_int(conv.kernel_size),
        stride=_int(conv.stride),
        padding=_int(conv.padding),
        dilation=_int(conv.dilation),
        groups=int(conv.groups),
        bias=conv.bias is not None,
        norm=norm,
        weight_norm=_is_weight_norm(conv),
    )


def _linear(lin: nn.Module, names: dict[int, str]) -> LinearSpec:
    if not isinstance(lin, nn.Linear):
        raise UnsupportedModelError(f"expected nn.Linear at {names.get(id(lin), '?')}, found {type(lin).__name__}")
    return LinearSpec(names.get(id(lin), ""), int(lin.in_features), int(lin.out_features), lin.bias is not None)


def _attention(attn: nn.Module | None, names: dict[int, str]) -> AttentionSpec | None:
    if attn is None:
        return None
    q = _linear(attn.q_proj, names)
    head_dim = int(getattr(attn, "head_dim", 0) or 0)
    num_heads = int(getattr(attn, "num_heads", 0) or 0)
    if head_dim <= 0:
        head_dim = q.d_out // max(num_heads, 1)
    num_heads = q.d_out // head_dim  # what q_proj actually produces, whatever the (stale) attribute says
    gru = getattr(attn, "gru_rel_pos_linear", None)
    return AttentionSpec(
        d_model=q.d_in,
        num_heads=num_heads,
        head_dim=head_dim,
        q=q,
        k=_linear(attn.k_proj, names),
        v=_linear(attn.v_proj, names),
        out=_linear(attn.out_proj, names),
        rel_pos_bias=getattr(attn, "rel_attn_embed", None) is not None,
        gru_rel_pos=_linear(gru, names) if gru is not None else None,
    )


def _ffn(fc1: nn.Module | None, fc2: nn.Module | None, names: dict[int, str]) -> FFNSpec | None:
    if fc1 is None or fc2 is None:
        return None
    a, b = _linear(fc1, names), _linear(fc2, names)
    return FFNSpec(d_model=a.d_in, d_ff=a.d_out, fc1=a, fc2=b)


def _layer(part: LayerPart, names: dict[int, str]) -> LayerSpec:
    layer = part.layer
    attn = _attention(part.attn, names)
    ffn = _ffn(part.fc1, part.fc2, names)
    extra: tuple[LinearSpec, ...] = ()
    adapter = getattr(layer, "adapter_layer", None)
    if adapter is not None:
        extra = (_linear(adapter.linear_1, names), _linear(adapter.linear_2, names))
    return LayerSpec(part.number - 1, names.get(id(layer), ""), attn, ffn, extra)


def spec_from_parts(mp: ModelParts) -> ArchSpec:
    """Build the :class:`ArchSpec` of already-resolved modules (callers that also need ``mp`` avoid resolving twice)."""
    names = _names(mp.root)
    fam = family_for(mp.family)
    mm = fam.module_map(mp.base)
    notes: list[str] = []
    if mp.ignored_head:
        notes.append(f"{mp.ignored_head}: only the speech encoder is profiled; its other modules are excluded")
    front = tuple(_conv(c.conv, names, _norm_kind(c.norm)) for c in mm.convs)
    proj = _linear(mm.projection, names) if mm.projection is not None else None
    d_model = proj.d_out if proj is not None else front[-1].c_out
    window = None
    positions = fam.window_positions(mp.base)
    if positions is not None:
        mel_frames = positions * int(np.prod([c.stride for c in front]))
        window = WhisperWindow(front[0].c_in, positions, mel_frames, mel_frames / WHISPER_MEL_FRAMES_PER_SECOND)
        notes.append(
            f"Whisper always encodes its fixed {window.seconds:g} s window ({mel_frames} mel frames → {positions} "
            "positions); the cost does not depend on the clip length"
        )
    norms: tuple[NormSpec, ...] = ()
    if mm.encoder_norm is not None:
        ln = mm.encoder_norm
        norms = (NormSpec(names.get(id(ln), ""), _norm_kind(ln), int(ln.normalized_shape[0]), mm.norm_position),)
    adapter = None
    if mm.adapter is not None:
        ad = mm.adapter
        adapter = AdapterSpec(
            proj=_linear(ad.proj, names) if getattr(ad, "proj", None) is not None else None,
            convs=tuple(_conv(al.conv, names) for al in ad.layers),
        )
    return ArchSpec(
        family=mp.family, model_class=type(mp.model).__name__, input_kind=fam.input_kind, d_model=d_model,
        front_end=front, feature_projection=proj, feature_projection_norm=mm.projection_norm is not None,
        positional=mm.positional_kind, pos_convs=tuple(_conv(c, names, _norm_kind(n)) for c, n in mm.pos_convs),
        layers=tuple(_layer(p, names) for p in mm.layers), encoder_norms=norms, adapter=adapter,
        head=_head(mp, names), ignored_head=mp.ignored_head, whisper_window=window, notes=tuple(notes),
    )


def _head(mp: ModelParts, names: dict[int, str]) -> HeadSpec | None:
    if mp.head_kind is None:
        return None
    if mp.head_kind == "sequence_classification":
        return HeadSpec(mp.head_kind, (_linear(mp.head["projector"], names),), (_linear(mp.head["classifier"], names),))
    return HeadSpec(mp.head_kind, tuple(_linear(m, names) for m in mp.head.values()))


def from_model(model: nn.Module) -> ArchSpec:
    """Module-level alias of :meth:`ArchSpec.from_model`."""
    return ArchSpec.from_model(model)


def part_modules(mp: ModelParts) -> dict[str, list[nn.Module]]:
    """Modules that make up each part (see :data:`PARTS`); parameters and FlopCounter totals are grouped by these.

    ``layers`` lists the transformer layers in order. Anything not listed (e.g. ``masked_spec_embed``,
    ``layer_weights``) falls into ``other``.
    """
    mm = family_for(mp.family).module_map(mp.base)
    out: dict[str, list[nn.Module]] = {p: [] for p in PARTS}
    out["front_end"] = list(mm.front_end)
    if mm.feature_projection is not None:
        out["feature_projection"] = [mm.feature_projection]
    out["positional"] = list(mm.positional)
    out["layers"] = [p.layer for p in mm.layers]
    if mm.encoder_norm is not None:
        out["final_norms"] = [mm.encoder_norm]
    if mm.adapter is not None:
        out["adapter"] = [mm.adapter]
    out["head"] = list(mp.head.values())
    return out


def dummy_inputs(
    spec: ArchSpec,
    num_samples: int,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    windows: int = 1,
) -> dict[str, torch.Tensor]:
    """Random inputs for the profiled module (``resolve_modules(model).root``): ``input_values`` (batch × samples)
    for SSL models, ``input_features`` ((batch·windows) × mel bins × window frames) for Whisper. Values do not
    matter for cost or speed, only shapes do."""
    gen = torch.Generator().manual_seed(0)
    if spec.whisper_window is not None:
        w = spec.whisper_window
        x = torch.randn(batch_size * windows, w.num_mel_bins, w.mel_frames, generator=gen)
        return {"input_features": x.to(device)}
    return {"input_values": torch.randn(batch_size, num_samples, generator=gen).to(device)}
