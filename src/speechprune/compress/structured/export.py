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
  and the loader live in :mod:`speechprune.models.pruned` (loading a model must not depend on the pruner; they
  are re-exported here).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from speechprune.models.pruned import SUPPORTED_CLASSES, load_pruned, pruned_class, stock_class

__all__ = ["SUPPORTED_CLASSES", "load_pruned", "pruned_class", "save_pruned", "stock_class"]


def save_pruned(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (from :meth:`GatedModel.prune`) as safetensors + config.json; returns the folder."""
    dest = Path(path)
    model.save_pretrained(dest, safe_serialization=True)
    return dest
