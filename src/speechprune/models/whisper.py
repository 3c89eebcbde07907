"""The Whisper encoder (two convolutions over log-mel + a transformer), from any Whisper root model.

Whisper always encodes a fixed window (30 s = 1500 frames for the released models) whatever the clip length, so a
1 s clip costs as much as 30 s. :meth:`WhisperEncoderAdapter.with_window` offers a shorter window as an explicit
option: the sinusoidal position table is sliced to the first ``50 × seconds`` rows and the audio is padded to the
window instead of 30 s. The model was never trained on such inputs, so representations drift with depth;
:func:`speechprune.features.drift.window_drift` measures that drift and the CLI reports it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.errors import AudioError, SpeechpruneError, UnsupportedModelError
from speechprune.models.adapter import EncoderInputs, SpeechEncoder
from speechprune.models.family import ConvPart, Family, LayerPart, ModelParts, ModuleMap
from speechprune.models.whisper_window import SAMPLES_PER_POSITION  # noqa: F401 - used here and re-exported

MEL_HOP = 160  # samples per log-mel frame


class WhisperEncoderAdapter(SpeechEncoder):
    """Adapter for ``WhisperEncoder`` inside ``WhisperModel``, ``WhisperForConditionalGeneration`` or
    ``WhisperForAudioClassification`` (or a bare ``WhisperEncoder``)."""

    family = "whisper"
    has_fixed_window = True

    def __init__(self, model: nn.Module, feature_extractor: Any | None = None, source: str | None = None) -> None:
        if feature_extractor is None:
            from transformers import WhisperFeatureExtractor

            feature_extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins, sampling_rate=16_000)
        super().__init__(model, feature_extractor, source)

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def encoder_module(self) -> nn.Module:
        m = self.model
        if hasattr(m, "get_encoder"):
            return m.get_encoder()
        if hasattr(m, "encoder"):
            return m.encoder
        return m  # a bare WhisperEncoder

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder_module.layers

    @property
    def profiled_module(self) -> nn.Module:
        return self.encoder_module

    def state_zero_meaning(self) -> str:
        return "input to layer 1: conv1 → GELU → conv2 → GELU → + sinusoidal positions"

    @property
    def front_end(self) -> nn.Module:
        enc = self.encoder_module
        return nn.ModuleList([enc.conv1, enc.conv2])

    @property
    def hidden_size(self) -> int:
        return int(self.config.d_model)

    @property
    def frame_rate(self) -> float:
        return 16_000 / SAMPLES_PER_POSITION

    @property
    def final_norm(self) -> nn.Module | None:
        return self.encoder_module.layer_norm

    @property
    def window_positions(self) -> int:
        return int(self.config.max_source_positions)

    @property
    def window_seconds(self) -> float:
        return self.window_positions * SAMPLES_PER_POSITION / 16_000

    # --- window ----------------------------------------------------------------------------------------------
    def with_window(self, seconds: float) -> "WhisperEncoderAdapter":
        """A copy that encodes a ``seconds``-long window instead of the trained one (positional table sliced).

        ``seconds`` must be a positive multiple of 0.02 s and no longer than the model's window.
        """
        positions = round(seconds * self.frame_rate)
        if positions <= 0 or abs(positions / self.frame_rate - seconds) > 1e-6:
            raise SpeechpruneError(f"window must be a positive multiple of 0.02 s, got {seconds}")
        if positions > self.window_positions:
            raise SpeechpruneError(
                f"window {seconds} s is longer than this model's {self.window_seconds:g} s positional table"
            )
        import copy

        new = copy.deepcopy(self)
        enc = new.encoder_module
        old = enc.embed_positions
        table = nn.Embedding(positions, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        table.weight.data.copy_(old.weight.data[:positions])
        table.requires_grad_(False)
        enc.embed_positions = table
        enc.max_source_positions = positions
        new.config.max_source_positions = positions
        new.model.eval()
        return new

    # --- inputs ----------------------------------------------------------------------------------------------
    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        lengths = torch.as_tensor(sample_lengths, dtype=torch.long)
        frames = torch.div(lengths + SAMPLES_PER_POSITION - 1, SAMPLES_PER_POSITION, rounding_mode="floor")
        return frames.clamp(max=self.window_positions)

    def prepare(self, waveforms: Sequence[np.ndarray]) -> EncoderInputs:
        if len(waveforms) == 0:
            raise AudioError("empty batch: no waveforms to prepare")
        window = self.window_positions * SAMPLES_PER_POSITION
        arrays = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
        lengths = torch.tensor([len(a) for a in arrays], dtype=torch.long)
        if any(len(a) == 0 for a in arrays):
            raise AudioError("zero-length clip in batch")
        n_long = int((lengths > window).sum())
        if n_long:
            warnings.warn(
                f"{n_long} clip(s) longer than the {self.window_seconds:g} s Whisper window were truncated",
                stacklevel=2,
            )
        feats = self.feature_extractor(
            arrays,
            sampling_rate=16_000,
            max_length=window,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        kwargs = {"input_features": feats["input_features"]}
        return EncoderInputs(kwargs, self.frame_lengths(lengths), lengths, {"truncated": n_long})

    def preparation_options(self) -> dict[str, Any]:
        return {"window_seconds": self.window_seconds}

    # --- forward ---------------------------------------------------------------------------------------------
    def _run_encoder(self, inputs: EncoderInputs) -> Any:
        enc = self.encoder_module
        feats = inputs.model_kwargs["input_features"].to(enc.conv1.weight.dtype)
        return enc(input_features=feats)

    # --- surgery ---------------------------------------------------------------------------------------------
    def _apply_layer_selection(self, keep: Sequence[int]) -> None:
        enc = self.encoder_module
        old = list(enc.layers)
        self._slice_layer_weights(keep)
        enc.layers = nn.ModuleList([old[i - 1] for i in keep])
        self.config.encoder_layers = len(keep)


class WhisperFamily(Family):
    """Whisper's module map: ``conv1 → GELU → conv2 → GELU → + sinusoidal table`` (a frozen parameter, so a
    positional part without MACs), pre-norm layers (``self_attn``, ``fc1``/``fc2``) and a final LayerNorm; only
    the encoder of a ``WhisperModel``/``…ForConditionalGeneration`` is ever used (the decoder is excluded).

    Only ``conv1``'s channels can be pruned: ``conv2`` outputs ``d_model``, to which the positions are added.
    A stock config has no field for ``conv1``'s width (it is ``d_model``), so fewer channels need the pruned
    class's :meth:`reshape_front_end`."""

    name = "whisper"
    model_types = ("whisper",)
    input_kind = "log_mel"
    num_layers_key = "encoder_layers"
    ffn_size_key = "encoder_ffn_dim"

    def adapter_class(self) -> type:
        return WhisperEncoderAdapter

    def config_classes(self, model_type: str) -> tuple[str, str]:
        return "WhisperConfig", "WhisperModel"

    def classifier_class(self, model_type: str) -> str:
        return "WhisperForAudioClassification"

    def tiny_config_kwargs(self, model_type: str, num_layers: int, stable_layer_norm: bool) -> dict[str, Any]:
        return dict(
            d_model=32, encoder_layers=num_layers, encoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
            max_source_positions=150, max_target_positions=32, vocab_size=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            suppress_tokens=[], begin_suppress_tokens=[],
        )

    def resolve(self, model: nn.Module) -> ModelParts:
        cls = type(model).__name__
        if hasattr(model, "conv1") and hasattr(model, "layers"):  # a bare WhisperEncoder
            return ModelParts(self.name, model, model, model, None, {}, None, ())
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            encoder = getattr(getattr(model, "model", None), "encoder", None)
        if encoder is None or not hasattr(encoder, "conv1"):
            raise UnsupportedModelError(f"cannot find the Whisper encoder inside {cls}")
        if cls == "WhisperForAudioClassification":
            head = {"projector": model.projector, "classifier": model.classifier}
            return ModelParts(self.name, model, model, encoder, "sequence_classification", head, None, ())
        excluded = tuple(m for n, m in model.named_children() if m is not encoder and n != "encoder")
        inner = getattr(model, "model", None)
        if inner is not None and hasattr(inner, "decoder"):
            excluded = (inner.decoder,) + tuple(m for m in excluded if m is not inner)
        return ModelParts(self.name, model, encoder, encoder, None, {}, cls if excluded else None, excluded)

    def module_map(self, base: nn.Module) -> ModuleMap:
        return ModuleMap(
            family=self.name, base=base, front_end=[base.conv1, base.conv2],
            convs=[ConvPart(0, base.conv1), ConvPart(1, base.conv2)], gatable_convs=[0],
            layers=[LayerPart(i + 1, layer, "self_attn", layer, ("fc1", "fc2")) for i, layer in enumerate(base.layers)],
            positional=[base.embed_positions], positional_kind="sinusoidal_table",
            encoder_norm=base.layer_norm, norm_position="after_layers",
        )

    def window_positions(self, base: nn.Module) -> int | None:
        return int(base.config.max_source_positions)

    def set_conv_channels(self, config: Any, channels: list[int]) -> bool:
        return int(channels[0]) == int(config.d_model)

    def reshape_front_end(self, base: nn.Module, channels: list[int]) -> None:
        c1 = int(channels[0])
        if c1 != base.conv1.out_channels:
            ref = base.conv1.weight
            kw = {"device": ref.device, "dtype": ref.dtype}
            base.conv1 = nn.Conv1d(base.conv1.in_channels, c1, 3, padding=1, **kw)
            base.conv2 = nn.Conv1d(c1, base.conv2.out_channels, 3, stride=2, padding=1, **kw)


WHISPER = WhisperFamily()


def whisper_valid_frames(seconds: float) -> int:
    """Frames holding speech for a clip of ``seconds`` (Whisper emits 50 per second)."""
    return math.ceil(seconds * 16_000 / SAMPLES_PER_POSITION)

