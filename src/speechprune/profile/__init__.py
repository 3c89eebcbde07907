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
from speechprune.profile.arch import PARTS, SUPPORTED_FAMILIES, ArchSpec, from_model, resolve_modules
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

def config_model_names() -> list[str]:
    """All names accepted by :func:`build_config_model`."""
    return [f"{size}:{fam}" for size in ("tiny", "default") for fam in SUPPORTED_FAMILIES]


def build_config_model(spec: str) -> nn.Module:
    """A randomly initialised model (eval mode, seed 0) for ``tiny:<family>`` or ``default:<family>``.

    The configs are the ones of :mod:`speechprune.models.tiny` (one definition for tests, CLI and profile); for
    Whisper only the encoder is returned (``tiny:whisper`` has a 3 s window). The global RNG state is left untouched.
    """
    from speechprune.models.tiny import build_model, parse_builtin

    size, _, family = spec.partition(":")
    if size not in ("tiny", "default") or family.removesuffix("-stable") not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(f"unknown config model {spec!r}; choose one of: {', '.join(config_model_names())}")
    with torch.random.fork_rng(devices=[]):
        model = build_model(parse_builtin(spec), seed=0)
    return resolve_modules(model).root.eval()  # Whisper: the encoder alone
