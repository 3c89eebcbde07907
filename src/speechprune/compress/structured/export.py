"""Saving and loading pruned models (safetensors + config.json; no pickle anywhere).

Two cases:

* **The stock config describes the result** (every layer keeps all heads, all FFNs have one size, any conv
  channels for the wav2vec2 family via ``conv_dim``): :func:`save_pruned` writes a stock transformers folder and
  plain ``AutoModel*/<Class>.from_pretrained`` reloads it.
* **Otherwise** (pruned heads, per-layer FFN sizes, removed sub-layers, fewer Whisper ``conv1`` channels) the
  config keeps the stock ``model_type`` and gains a ``speechprune_structure`` entry (per-layer kept heads, FFN
  sizes, sub-layer biases, conv channels). Load it with::

      from speechprune.compress.structured import load_pruned
      model = load_pruned("path/to/folder")        # any supported class, safetensors only

  or ``pruned_class(transformers.Wav2Vec2ForSequenceClassification).from_pretrained(path)``. The pruned class
  is a subclass of the stock class with the **same class name** (defined in the standalone file
  :mod:`speechprune.portable.modeling_speechprune_pruned`, which the folder also carries so that plain transformers
  loads it with ``trust_remote_code=True``), whose ``__init__`` builds the stock
  model and then reshapes its layers (:func:`~.prune.apply_structure`); so the profiler, the adapters and
  ``save_pretrained`` treat it as the stock class. Why keep the stock ``model_type``: every part of speechprune
  (profiling, layer analysis, classification) keys on it; a stock loader given such a folder fails loudly on
  the shape mismatch rather than loading something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from torch import nn

from speechprune.compress.structured.prune import STRUCTURE_KEY
from speechprune.errors import SpeechpruneError, UnsupportedModelError
from speechprune.portable import modeling_speechprune_pruned as portable
from speechprune.portable.modeling_speechprune_pruned import SUPPORTED_CLASSES


def stock_class(cls: type) -> type:
    """The stock transformers class behind ``cls`` (itself, or the base of a pruned class)."""
    return getattr(cls, "_speechprune_stock", cls)


def pruned_class(stock: type) -> type:
    """The pruned subclass of a stock class (same ``__name__``; builds from ``speechprune_structure``). These are the
    classes of the standalone custom-code file that pruned folders carry (:mod:`speechprune.portable`)."""
    stock = stock_class(stock)
    if _stock_by_name(stock.__name__) is not stock:
        raise UnsupportedModelError(
            f"no pruned counterpart for {stock.__name__}; supported classes: {', '.join(SUPPORTED_CLASSES)}"
        )
    return getattr(portable, stock.__name__)


_stock_by_name = portable.stock_by_name


def save_pruned(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (from :meth:`GatedModel.prune`) as safetensors + config.json; returns the folder."""
    dest = Path(path)
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def load_pruned(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a folder written by :func:`save_pruned` (stock or not), in eval mode. ``kwargs`` go to
    ``from_pretrained`` (e.g. ``attn_implementation="eager"``)."""
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
