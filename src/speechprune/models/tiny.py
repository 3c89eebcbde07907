"""Small randomly initialised configs built in code, one per family.

No wav2vec2-family weights can be downloaded here, so tests, the wiring of every stage and quick demos run on
these. They keep the real frame rate (the default 7-layer CNN strides, 50 frames per second; Whisper's 50 per
second) so that pooling and lengths behave as with real checkpoints, but with 32-channel convolutions and a
32-wide transformer so that a forward pass takes milliseconds. ``default:<family>`` builds the family's default
(base-sized) config instead, for profiling.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from speechprune.errors import UnsupportedModelError
from speechprune.models.adapter import SUPPORTED_FAMILIES

_CONFIG_CLASSES = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel"),
    "whisper": ("WhisperConfig", "WhisperModel"),
}


def tiny_config(family: str, *, num_layers: int = 4, stable_layer_norm: bool = False, **overrides: Any) -> Any:
    """A tiny config of ``family``; ``stable_layer_norm=True`` gives the pre-norm ("large") variant."""
    cfg_name, _ = _classes(family)
    cls = getattr(transformers, cfg_name)
    if family == "whisper":
        kw: dict[str, Any] = dict(
            d_model=32, encoder_layers=num_layers, encoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
            max_source_positions=150, max_target_positions=32, vocab_size=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            suppress_tokens=[], begin_suppress_tokens=[],
        )
    else:
        kw = dict(
            hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            vocab_size=32, layerdrop=0.0,
        )
        if family == "data2vec-audio":
            kw.update(num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
        if stable_layer_norm:
            kw.update(do_stable_layer_norm=True, feat_extract_norm="layer")
        if family == "wavlm":
            kw.update(num_buckets=32, max_bucket_distance=64)
    kw.update(overrides)
    return cls(**kw)


def default_config(family: str) -> Any:
    """The family's default (base-sized) config as transformers defines it."""
    cfg_name, _ = _classes(family)
    return getattr(transformers, cfg_name)()


def build_model(config: Any, seed: int = 0) -> nn.Module:
    """A randomly initialised base model (``*Model``) for ``config``, deterministic for a seed."""
    _, model_name = _classes(config.model_type)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    return model.eval()


def parse_builtin(spec: str) -> Any | None:
    """Config for a built-in name ``tiny:<family>[-stable]`` or ``default:<family>``; ``None`` if not built-in."""
    if ":" not in spec or spec.split(":", 1)[0] not in ("tiny", "default"):
        return None
    kind, family = spec.split(":", 1)
    stable = family.endswith("-stable")
    family = family.removesuffix("-stable")
    if kind == "tiny":
        return tiny_config(family, stable_layer_norm=stable)
    cfg = default_config(family)
    if stable:
        cfg.do_stable_layer_norm = True
        cfg.feat_extract_norm = "layer"
    return cfg


def _classes(family: str) -> tuple[str, str]:
    if family not in _CONFIG_CLASSES:
        raise UnsupportedModelError(
            f"model type {family!r} is not supported; speechprune supports: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return _CONFIG_CLASSES[family]
