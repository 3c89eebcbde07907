"""Cached layer features as a Hugging Face ``datasets`` folder, for users' own notebooks.

Why a ``datasets`` folder and not only our safetensors cache: a speech ML engineer's probing or plotting code
already speaks ``datasets`` (``load_from_disk``, ``.with_format("numpy")``, ``.train_test_split``), and the cache's
layer-major ``S × R × D`` layout is an implementation detail. One row per feature row, with

* ``key`` (the clip's key in the source data) and ``item`` (its index there),
* every label column and ``group`` (when the data had one), as strings,
* ``state_<i>`` — the pooled features of state ``i`` under the speechprune convention (0 = input to the first
  transformer layer, ``i`` = output of layer ``i``), a fixed-length float32 sequence,

and the extraction's provenance (model, pooling, states) in the dataset's ``description``. The folder is written
beside its destination and moved into place, so it is either absent or complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.errors import SpeechpruneError
from speechprune.features.store import LayerFeatures
from speechprune.utils.io import atomic_dir

__all__ = ["features_to_dataset", "save_features_dataset"]


def features_to_dataset(feats: LayerFeatures, keys: list[str] | None = None) -> Any:
    """Build an in-memory ``datasets.Dataset`` from ``feats`` (see the module docstring for its columns)."""
    import datasets

    rows = feats.num_rows
    item = np.asarray(feats.item_index, dtype=np.int64)
    columns: dict[str, Any] = {"item": item.tolist()}
    features: dict[str, Any] = {"item": datasets.Value("int64")}
    if keys is not None:
        columns["key"] = [keys[i] for i in item]
        features["key"] = datasets.Value("string")
    for name, values in feats.labels.items():
        columns[name] = list(values)
        features[name] = datasets.Value("string")
    if any(g is not None for g in feats.groups):
        columns["group"] = ["" if g is None else str(g) for g in feats.groups]
        features["group"] = datasets.Value("string")
    for j, state in enumerate(feats.layers):
        columns[f"state_{state}"] = np.ascontiguousarray(feats.states[j], dtype=np.float32)
        features[f"state_{state}"] = datasets.Sequence(datasets.Value("float32"), length=feats.dim)
    if any(len(v) != rows for k, v in columns.items() if not k.startswith("state_")):
        raise SpeechpruneError("features and their labels have different numbers of rows; re-extract them")
    feature_spec = datasets.Features(features)
    info = datasets.DatasetInfo(features=feature_spec, description=json.dumps({
        "speechprune_features": True, "states": feats.layers, "pooling": feats.pooling,
        "model": feats.meta.get("model"), "data": feats.meta.get("data"),
        "convention": "state 0 = input to the first transformer layer, state i = output of layer i",
    }))
    return datasets.Dataset.from_dict(columns, features=feature_spec, info=info)


def save_features_dataset(
    feats: LayerFeatures, out: str | os.PathLike[str], keys: list[str] | None = None, overwrite: bool = False
) -> Path:
    """Write ``feats`` as a ``save_to_disk`` folder at ``out``; an existing non-empty ``out`` needs ``overwrite``."""
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise SpeechpruneError(f"--to-dataset {dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise SpeechpruneError(f"--to-dataset {dest} is not empty; choose a new folder or remove this one first")
    ds = features_to_dataset(feats, keys)
    with atomic_dir(dest) as tmp:
        ds.save_to_disk(str(tmp))
    return dest
