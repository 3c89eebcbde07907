"""Models of a shape the stock config cannot describe (structured pruning's results), and their loading.

A structurally pruned model may keep some heads of a layer, give each layer its own FFN size, lose whole
sub-layers or (Whisper) some ``conv1`` channels. Its config keeps the stock ``model_type`` and gains a
``speechprune_structure`` entry (:data:`STRUCTURE_KEY`: per-layer kept heads, FFN sizes, sub-layer biases, conv
channels). :func:`pruned_class` gives the registered subclass of a stock class (same ``__name__``) whose
``__init__`` builds the stock model and then reshapes its layers (:func:`apply_structure`); so the profiler, the
adapters and ``save_pretrained`` treat it as the stock class, and :func:`load_pruned` reloads any such folder
(safetensors only). Why keep the stock ``model_type``: every part of speechprune keys on it; a stock loader given
such a folder fails loudly on the shape mismatch rather than loading something else.

This lives with the models (not with the pruner) because loading a saved model must not depend on how it was
made: :func:`speechprune.models.load_encoder` reads these folders like any other. How one layer is reshaped is
the standalone custom-code file's (:func:`~speechprune.portable.modeling_speechprune_pruned.shaped_attention`,
``shaped_ffn``), so a folder's copied code and speechprune build the same modules; which modules those are is
the family's (its module map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from torch import nn

from speechprune.errors import SpeechpruneError, UnsupportedModelError
from speechprune.models.family import LayerPart
from speechprune.models.registry import family_of
from speechprune.portable.modeling_speechprune_pruned import shaped_attention, shaped_ffn

#: Config attribute holding the per-layer shapes of a result the stock config cannot describe.
STRUCTURE_KEY = "speechprune_structure"
STRUCTURE_FORMAT = 1

#: Stock classes with a pruned counterpart (the speech encoder may sit inside any of them).
SUPPORTED_CLASSES: tuple[str, ...] = tuple(
    f"{fam}{suffix}"
    for fam in ("Wav2Vec2", "Hubert", "WavLM", "Data2VecAudio")
    for suffix in ("Model", "ForSequenceClassification", "ForCTC", "ForAudioFrameClassification")
) + ("WhisperEncoder", "WhisperModel", "WhisperForConditionalGeneration", "WhisperForAudioClassification")

_PRUNED: dict[type, type] = {}


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built stock ``model`` in place to ``structure`` (weights are left for loading)."""
    fam = family_of(model)
    parts = fam.resolve(model)
    fam.reshape_front_end(parts.base, [int(c) for c in structure["conv_channels"]])
    fused = fam.fused_attention(parts.family)
    for lay, part in zip(structure["layers"], fam.module_map(parts.base).layers):
        _shape_attention(part, lay, fused)
        _shape_ffn(part, lay)
    return model


def _shape_attention(part: LayerPart, lay: dict[str, Any], fused: bool) -> None:
    setattr(part.layer, part.attn_attr, shaped_attention(part.attn, lay, fused))


def _shape_ffn(part: LayerPart, lay: dict[str, Any]) -> None:
    shaped = shaped_ffn(part.fc1, part.fc2, lay)
    if shaped is not None:
        part.set_ffn(*shaped)


def stock_class(cls: type) -> type:
    """The stock transformers class behind ``cls`` (itself, or the base of a pruned class)."""
    return getattr(cls, "_speechprune_stock", cls)


def pruned_class(stock: type) -> type:
    """The registered pruned subclass of a stock class (same ``__name__``; builds from ``speechprune_structure``)."""
    stock = stock_class(stock)
    if stock.__name__ not in SUPPORTED_CLASSES or _stock_by_name(stock.__name__) is not stock:
        raise UnsupportedModelError(
            f"no pruned counterpart for {stock.__name__}; supported classes: {', '.join(SUPPORTED_CLASSES)}"
        )
    if stock not in _PRUNED:

        def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
            stock.__init__(self, config, *args, **kwargs)
            structure = getattr(config, STRUCTURE_KEY, None)
            if structure:
                apply_structure(self, structure)

        cls = type(stock.__name__, (stock,), {"__init__": __init__, "_speechprune_stock": stock,
                                              "__module__": __name__, "__doc__": f"Pruned {stock.__name__}."})
        _PRUNED[stock] = cls
    return _PRUNED[stock]


def _stock_by_name(name: str) -> type | None:
    """A supported stock class by name (``WhisperEncoder`` is not exported at the top level of transformers)."""
    if name not in SUPPORTED_CLASSES:
        return None
    cls = getattr(transformers, name, None)
    if cls is None and name.startswith("Whisper"):
        from transformers.models.whisper import modeling_whisper

        cls = getattr(modeling_whisper, name, None)
    return cls


def load_pruned(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a folder written by :func:`~speechprune.compress.structured.save_pruned` (stock or not), in eval
    mode. ``kwargs`` go to ``from_pretrained`` (e.g. ``attn_implementation="eager"``)."""
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SpeechpruneError(f"cannot load pruned model {str(path)!r}: {exc}") from exc
    archs = getattr(config, "architectures", None) or []
    stock = _stock_by_name(archs[0]) if archs else None
    if stock is None:
        raise UnsupportedModelError(
            f"{path}: config.json names architecture {archs}; supported classes: {', '.join(SUPPORTED_CLASSES)}"
        )
    cls = pruned_class(stock) if getattr(config, STRUCTURE_KEY, None) else stock
    return cls.from_pretrained(path, **kwargs).eval()
