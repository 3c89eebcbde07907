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

from speechprune.models.registry import family_for


def tiny_config(family: str, *, num_layers: int = 4, stable_layer_norm: bool = False, **overrides: Any) -> Any:
    """A tiny config of ``family``; ``stable_layer_norm=True`` gives the pre-norm ("large") variant."""
    cfg_name, _ = _classes(family)
    cls = getattr(transformers, cfg_name)
    kw = family_for(family).tiny_config_kwargs(family, num_layers, stable_layer_norm)
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
    return family_for(family).config_classes(family)
