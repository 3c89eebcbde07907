"""What a model family knows about its own modules: the one place that maps a stock transformers model onto the
parts every stage talks about.

Each family file (:mod:`speechprune.models.whisper`, :mod:`speechprune.models.wav2vec2_family`) defines one
:class:`Family`: where the speech encoder sits inside any of the family's classes (:meth:`Family.resolve`), which
module is which front-end convolution, projection, positional part, transformer layer, attention and FFN
projection (:meth:`Family.module_map`), and the few config edits that surgery needs. The profiler
(:mod:`speechprune.profile.arch`), structured pruning (:mod:`speechprune.compress.structured`), distillation and
the pruned-model loader (:mod:`speechprune.models.pruned`) ask these objects instead of testing the family's name,
so a new family is one new file (plus its line in :mod:`speechprune.models.registry` and the conformance test).

Numbering follows speechprune's convention: conv ``i`` is the ``i``-th front-end convolution (0-based, in the
order the input meets them); transformer layers are numbered 1..L (layer ``l`` is ``layers[l - 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from speechprune.errors import UnsupportedModelError


class ModelParts(NamedTuple):
    """The modules found inside a model. ``root`` is what gets profiled and called (the full model when its head is
    described, otherwise the base model or the Whisper encoder); ``base`` is the speech encoder; ``head`` maps the
    head's attribute names to its Linears; ``excluded`` holds modules of the given model that are not profiled
    (Whisper decoder, undescribed heads)."""

    family: str
    model: nn.Module
    root: nn.Module
    base: nn.Module
    head_kind: str | None
    head: dict[str, nn.Module]
    ignored_head: str | None
    excluded: tuple[nn.Module, ...]


@dataclass
class ConvPart:
    """One front-end convolution. ``block`` is the module whose output is the conv's activated output (the
    wav2vec2 conv layer: conv + norm + GELU; ``None`` where the activation is applied functionally, as in
    Whisper), ``norm`` the norm that follows the conv inside the block, if any."""

    index: int
    conv: nn.Conv1d
    block: nn.Module | None = None
    norm: nn.Module | None = None

    @property
    def channels(self) -> int:
        return int(self.conv.out_channels)


@dataclass
class LayerPart:
    """One transformer layer: the attribute that holds its attention, and the module and attribute names of its
    two FFN linears (``fc1``: d_model → d_ff, ``fc2``: d_ff → d_model)."""

    number: int
    layer: nn.Module
    attn_attr: str
    ffn_owner: nn.Module | None
    fc_names: tuple[str, str]

    @property
    def attn(self) -> nn.Module | None:
        return getattr(self.layer, self.attn_attr, None)

    @property
    def fc1(self) -> nn.Module | None:
        return getattr(self.ffn_owner, self.fc_names[0], None) if self.ffn_owner is not None else None

    @property
    def fc2(self) -> nn.Module | None:
        return getattr(self.ffn_owner, self.fc_names[1], None) if self.ffn_owner is not None else None

    def set_ffn(self, fc1: nn.Module, fc2: nn.Module) -> None:
        """Replace both FFN linears (surgery)."""
        setattr(self.ffn_owner, self.fc_names[0], fc1)
        setattr(self.ffn_owner, self.fc_names[1], fc2)


@dataclass
class ModuleMap:
    """Where every part of one speech encoder (``base``) lives.

    * ``front_end`` — the modules that make up the front end (for parameter and FLOP breakdowns); ``convs`` its
      convolutions in order; ``gatable_convs`` the convs whose output channels may be pruned (not those whose
      output width is the residual width, like Whisper's ``conv2``);
    * ``feature_projection`` / ``projection`` / ``projection_norm`` — the block between front end and
      transformer, its Linear and the LayerNorm before it (``None`` where the front end feeds the layers
      directly);
    * ``positional`` — the positional modules; ``pos_convs`` the (conv, norm) pairs among them; ``positional_kind``
      ``"conv"`` or ``"sinusoidal_table"``;
    * ``layers`` — the transformer layers; ``encoder_norm`` the encoder's own LayerNorm and ``norm_position``
      whether it runs ``"before_layers"`` (post-norm models) or ``"after_layers"`` (pre-norm models, Whisper);
    * ``adapter`` — wav2vec2's optional output adapter.
    """

    family: str
    base: nn.Module
    front_end: list[nn.Module]
    convs: list[ConvPart]
    gatable_convs: list[int]
    layers: list[LayerPart]
    positional: list[nn.Module]
    positional_kind: str
    pos_convs: list[tuple[nn.Module, nn.Module | None]] = field(default_factory=list)
    feature_projection: nn.Module | None = None
    projection: nn.Linear | None = None
    projection_norm: nn.Module | None = None
    encoder_norm: nn.Module | None = None
    norm_position: str = "after_layers"
    adapter: nn.Module | None = None

    def conv_consumer(self, index: int) -> nn.Module:
        """The module whose input is conv ``index``'s activated output: the next conv, or the projection."""
        if index + 1 < len(self.convs):
            return self.convs[index + 1].conv
        if self.projection is None:
            raise UnsupportedModelError(f"{self.family}: the last front-end conv feeds no projection")
        return self.projection


class Family:
    """The hooks one model family implements (see the module docstring). ``model_types`` are the
    ``config.model_type`` values the family covers; ``input_kind`` is ``"waveform"`` or ``"log_mel"``;
    ``fused_attention`` marks families whose attention transformers runs as one fused call (WavLM), which per-head
    pruning must write out (:mod:`speechprune.models.modules`)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    input_kind: str = "waveform"
    #: ``config`` attribute names of the transformer's size, for configs and tiny test models.
    num_layers_key: str = "num_hidden_layers"
    ffn_size_key: str = "intermediate_size"

    def fused_attention(self, model_type: str) -> bool:
        return False

    # --- classes --------------------------------------------------------------------------------------------
    def adapter_class(self) -> type:
        """The :class:`~speechprune.models.adapter.SpeechEncoder` subclass for this family."""
        raise NotImplementedError

    def config_classes(self, model_type: str) -> tuple[str, str]:
        """(config class, bare model class) names in ``transformers`` for ``model_type``."""
        raise NotImplementedError

    def tiny_config_kwargs(self, model_type: str, num_layers: int, stable_layer_norm: bool) -> dict[str, Any]:
        """Config arguments of a tiny randomly initialised model (milliseconds per forward pass)."""
        raise NotImplementedError

    # --- module map -----------------------------------------------------------------------------------------
    def resolve(self, model: nn.Module) -> ModelParts:
        """Find the speech encoder and the head inside any of the family's classes."""
        raise NotImplementedError

    def module_map(self, base: nn.Module) -> ModuleMap:
        """The parts of the speech encoder ``base`` (``resolve(model).base``)."""
        raise NotImplementedError

    def window_positions(self, base: nn.Module) -> int | None:
        """Frames of a fixed input window (Whisper), ``None`` when the cost follows the clip length."""
        return None

    # --- classification ------------------------------------------------------------------------------------
    def classifier_class(self, model_type: str) -> str:
        """Name of the family's stock audio-classification class in ``transformers``."""
        raise NotImplementedError

    def classifier_config(self, config: Any) -> None:
        """Adjust a classifier's config in place (e.g. switch off layerdrop)."""

    def classifier_feature_extractor(self, encoder: Any, feature_extractor: Any) -> Any:
        """The feature extractor to save with a classifier (so a reload prepares inputs as training did)."""
        return feature_extractor

    # --- surgery --------------------------------------------------------------------------------------------
    def set_ffn_size(self, config: Any, size: int) -> None:
        """Record one FFN size for every layer in the stock config."""
        setattr(config, self.ffn_size_key, int(size))

    def set_conv_channels(self, config: Any, channels: list[int]) -> bool:
        """Record the front-end conv channels in the stock config; ``False`` when the config cannot describe them
        (the model then needs :meth:`reshape_front_end` after it is built)."""
        return True

    def reshape_front_end(self, base: nn.Module, channels: list[int]) -> None:
        """Resize a freshly built front end in place to ``channels`` (weights are left for loading)."""


def head_of(model: nn.Module, cls: str) -> tuple[str | None, dict[str, nn.Module]]:
    """The task head of a ``transformers`` audio model, by the class-name suffixes every family shares."""
    if cls.endswith("ForCTC"):
        return "ctc", {"lm_head": model.lm_head}
    if cls.endswith("ForSequenceClassification") or cls.endswith("ForAudioClassification"):
        return "sequence_classification", {"projector": model.projector, "classifier": model.classifier}
    if cls.endswith("ForAudioFrameClassification"):
        return "frame_classification", {"classifier": model.classifier}
    return None, {}
