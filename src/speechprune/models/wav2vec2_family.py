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

from speechprune.errors import AudioError, LayerIndexError
from speechprune.models.adapter import EncoderInputs, SpeechEncoder


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
