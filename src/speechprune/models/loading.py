"""Load any supported model into a :class:`~speechprune.models.adapter.SpeechEncoder`: a local folder, a hub id
(for users who have the hub), a built-in ``tiny:``/``default:`` config, or an already-built transformers model.

The class written in the checkpoint's ``config.architectures`` is kept (a CTC or classification head, a Whisper
decoder survive surgery and save), falling back to the bare ``AutoModel``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from speechprune.errors import SpeechpruneError
from speechprune.models.adapter import SpeechEncoder
from speechprune.models.registry import check_family, family_of


def wrap_model(model: nn.Module, feature_extractor: Any | None = None, source: str | None = None) -> SpeechEncoder:
    """Wrap an already-built transformers model of a supported family."""
    return family_of(model).adapter_class()(model, feature_extractor, source)


def load_encoder(
    source: str | Path | nn.Module,
    *,
    window_seconds: float | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    seed: int = 0,
) -> SpeechEncoder:
    """Load ``source`` and wrap it.

    ``window_seconds`` (Whisper only) shortens the encoder window (see :meth:`WhisperEncoderAdapter.with_window`).
    ``attn_implementation="eager"`` is what FLOP counting needs; the default lets transformers choose.
    """
    if isinstance(source, nn.Module):
        enc = wrap_model(source)
    else:
        from speechprune.models.tiny import build_model, parse_builtin

        spec = str(source)
        cfg = parse_builtin(spec)
        if cfg is not None:
            if attn_implementation:
                cfg._attn_implementation = attn_implementation
            enc = wrap_model(build_model(cfg, seed=seed), source=spec)
        else:
            enc = _load_pretrained(spec, attn_implementation)
    if window_seconds is not None:
        if not enc.has_fixed_window:
            raise SpeechpruneError(f"--window applies to Whisper only; this is a {enc.family} model")
        enc = enc.with_window(window_seconds)
    enc.model.to(device)
    return enc


def _load_pretrained(spec: str, attn_implementation: str | None) -> SpeechEncoder:
    try:
        config = transformers.AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        where = "local folder" if Path(spec).exists() else "local folder or reachable hub id"
        raise SpeechpruneError(f"cannot load model {spec!r}: not a {where} with a config.json ({exc})") from exc
    check_family(config.model_type)
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    cls = None if getattr(config, "speechprune_structure", None) else _model_class(config, spec)
    try:
        if cls is None:  # structured-pruned, not describable by the stock config
            from speechprune.models.pruned import load_pruned

            model = load_pruned(spec, **kwargs)
        else:
            model = cls.from_pretrained(spec, **kwargs)
    except SpeechpruneError:
        raise
    except Exception as exc:  # truncated/corrupt safetensors, shape mismatches, missing files: name the folder
        raise SpeechpruneError(f"cannot load the weights of model {spec!r}: {type(exc).__name__}: {exc}") from exc
    from speechprune.models.io import load_feature_extractor

    return wrap_model(model, load_feature_extractor(spec), source=spec)


def _model_class(config: Any, spec: str = "model") -> type:
    """The class named in ``config.architectures`` (unknown names fall back to ``AutoModel``); an entry that is not
    a class name, or names a class of another model family, is an error naming it."""
    archs = getattr(config, "architectures", None) or []
    if isinstance(archs, str) or not isinstance(archs, (list, tuple)):
        raise SpeechpruneError(f"{spec}/config.json: 'architectures' must be a list of class names, got {archs!r}")
    for arch in archs:
        if not isinstance(arch, str):
            raise SpeechpruneError(f"{spec}/config.json: 'architectures' entry {arch!r} is not a class name")
        cls = getattr(transformers, arch, None)
        if not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
            continue
        wanted = getattr(cls, "config_class", None)
        if wanted is not None and not isinstance(config, wanted):
            raise SpeechpruneError(
                f"{spec}/config.json: 'architectures' entry {arch!r} is a {getattr(wanted, 'model_type', '?')} class "
                f"but model_type is {config.model_type!r}; fix or remove the entry")
        return cls
    return transformers.AutoModel
