"""wav2vec 2.0, HuBERT, WavLM and data2vec-audio: one adapter, because transformers implements them with the same
layout (``feature_extractor`` CNN → ``feature_projection`` → ``encoder`` with ``pos_conv_embed`` and ``layers``).

Input preparation follows each checkpoint's own feature extractor settings: ``do_normalize`` (per-clip zero mean,
unit variance, computed on the clip before padding so results do not depend on the batch) and
``return_attention_mask``. Checkpoints with a group-norm CNN (wav2vec2-base, HuBERT-base, WavLM-base) were trained
on zero-padded input *without* an attention mask, which is why transformers' extractor does not return one for
them; we do the same. Padding-aware pooling still uses the true frame lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.errors import AudioError, LayerIndexError, UnsupportedModelError
from speechprune.models.adapter import EncoderInputs, SpeechEncoder
from speechprune.models.family import ConvPart, Family, LayerPart, ModelParts, ModuleMap, head_of


class Wav2Vec2FamilyEncoder(SpeechEncoder):
    """Adapter for ``wav2vec2``, ``hubert``, ``wavlm`` and ``data2vec-audio`` models (base model or any ``For*``)."""

    def __init__(self, model: nn.Module, feature_extractor: Any | None = None, source: str | None = None) -> None:
        super().__init__(model, feature_extractor, source)
        self.family = model.config.model_type
        cfg = model.config
        fe = feature_extractor
        default_mask = getattr(cfg, "feat_extract_norm", "group") == "layer"
        self.do_normalize = bool(getattr(fe, "do_normalize", default_mask)) if fe is not None else default_mask
        self.use_attention_mask = (
            bool(getattr(fe, "return_attention_mask", default_mask)) if fe is not None else default_mask
        )

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        """The bare ``*Model`` inside a task model (``model.wav2vec2``, ``model.hubert``, …)."""
        return self.model.base_model

    @property
    def encoder_module(self) -> nn.Module:
        return self.base

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.encoder.layers

    @property
    def front_end(self) -> nn.Module:
        return self.base.feature_extractor

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def frame_rate(self) -> float:
        return 16_000 / float(np.prod(self.config.conv_stride))

    @property
    def final_norm(self) -> nn.Module | None:
        return self.base.encoder.layer_norm if getattr(self.config, "do_stable_layer_norm", False) else None

    def state_zero_meaning(self) -> str:
        if self.final_norm is not None:
            return "input to layer 1: CNN → feature projection → + positional conv (pre-norm variant: no LayerNorm)"
        return "input to layer 1: CNN → feature projection → + positional conv → encoder LayerNorm"

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame of the CNN."""
        n = 1
        for k, s in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride))):
            n = (n - 1) * s + k
        return n

    # --- inputs ----------------------------------------------------------------------------------------------
    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        lengths = torch.as_tensor(sample_lengths, dtype=torch.long)
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def prepare(self, waveforms: Sequence[np.ndarray]) -> EncoderInputs:
        if len(waveforms) == 0:
            raise AudioError("empty batch: no waveforms to prepare")
        lengths = [int(np.asarray(w).shape[-1]) for w in waveforms]
        short = [i for i, n in enumerate(lengths) if n < self.receptive_field]
        if short:
            raise AudioError(
                f"clip(s) at batch position {short} are shorter than the model's receptive field "
                f"({self.receptive_field} samples = {self.receptive_field / 16000 * 1000:.0f} ms)"
            )
        batch = np.zeros((len(waveforms), max(lengths)), dtype=np.float32)
        for i, w in enumerate(waveforms):
            x = np.asarray(w, dtype=np.float32).reshape(-1)
            if self.do_normalize:
                x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
            batch[i, : len(x)] = x
        sample_lengths = torch.tensor(lengths, dtype=torch.long)
        kwargs: dict[str, torch.Tensor] = {"input_values": torch.from_numpy(batch)}
        if self.use_attention_mask:
            kwargs["attention_mask"] = (torch.arange(batch.shape[1])[None, :] < sample_lengths[:, None]).long()
        return EncoderInputs(kwargs, self.frame_lengths(sample_lengths), sample_lengths)

    def preparation_options(self) -> dict[str, Any]:
        return {"do_normalize": self.do_normalize, "attention_mask": self.use_attention_mask}

    # --- forward ---------------------------------------------------------------------------------------------
    def _run_encoder(self, inputs: EncoderInputs) -> Any:
        return self.base(**inputs.model_kwargs)

    # --- surgery ---------------------------------------------------------------------------------------------
    def _apply_layer_selection(self, keep: Sequence[int]) -> None:
        encoder = self.base.encoder
        old = list(encoder.layers)
        new_layers = [old[i - 1] for i in keep]
        if self.family == "wavlm" and keep[0] != 1:
            self._rehome_wavlm_position_bias(old[0], new_layers[0])
        self._slice_layer_weights(keep)
        encoder.layers = nn.ModuleList(new_layers)
        self.config.num_hidden_layers = len(new_layers)

    @staticmethod
    def _rehome_wavlm_position_bias(old_first: nn.Module, new_first: nn.Module) -> None:
        """WavLM computes its relative position bias from an embedding that only layer 1 owns, then passes the
        (ungated) bias down to every other layer. When layer 1 is dropped, its embedding moves into the new first
        layer, so every remaining layer still receives exactly the bias it received before. On reload,
        transformers builds the new first layer with ``has_relative_position_bias=True`` and finds the weights
        under the new name."""
        embed = getattr(old_first.attention, "rel_attn_embed", None)
        if embed is None:
            raise LayerIndexError("this WavLM model's first layer has no relative position embedding to move")
        new_first.attention.rel_attn_embed = embed


_CLASSES = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel"),
}


class Wav2Vec2Family(Family):
    """The module map shared by wav2vec 2.0, HuBERT, WavLM and data2vec-audio: a conv stack
    (``feature_extractor.conv_layers``: conv + norm + GELU blocks) → ``feature_projection`` (LayerNorm + Linear) →
    ``encoder`` (``pos_conv_embed``: one grouped conv, or data2vec-audio's stack of convs; an encoder LayerNorm
    before the layers for post-norm models, after them for "stable layer norm" ones; ``layers`` with
    ``attention`` and ``feed_forward.intermediate_dense``/``output_dense``). Every conv's channels can be pruned
    and the stock config describes them (``conv_dim``). WavLM's attention is one fused call
    (``F.multi_head_attention_forward``)."""

    name = "wav2vec2"
    model_types = tuple(_CLASSES)

    def fused_attention(self, model_type: str) -> bool:
        return model_type == "wavlm"

    def adapter_class(self) -> type:
        return Wav2Vec2FamilyEncoder

    def config_classes(self, model_type: str) -> tuple[str, str]:
        return _CLASSES[model_type]

    def classifier_class(self, model_type: str) -> str:
        return _CLASSES[model_type][1].removesuffix("Model") + "ForSequenceClassification"

    def classifier_config(self, config: Any) -> None:
        config.layerdrop = 0.0  # layerdrop would make per-layer surgery and resumable training non-deterministic

    def classifier_feature_extractor(self, encoder: Any, feature_extractor: Any) -> Any:
        import transformers

        fe = feature_extractor
        if fe is None:  # save one, so that a reload prepares inputs exactly as training did
            fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=bool(getattr(encoder, "do_normalize", False)))
        fe.return_attention_mask = True
        return fe

    def tiny_config_kwargs(self, model_type: str, num_layers: int, stable_layer_norm: bool) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            vocab_size=32, layerdrop=0.0,
        )
        if model_type == "data2vec-audio":
            kw.update(num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
        if stable_layer_norm:
            kw.update(do_stable_layer_norm=True, feat_extract_norm="layer")
        if model_type == "wavlm":
            kw.update(num_buckets=32, max_bucket_distance=64)
        return kw

    def resolve(self, model: nn.Module) -> ModelParts:
        family = str(model.config.model_type)
        cls = type(model).__name__
        base = model.base_model if hasattr(model, "base_model") else model
        if not hasattr(base, "feature_extractor") or not hasattr(base, "encoder"):
            raise UnsupportedModelError(f"{cls} has no feature_extractor/encoder; cannot profile it")
        if base is model:
            return ModelParts(family, model, model, base, None, {}, None, ())
        kind, head = head_of(model, cls)
        if kind is None:
            excluded = tuple(m for m in model.children() if m is not base)
            return ModelParts(family, model, base, base, None, {}, cls, excluded)
        return ModelParts(family, model, model, base, kind, head, None, ())

    def module_map(self, base: nn.Module) -> ModuleMap:
        fp, enc = base.feature_projection, base.encoder
        pce = enc.pos_conv_embed
        if hasattr(pce, "layers"):  # data2vec-audio: a stack of convs, each followed by a non-affine LayerNorm
            pos_convs = [(pl.conv, getattr(pl, "layer_norm", None)) for pl in pce.layers]
        else:
            pos_convs = [(pce.conv, getattr(pce, "batch_norm", None))]
        return ModuleMap(
            family=str(base.config.model_type), base=base, front_end=[base.feature_extractor],
            convs=[ConvPart(i, block.conv, block, getattr(block, "layer_norm", None))
                   for i, block in enumerate(base.feature_extractor.conv_layers)],
            gatable_convs=list(range(len(base.feature_extractor.conv_layers))),
            layers=[LayerPart(i + 1, layer, "attention", getattr(layer, "feed_forward", None),
                              ("intermediate_dense", "output_dense")) for i, layer in enumerate(enc.layers)],
            positional=[pce], positional_kind="conv", pos_convs=pos_convs,
            feature_projection=fp, projection=fp.projection, projection_norm=getattr(fp, "layer_norm", None),
            encoder_norm=getattr(enc, "layer_norm", None),
            norm_position="after_layers" if "StableLayerNorm" in type(enc).__name__ else "before_layers",
            adapter=getattr(base, "adapter", None),
        )

    def set_conv_channels(self, config: Any, channels: list[int]) -> bool:
        config.conv_dim = tuple(int(c) for c in channels)
        return True


WAV2VEC2_FAMILY = Wav2Vec2Family()
