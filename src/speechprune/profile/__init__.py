"""Compute profiling of speech encoders: architecture spec, analytic MACs, parameters, FlopCounter cross-check,
latency and memory.

MAC convention: 1 MAC = one multiply-add = 2 FLOPs = torch ``FlopCounterMode`` FLOPs ÷ 2 (see
:data:`speechprune.profile.macs.MAC_CONVENTION`). Whisper always encodes its fixed window, so its cost does not
depend on the clip length.

``build_config_model`` builds randomly initialised models from configs (``tiny:<family>`` test-sized,
``default:<family>`` the library's default config) so that profiling works offline. It is deliberately small: the
model-loading code in :mod:`speechprune.models` will take it over.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechprune.errors import UnsupportedModelError
from speechprune.profile.arch import PARTS, SUPPORTED_FAMILIES, ArchSpec, from_model
from speechprune.profile.flops import flop_counter_macs
from speechprune.profile.latency import measure_latency
from speechprune.profile.macs import (
    MAC_CONVENTION,
    attention_macs,
    attention_matmul_macs,
    attention_proj_macs,
    conv1d_macs,
    conv_out_len,
    count_macs,
    ffn_macs,
    gated_rel_pos_macs,
    linear_macs,
    mac_breakdown,
    macs_per_second,
)
from speechprune.profile.params import count_params
from speechprune.profile.report import profile_model, render_report

__all__ = [
    "MAC_CONVENTION", "PARTS", "SUPPORTED_FAMILIES", "ArchSpec", "attention_macs", "attention_matmul_macs",
    "attention_proj_macs", "build_config_model", "config_model_names", "conv1d_macs", "conv_out_len", "count_macs",
    "count_params", "ffn_macs", "flop_counter_macs", "from_model", "gated_rel_pos_macs", "linear_macs",
    "mac_breakdown", "macs_per_second", "measure_latency", "profile_model", "render_report",
]

# Test-sized settings (docs/cpu-performance.md §6: shrink conv_dim too, or the default 512-channel CNN dominates).
_TINY_SSL: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=32,
)
_TINY_WHISPER: dict[str, Any] = dict(
    d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256, num_mel_bins=80,
    max_source_positions=100,  # a 2 s window keeps tiny tests fast; real checkpoints use 1500 (30 s)
)


def config_model_names() -> list[str]:
    """All names accepted by :func:`build_config_model`."""
    return [f"{size}:{fam}" for size in ("tiny", "default") for fam in SUPPORTED_FAMILIES]


def build_config_model(spec: str) -> nn.Module:
    """Build a randomly initialised model (eval mode, seed 0) from ``tiny:<family>`` or ``default:<family>``.

    Families: wav2vec2, hubert, wavlm, data2vec-audio, whisper (encoder only, ``WhisperEncoder``). The global RNG
    state is left untouched.
    """
    size, _, family = spec.partition(":")
    if size not in ("tiny", "default") or family not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(f"unknown config model {spec!r}; choose one of: {', '.join(config_model_names())}")
    import transformers as tf

    tiny = size == "tiny"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(tf.WhisperConfig(**(_TINY_WHISPER if tiny else {}))).eval()
        kwargs = dict(_TINY_SSL) if tiny else {}
        if family == "data2vec-audio" and tiny:  # data2vec-audio's positional embedding is a stack of convs
            kwargs.update(num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
        config_cls, model_cls = {
            "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),
            "hubert": (tf.HubertConfig, tf.HubertModel),
            "wavlm": (tf.WavLMConfig, tf.WavLMModel),
            "data2vec-audio": (tf.Data2VecAudioConfig, tf.Data2VecAudioModel),
        }[family]
        return model_cls(config_cls(**kwargs)).eval()
